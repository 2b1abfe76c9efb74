"""The privacy ledger: every release a run makes, as primitives (it goes into checkpoints as is).

An entry is {"kind", "noise_multiplier", "sample_rate", "steps"}:
- "select": a private selection round, a Gaussian mechanism on all n proxies
  (noise multiplier sigma_sel, sample rate 1);
- "train": a DP-SGD step, a Poisson-subsampled Gaussian (sigma, q = B/|S|);
- "clip-count": adaptive clipping's noisy count of unclipped examples in that
  step's batch (sensitivity 1, noise multiplier sigma_b, the same q);
- "generate": a noisy real gradient of private set generation (sigma, q = B/n).
A release without noise (noise multiplier 0: non-private selection or --no-dp
training) is recorded too and makes every epsilon that includes it infinite.
"""

from __future__ import annotations

from typing import Any

from crepe.config import check_choice

Entry = dict[str, Any]
KINDS = ("select", "train", "clip-count", "generate")
# The parts of epsilon a run reports: each a set of kinds composed on its own.
PARTS: dict[str, tuple[str, ...]] = {
    "total": KINDS,
    "select": ("select", "generate"),
    "train": ("train", "clip-count"),
}


def record(ledger: list[Entry], *, kind: str, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
    """Append a release; consecutive identical releases are merged (same composition)."""
    check_choice("ledger kind", kind, KINDS)
    if not (0.0 < sample_rate <= 1.0):
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    if noise_multiplier < 0 or steps < 1:
        raise ValueError(f"bad ledger entry: noise_multiplier={noise_multiplier}, steps={steps}")
    last = ledger[-1] if ledger else None
    if (
        last is not None
        and last["kind"] == kind
        and last["noise_multiplier"] == noise_multiplier
        and last["sample_rate"] == sample_rate
    ):
        last["steps"] += steps
    else:
        ledger.append(
            {"kind": kind, "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate), "steps": int(steps)}
        )


def check_entries(ledger: Any) -> list[Entry]:
    """The ledger if every entry is well formed; ValueError otherwise (a damaged ledger is never trusted)."""
    if not isinstance(ledger, list):
        raise ValueError("the privacy ledger is not a list")
    for e in ledger:
        if not isinstance(e, dict) or set(e) != {"kind", "noise_multiplier", "sample_rate", "steps"}:
            raise ValueError(f"malformed ledger entry {e!r}")
        if e["kind"] not in KINDS or not (0 < e["sample_rate"] <= 1) or e["noise_multiplier"] < 0 or e["steps"] < 1:
            raise ValueError(f"malformed ledger entry {e!r}")
    return ledger
