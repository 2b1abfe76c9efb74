"""A run folder, without torch: file names, atomic fsync'd writes, status, epsilon in JSON.

    RUN_DIR/config.json     the resolved TrainConfig (+ provenance)
    RUN_DIR/metrics.jsonl   one line per finished epoch, append-only
    RUN_DIR/checkpoint.pt   unfinished: everything needed to continue (checksummed; as sensitive as
                            the data); finished: model, optimizer, config, ledger (unless --keep-secrets)
    RUN_DIR/summary.json    final figures and the whole privacy ledger
    RUN_DIR/model.pt        finished: the trained model's state_dict, and model.json what it is (training/export.py)
    RUN_DIR/synthetic.npz   private-set: the synthetic images and labels (and synthetic.png)
    RUN_DIR/audit.json      --audit-canaries: the one-run audit (guesses, correct, eps_lb; crepe audit)

cli, sweep and report read run folders only through this module.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from crepe.config import TrainConfig, UsageError

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PRETRAIN = "pretrain.json"  # --pretrain: the public pretraining's provenance
AUDIT = "audit.json"  # --audit-canaries: the one-run audit's result (nothing secret in it)

LABELS_CAVEAT = (
    "per-class selection reads the true labels and class sizes without noise: labels and the class "
    "histogram are released exactly and get no protection; this epsilon holds with labels treated as "
    "public (use --selection-scope global for an epsilon that keeps labels private)"
)
REPRODUCIBLE_CAVEAT = "reproducible noise: this epsilon is valid only if the seed is kept secret"
NOT_COVERED = "not covered by epsilon"  # label of statistics computed on private data outside the ledger


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, os.replace: no torn file after a kill."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def append_line(path: Path, obj: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not readable JSON ({e})") from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):  # a last line torn by a crash: the checkpoint still holds that epoch
                break
            raise UsageError(f"{path}: line {i} is damaged; the run folder cannot be trusted") from None
    return rows


def read_config(run_dir: Path) -> TrainConfig:
    path = run_dir / CONFIG
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a crepe run folder (no {CONFIG})")
    d = read_json(path)
    if not isinstance(d, dict):
        raise UsageError(f"{path} does not hold a config object; not a crepe run folder")
    d = {k: v for k, v in d.items() if k != "provenance"}
    return TrainConfig.from_dict(d)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    s = read_json(path)
    return s if isinstance(s, dict) else None


def is_complete(run_dir: Path) -> bool:
    try:
        s = read_summary(run_dir)
    except UsageError:
        return False
    return s is not None and s.get("status") == "complete"


def write_config(run_dir: Path, cfg: TrainConfig, provenance: dict[str, Any]) -> None:
    atomic_write_json(run_dir / CONFIG, {**cfg.to_dict(), "provenance": provenance})


def provenance(**extra: Any) -> dict[str, Any]:
    """What produced a run: versions, the command line, the git commit of a checkout (and `extra`)."""
    import importlib.metadata as md
    import subprocess
    import sys

    from crepe._version import __version__

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    commit = None
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "crepe": __version__,
        "git_commit": commit,
        "torch": version("torch"),
        "opacus": version("opacus"),
        "argv": sys.argv,
        **extra,
    }


def prepare_out(cfg: TrainConfig, out: Path, provenance: dict[str, Any]) -> str:
    """Create a run folder for `cfg` at `out`, never touching a user's files.

    Returns "new", "resume" (out holds the same run, unfinished) or "complete"
    (out holds the same run, finished). Raises UsageError for anything else.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / CONFIG).is_file():
            raise UsageError(f"--out {out} exists, is not empty and is not a crepe run; choose another --out")
        a, b = read_config(out).identity(), cfg.identity()
        diff = sorted(k for k in a if a[k] != b[k])
        if diff:
            raise UsageError(
                f"--out {out} holds a different run (differs in {', '.join(diff)}); "
                "choose another --out, or continue that run with --resume"
            )
        return "complete" if is_complete(out) else "resume"
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, cfg, provenance)
    return "new"


