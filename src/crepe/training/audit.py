"""`crepe audit RUN`: the one-run audit of a run folder trained with --audit-canaries.

The canaries (which are included, and their scores) are secrets kept only in the checkpoint of
an unfinished run (DESIGN.md section 9), so the audit is computed where they still are:
- a finished run computed it itself before its secrets were removed: audit.json is read back
  (with the f-DP conversion of its counts added for output if it predates it; the file is not rewritten);
- an unfinished run (or one kept whole by --keep-secrets): computed from its checkpoint, after
  the epochs done, and written to audit.json ("complete": false until the run has finished;
  the run's own audit at the end replaces it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crepe.audit import canaries as audit
from crepe.config import UsageError
from crepe.privacy.accounting import epsilons
from crepe.privacy.ledger import Ledger
from crepe.training import rundir, state as ckpt


def audit_folder(run_dir: Path) -> tuple[dict[str, Any], str]:
    """(audit.json's content, how it was obtained: "computed" or "read"); UsageError for a folder
    that holds no canaries."""
    cfg = rundir.read_config(run_dir)
    if cfg.audit_canaries is None:
        raise UsageError(f"{run_dir} was trained without audit canaries: nothing to audit (train with "
                         "crepe train --audit-canaries M)")
    path = run_dir / rundir.CHECKPOINT
    held = ckpt.load(path, cfg=cfg, fingerprint=None)["state"] if path.is_file() else {}
    canaries = held.get("canaries")
    if canaries is not None:
        if int(canaries["steps"]) == 0:
            raise UsageError(f"{run_dir}: no training step has run yet: the canaries have no scores to audit")
        eps = epsilons(Ledger.from_list(held["ledger"]), delta=cfg.delta, accountant=cfg.accountant)
        result = audit.record(canaries, guesses=cfg.guesses, delta=cfg.delta, eps_upper=eps["train"],
                              epochs_done=int(held["epoch"]), complete=rundir.is_complete(run_dir))
        rundir.atomic_write_json(run_dir / rundir.AUDIT, result)
        return result, "computed"
    if (run_dir / rundir.AUDIT).is_file():
        result = rundir.read_json(run_dir / rundir.AUDIT)
        if not isinstance(result, dict) or "eps_lb" not in result:
            raise UsageError(f"{run_dir / rundir.AUDIT} is not an audit record")
        return audit.with_fdp(result), "read"  # an audit.json older than the f-DP conversion: from its counts
    raise UsageError(f"{run_dir} holds neither canaries (its checkpoint has none) nor {rundir.AUDIT}: the audit "
                     "cannot be computed any more")
