"""Privacy ledger and accounting (DESIGN.md section 4; derivation in docs/privacy.md).

Zero-out adjacency throughout. The ledger is a list of entries
{"kind": "select" | "train", "noise_multiplier": s, "sample_rate": q, "steps": t}:
- a private selection round: one Gaussian mechanism, s = sigma_sel, q = 1;
- a DP-SGD step: a Poisson-subsampled Gaussian, s = sigma, q = B / |S|.
A release without noise (s = 0: non-private selection or --no-dp training) is
recorded too and makes every epsilon that includes it infinite.

All entries are composed in ONE accountant (Opacus' RDP analysis, or its PRV
accountant); epsilon of
the selection part and of the training part are the same computation on the
sub-ledgers. The ledger holds only primitives: it goes into checkpoints as is.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np

from crepe.config import ACCOUNTANTS, check_choice

Entry = dict[str, Any]
KINDS = ("select", "train")


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


def epsilon(ledger: list[Entry], *, delta: float, accountant: str = "rdp", kinds: tuple[str, ...] = KINDS) -> float:
    """epsilon at `delta` of the entries of the given kinds, composed in one accountant.

    0.0 for an empty ledger; math.inf if any included release had no noise.
    RDP uses Opacus' default orders (a bound that is valid, if not tightest,
    when the optimum sits at the edge of the orders; Opacus' warning about it
    is silenced here). PRV returns Opacus' upper bound with eps_error 0.01.
    """
    check_choice("accountant", accountant, ACCOUNTANTS)
    entries = [e for e in ledger if e["kind"] in kinds]
    if not entries:
        return 0.0
    if any(e["noise_multiplier"] == 0 for e in entries):
        return math.inf
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
    if accountant == "rdp":
        # Opacus' RDPAccountant.get_privacy_spent, with the per-step RDP curve of each
        # (sigma, q) cached: RDP composes additively, so a release repeated t times
        # costs t times the curve (what compute_rdp(steps=t) returns). Uncached, the
        # fractional orders cost seconds per call at large q, every epoch.
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as analysis

        rdp = sum(steps * _rdp_curve(sigma, q) for sigma, q, steps in history)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = history
    # q = 1 (selection rounds) takes log(1 - q) = -inf inside Opacus' PRV; the limit is the right one.
    with np.errstate(divide="ignore"):
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=256)
def _rdp_curve(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at Opacus' default orders (read-only)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    curve = np.asarray(
        analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS),
        dtype=float,
    )
    curve.setflags(write=False)
    return curve


def epsilons(ledger: list[Entry], *, delta: float, accountant: str = "rdp") -> dict[str, float]:
    """{"total", "select", "train"} epsilons (math.inf where not finite)."""
    return {
        "total": epsilon(ledger, delta=delta, accountant=accountant),
        "select": epsilon(ledger, delta=delta, accountant=accountant, kinds=("select",)),
        "train": epsilon(ledger, delta=delta, accountant=accountant, kinds=("train",)),
    }


def as_json(eps: dict[str, float]) -> dict[str, Any]:
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


def fmt(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:.3f}"