def eps_json(eps: dict[str, float]) -> dict[str, Any]:
    """JSON form: eps_* is a float, or null when infinite, with eps_*_infinite flags.

    ("inf" is not valid JSON.) eps_infinite is the flag of eps_total.
    """
    out: dict[str, Any] = {}
    for k in ("total", "select", "train"):
        inf = math.isinf(eps[k])
        out[f"eps_{k}"] = None if inf else eps[k]
        out[f"eps_{k}_infinite"] = inf
    out["eps_infinite"] = out["eps_total_infinite"]
    return out


def fmt_eps(eps: float | None) -> str:
    return "inf" if eps is None or math.isinf(eps) else f"{eps:.3f}"


def embedding_line(summary: dict[str, Any]) -> str | None:
    e = summary.get("embedding")
    if not e:
        return None
    return (f"crepe train: embeddings of held-out classes {', '.join(map(str, e['classes']))} ({e['test_examples']} test "
            f"examples, never trained on): pair recall {e['recall_at_far_1e-3']:.4f} at FAR 1e-3, "
            f"{e['recall_at_far_0.1']:.4f} at FAR 0.1; 1-NN accuracy {e['nn1_accuracy']:.4f} (gallery: one per class)")


def audit_line(audit: dict[str, Any] | None) -> str | None:
    """The audit's eps_lb (and its f-DP conversion) beside epsilon, and what it means (summary.json's or
    audit.json's "audit")."""
    if not audit:
        return None
    eps_fdp = audit.get("eps_lb_fdp")  # absent from audits written before the f-DP conversion
    fdp = "" if eps_fdp is None else f" (f-DP, if the tradeoff curve is Gaussian: {eps_fdp:.3f})"
    return (f"crepe audit: eps_lb {audit['eps_lb']:.3f}{fdp} at {audit['confidence']:.0%} from {audit['correct']} of "
            f"{audit['guesses']} guesses right about {audit['canaries']} {audit['method']} canaries: a lower bound "
            f"from this one run; epsilon {fmt_eps(audit['eps_upper'])} (train part) is the accountant's upper bound")


def eps_parts(eps: dict[str, Any], kinds: Iterable[str]) -> str:
    """'total (select s, train t)' from eps_json or epsilons; the select part is called what the
    releases of its kinds are (private set generation: "generation")."""
    get = (lambda k: eps.get(f"eps_{k}")) if "eps_total" in eps else eps.get
    label = "generation" if "generate" in set(kinds) else "select"
    return f"{fmt_eps(get('total'))} ({label} {fmt_eps(get('select'))}, train {fmt_eps(get('train'))})"


def caveat_tail(*, labels_public: bool, reproducible: bool) -> str:
    """What every printed epsilon must say after it (DESIGN.md sections 4 and 9)."""
    return (", labels treated as public" if labels_public else "") + (
        ", valid only if the seed is secret" if reproducible else ""
    )


def final_line(summary: dict[str, Any]) -> str:
    tail = caveat_tail(labels_public=summary["labels_public"], reproducible=summary.get("noise") == "reproducible")
    acc, note = summary["test_acc"], summary.get("test_acc_note")
    shown = f"{acc:.4f}" if acc is not None else "-" + (f" ({note})" if note else "")
    user = ""
    if "max_per_user" in summary:  # an example-level run on data with users
        user = (f"; {fmt_eps(summary['eps_user'])} per user of at most {summary['max_per_user']} examples (group "
                f"privacy{'' if summary['max_per_user_public'] else ', k read off the data: not public'})")
    if summary.get("pretrain"):
        tail += f", pretrained on public {summary['pretrain']['dataset']} (not covered)"
    return (
        f"crepe train: test accuracy {shown} | epsilon "
        f"{eps_parts(summary, (r.get('kind') for r in summary.get('ledger', [])))} "
        f"per {summary.get('unit', 'example')}{user} "  # summaries before the unit existed protect one example
        f"at delta {summary['delta']:g}, zero-out adjacency{tail} | sigma {summary['sigma']:.4g}"
    )
