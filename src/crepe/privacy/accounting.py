"""Accounting: epsilon of any part of a ledger, all releases composed in ONE accountant
(Opacus' RDP analysis, or its PRV accountant). Derivation: docs/privacy.md.
"""

from __future__ import annotations

import functools
import math
import warnings
import numpy as np

from crepe.config import check_choice, options
from crepe.privacy.ledger import KINDS, PARTS, Entry

ACCOUNTANTS = options()["accountant"].choices


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
    totals: dict[tuple[float, float], int] = {}  # composition does not depend on order: one term per (sigma, q)
    for e in entries:
        key = (e["noise_multiplier"], e["sample_rate"])
        totals[key] = totals.get(key, 0) + e["steps"]
    history = [(sigma, q, steps) for (sigma, q), steps in totals.items()]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return _epsilon(history, delta=delta, accountant=accountant)


def _epsilon(history: list[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    if accountant == "rdp":
        # Opacus' RDPAccountant.get_privacy_spent, with the per-step RDP curve of each
        # (sigma, q) cached: RDP composes additively, so a release repeated t times
        # costs t times the curve (what compute_rdp(steps=t) returns). Uncached, the
        # fractional orders cost seconds per call at large q, every epoch.
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as analysis

        rdp = sum(steps * _rdp_curve(sigma, q) for sigma, q, steps in history)
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
    """{"total", "select", "train"} epsilons (math.inf where not finite); see ledger.PARTS."""
    return {part: epsilon(ledger, delta=delta, accountant=accountant, kinds=kinds) for part, kinds in PARTS.items()}
