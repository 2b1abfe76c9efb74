"""Which runs an audit's canaries can go through (torch-free; checked by the run plan before
anything is written). A canary is one more example of example-level DP-SGD, sampled at the
step's sample rate (a canary user of a user-level run: at the users' rate, with the
user's sensitivity): the audit needs the DP optimizer's steps, on the set the ledger's rate is
for, and an epsilon for those steps that the canaries are subject to."""

from __future__ import annotations

from crepe.config import TrainConfig, UsageError
from crepe.smallsets.method import Method


def check(cfg: TrainConfig, method: Method, n: int) -> None:
    """UsageError if --audit-canaries cannot audit this run (config.py checks the rest)."""
    if cfg.audit_canaries is None:
        return
    if not method.trains_privately:
        raise UsageError(f"--audit-canaries audits DP-SGD steps on private data; --method {method.name} trains on "
                         "data that reads no private example (its releases are elsewhere): nothing to audit")
    if any(r.marker for r in method.round_releases(cfg, n)):
        raise UsageError(f"--audit-canaries with --method {method.name} --random-draw poisson: the ledger amplifies "
                         "epsilon by the secret Poisson draw of the subset, which the canaries do not go through, "
                         "so the audit would not test that epsilon; use --random-draw fixed or another --method")


def check_parameters(m: int | None, trainable: int) -> None:
    """UsageError if m white-box canaries cannot each have their own coordinate of the model."""
    if m is not None and m > trainable:
        raise UsageError(f"--audit-canaries {m}: white-box canaries need distinct coordinates and the model has "
                         f"{trainable} trainable parameters; give at most {trainable}")
