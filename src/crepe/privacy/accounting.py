"""Accounting: epsilon of any part of a ledger, all releases composed in ONE accountant
(Opacus' RDP analysis, or its PRV accountant). Derivation: docs/privacy.md.
"""

from __future__ import annotations

import functools
import math
import warnings
import numpy as np

from crepe.config import check_choice, options
from crepe.privacy.ledger import KINDS, MARKER, PARTS, Entry

ACCOUNTANTS = options()["accountant"].choices
# The release kinds a phase after a "subset" marker may hold and still be amplified by the secret
# draw: those computed on the subset only (the DP-SGD steps and adaptive clipping's counts on their
# batches). A selection round or a generation gradient reads the full data.
AMPLIFIED = ("train", "clip-count")


def epsilon(ledger: list[Entry], *, delta: float, accountant: str = "rdp", kinds: tuple[str, ...] = KINDS) -> float:
    """epsilon at `delta` of the releases of the given kinds, composed in one accountant.

    0.0 for an empty ledger; math.inf if any included release had no noise.
    RDP uses Opacus' default orders (a bound that is valid, if not tightest,
    when the optimum sits at the edge of the orders; Opacus' warning about it
    is silenced here). PRV returns Opacus' upper bound with eps_error 0.01.

    Without "subset" markers this is the composition of all included releases
    (bound A). With markers it is min(A, M), M the phase bound of `_phased`:
    releases on a subset drawn by secret Poisson selection are amplified by
    that draw (docs/privacy.md, "Random subsets").
    """
    check_choice("accountant", accountant, ACCOUNTANTS)
    entries = [e for e in ledger if e["kind"] in kinds and e["kind"] != MARKER]
    if not entries:
        return 0.0
    if any(e["noise_multiplier"] == 0 for e in entries):
        return math.inf
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        plain = _epsilon(_history(entries), delta=delta, accountant=accountant)
        if not any(e["kind"] == MARKER for e in ledger):
            return plain
        return min(plain, _phased(ledger, delta=delta, accountant=accountant, kinds=kinds))


def _history(entries: list[Entry]) -> list[tuple[float, float, int]]:
    """[(sigma, q, steps)], one term per (sigma, q): composition does not depend on order."""
    totals: dict[tuple[float, float], int] = {}
    for e in entries:
        key = (e["noise_multiplier"], e["sample_rate"])
        totals[key] = totals.get(key, 0) + e["steps"]
    return [(sigma, q, steps) for (sigma, q), steps in totals.items()]


def _phased(ledger: list[Entry], *, delta: float, accountant: str, kinds: tuple[str, ...]) -> float:
    """Bound M: the included releases split into phases at the markers, phases composed by basic
    composition with delta split evenly over the k phases that hold included releases.

    A phase costs epsilon_a (its releases composed at delta/k). A phase that follows a marker with
    inclusion probability p and whose included releases are all computed on that subset (kinds
    AMPLIFIED) also costs at most log(1 + p (e^eps_S - 1)), eps_S its releases composed at
    delta_S = delta/(k p) (Poisson subsampling, Balle, Barthe & Gaboardi 2018: (eps_S, delta_S) on S
    gives (that, p delta_S = delta/k) on the full data); it costs the smaller. Releases before the
    first marker form a phase without amplification. The included releases are noisy (checked by
    the caller).
    """
    phases: list[tuple[float | None, list[Entry]]] = [(None, [])]  # (p of the marker that opens it, releases)
    for e in ledger:
        if e["kind"] == MARKER:
            phases.append((e["sample_rate"], []))
        elif e["kind"] in kinds:
            phases[-1][1].append(e)
    phases = [(p, releases) for p, releases in phases if releases]
    k = len(phases)
    total = 0.0
    for p, releases in phases:
        history = _history(releases)
        cost = _epsilon(history, delta=delta / k, accountant=accountant)
        if p is not None and delta / (k * p) < 1 and all(e["kind"] in AMPLIFIED for e in releases):
            on_subset = _epsilon(history, delta=delta / (k * p), accountant=accountant)
            cost = min(cost, _amplified(on_subset, p))
        total += cost
    return total


def _amplified(eps: float, p: float) -> float:
    """log(1 + p (e^eps - 1)) without overflow (eps >= 0; inf stays inf)."""
    if eps <= 1.0:
        return math.log1p(p * math.expm1(eps))
    return eps + math.log(p + (1.0 - p) * math.exp(-eps))


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
