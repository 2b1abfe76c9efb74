"""The privacy ledger: every release a run makes, as primitives (it goes into checkpoints as is).

An entry is {"kind", "noise_multiplier", "sample_rate", "steps"}:
- "select": a private selection round, a Gaussian mechanism on all n proxies
  (noise multiplier sigma_sel, sample rate 1);
- "train": a DP-SGD step, a Poisson-subsampled Gaussian (sigma, q = B/|S|);
  under adaptive clipping the step's noisy count of unclipped examples comes
  from the same batch and is part of the same release: noise multiplier
  (sigma^-2 + sigma_b^-2)^(-1/2) (privacy/calibration.py `joint_noise`);
- "generate": a noisy real gradient of private set generation (sigma, q = B/n).
A release without noise (noise multiplier 0: non-private selection or --no-dp
training) is recorded too and makes every epsilon that includes it infinite.

One entry kind is a MARKER, not a release: "subset" (written only by
`record_subset`, as {"kind": "subset", "noise_multiplier": 0.0,
"sample_rate": p, "steps": 1}) says that the releases after it, up to the next
marker, are computed on a subset S drawn by secret Poisson selection (each of
the n examples independently with probability p), at a sample rate and with a
normaliser fixed from public quantities, and that S is never released. The
accountant may then amplify those releases (docs/privacy.md, "Random subsets").
A marker costs nothing and is never merged with its neighbours.

Older crepe versions wrote another kind, "clip-count": adaptive clipping's
count as a release of its own, apart from its step's gradient. The two share
one Poisson batch, so composing them as independent subsampled releases
under-reported epsilon (RETIRED); a ledger holding one is refused, never
re-accounted or resumed.
"""

from __future__ import annotations

from typing import Any

from crepe.config import check_choice

Entry = dict[str, Any]
KINDS = ("select", "train", "generate")  # the release kinds
# Kinds older versions wrote whose epsilon was wrong: why a ledger holding one cannot be trusted.
RETIRED = {
    "clip-count": (
        "adaptive clipping's count was accounted as a release apart from its step's gradient, but both "
        "come from the same Poisson batch, so the epsilon recorded for this run was under-reported"
    ),
}
MARKER = "subset"  # the one marker kind: the releases up to the next marker run on a secret Poisson subset
_FIELDS = frozenset({"kind", "noise_multiplier", "sample_rate", "steps"})
# The parts of epsilon a run reports: each a set of kinds composed on its own.
PARTS: dict[str, tuple[str, ...]] = {
    "total": KINDS,
    "select": ("select", "generate"),
    "train": ("train",),
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


def record_subset(ledger: list[Entry], *, inclusion_probability: float) -> None:
    """Append a marker: the releases that follow, up to the next marker, run on a subset drawn by secret
    Poisson selection with this inclusion probability p (0 < p <= 1). Never merged, even with an
    identical marker: each one starts a phase of its own."""
    if not (0.0 < inclusion_probability <= 1.0):
        raise ValueError(f"inclusion_probability must lie in (0, 1], got {inclusion_probability}")
    ledger.append({"kind": MARKER, "noise_multiplier": 0.0, "sample_rate": float(inclusion_probability), "steps": 1})


def check_entries(ledger: Any) -> list[Entry]:
    """The ledger if every entry is well formed; ValueError otherwise (a damaged ledger is never trusted)."""
    if not isinstance(ledger, list):
        raise ValueError("the privacy ledger is not a list")
    for e in ledger:
        if not isinstance(e, dict) or set(e) != _FIELDS:
            raise ValueError(f"malformed ledger entry {e!r}")
        retired = RETIRED.get(e["kind"]) if isinstance(e["kind"], str) else None
        if retired is not None:
            raise ValueError(
                f"the privacy ledger holds a {e['kind']!r} entry, written by an older crepe: {retired}; "
                "this run cannot be resumed: start a new run with another --out"
            )
        if e["kind"] == MARKER:  # a marker carries only its p: noise 0 and one step, exactly
            bad = e["noise_multiplier"] != 0 or e["steps"] != 1
        else:
            bad = e["kind"] not in KINDS or e["noise_multiplier"] < 0 or e["steps"] < 1
        if bad or not (0 < e["sample_rate"] <= 1):
            raise ValueError(f"malformed ledger entry {e!r}")
    return ledger
