"""Accounting: epsilon of any part of a ledger, all releases composed in ONE accountant.

Accountants (`ACCOUNTANTS`, a registry: each composes releases and phases):
- "pld" (default): privacy loss distributions of Google's dp-accounting, pessimistic
  estimates (connect-the-dots discretisation, tails rounded up): an upper bound on the
  tight epsilon of the composition;
- "rdp": Opacus' RDP analysis at its default orders;
- "prv": Opacus' PRV accountant (upper bound, eps_error 0.01).
Releases on a subset drawn by secret Poisson selection (a "subset" marker opens their
phase) are amplified by that draw: under "pld" each phase's exact dominating pair is
composed (bound P), under "rdp"/"prv" phases are amplified in (eps, delta) and composed
by basic composition (bound M). Derivation: docs/privacy.md, sections 3 and 9.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from crepe.config import check_choice, options
from crepe.privacy.ledger import KINDS, Ledger, Release, as_ledger, parts

History = tuple[tuple[float, float, int], ...]  # ((sigma, q, steps), ...), one term per (sigma, q), sorted
# dp-accounting's grid of privacy losses. Connect-the-dots keeps the error from growing with the
# number of compositions: at 1e-3 epsilon moves by < 0.1% against 1e-4 on the study's schedules
# (tests/test_pld.py) at a tenth of the cost.
PLD_GRID = 1e-3


def epsilon(
    ledger: Ledger | list[Any], *, delta: float, accountant: str = "pld", kinds: tuple[str, ...] | None = None
) -> float:
    """epsilon at `delta` of the releases of the given kinds, composed in one accountant.

    0.0 for an empty ledger; math.inf if any included release had no noise.
    Without "subset" markers this is the composition of all included releases (bound A).
    With markers it is min(A, P) under "pld" and min(A, M) under "rdp"/"prv": releases on
    a subset drawn by secret Poisson selection are amplified by that draw (docs/privacy.md §9).
    """
    check_choice("accountant", accountant, tuple(ACCOUNTANTS))
    ledger = as_ledger(ledger)
    kinds = tuple(KINDS) if kinds is None else kinds
    entries = [r for r in ledger if r.kind in kinds]
    if not entries:
        return 0.0
    if any(r.noise_multiplier == 0 for r in entries):
        return math.inf
    acc = ACCOUNTANTS[accountant]
    plain = acc.compose(_history(entries), delta)
    if not any(r.marker for r in ledger):
        return plain
    return min(plain, acc.phased(_phases(ledger, kinds), delta))


def epsilons(ledger: Ledger | list[Any], *, delta: float, accountant: str = "pld") -> dict[str, float]:
    """{"total", "select", "train"} epsilons (math.inf where not finite); see ledger.parts."""
    ledger = as_ledger(ledger)
    return {part: epsilon(ledger, delta=delta, accountant=accountant, kinds=kinds) for part, kinds in parts().items()}


def _history(releases: list[Release]) -> History:
    """One term per (sigma, q), sorted: composition does not depend on order."""
    totals: Counter[tuple[float, float]] = Counter()
    for r in releases:
        totals[(float(r.noise_multiplier), float(r.sample_rate))] += int(r.steps)
    return tuple(sorted((sigma, q, steps) for (sigma, q), steps in totals.items()))


Phase = tuple["float | None", History, bool]  # (p of the marker that opens it, releases, all computed on the subset)


def _phases(ledger: Ledger, kinds: tuple[str, ...]) -> list[Phase]:
    """The included releases split at the markers; releases before the first marker form a phase
    without a draw (p None); phases without included releases are dropped. A phase may be
    amplified by its draw only if every release in it is of an amplified kind (computed on the
    subset only: a selection round or a generation gradient reads the full data)."""
    split: list[tuple[float | None, list[Release]]] = [(None, [])]
    for r in ledger:
        if r.marker:
            split.append((r.sample_rate, []))
        elif r.kind in kinds:
            split[-1][1].append(r)
    return [(p, _history(rel), all(KINDS[r.kind].amplified for r in rel)) for p, rel in split if rel]


# ---- bound M (rdp, prv): each phase amplified in (eps, delta), phases by basic composition

def _phased(phases: list[Phase], delta: float, *, accountant: str) -> float:
    """Phases composed by basic composition with delta split evenly over the k phases. A phase
    costs its releases composed at delta/k; one that follows a marker of probability p and holds
    only releases on the subset costs at most log(1 + p (e^eps_S - 1)), eps_S its releases at
    delta_S = delta/(k p) (Balle, Barthe & Gaboardi 2018: (eps_S, delta_S) on S gives
    (that, p delta_S = delta/k) on the full data); it costs the smaller."""
    compose = ACCOUNTANTS[accountant].compose
    k = len(phases)
    total = 0.0
    for p, history, on_subset in phases:
        cost = compose(history, delta / k)
        if p is not None and on_subset and delta / (k * p) < 1:
            cost = min(cost, _amplified(compose(history, delta / (k * p)), p))
        total += cost
    return total


def _amplified(eps: float, p: float) -> float:
    """log(1 + p (e^eps - 1)) without overflow (eps >= 0; inf stays inf)."""
    if eps <= 1.0:
        return math.log1p(p * math.expm1(eps))
    return eps + math.log(p + (1.0 - p) * math.exp(-eps))


# ---- the accountants: (history, delta) -> epsilon

def _rdp(history: History, delta: float) -> float:
    # Opacus' RDPAccountant.get_privacy_spent, with the per-step RDP curve of each (sigma, q) cached:
    # RDP composes additively, so a release repeated t times costs t times the curve.
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    rdp = sum(steps * _rdp_curve(sigma, q) for sigma, q, steps in history)
    with warnings.catch_warnings():  # the optimum at the edge of the orders: valid, not tightest
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


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


def _prv(history: History, delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    # q = 1 (selection rounds) takes log(1 - q) = -inf inside Opacus' PRV; the limit is the right one.
    with np.errstate(divide="ignore"):
        return float(acc.get_epsilon(delta=delta))


def _pld_epsilon(pld: Any, delta: float) -> float:
    return float(pld.get_epsilon_for_delta(delta))


def _pld(history: History, delta: float) -> float:
    return _pld_epsilon(_composed(history), delta)


def _pld_phased(phases: list[Phase], delta: float) -> float:
    """Bound P: every phase's dominating pair, composed exactly. A phase on a secret Poisson
    subset of probability p whose releases (dominating pair (A, B)) read only the subset has the
    dominating pair ((1 - p) B + p A, B) when an example is removed and (B, (1 - p) B + p A) when
    it is added (docs/privacy.md §9); other phases keep (A, B)."""
    counts = Counter((p if on_subset else None, history) for p, history, on_subset in phases)
    pld = None
    for (p, history), times in sorted(counts.items(), key=repr):
        one = _composed(history) if p is None else _on_subset(history, p)
        one = one if times == 1 else one.self_compose(times)
        pld = one if pld is None else pld.compose(one)
    return _pld_epsilon(pld, delta)


@functools.lru_cache(maxsize=64)
def _composed(history: History) -> Any:
    """The PLD of the releases in `history`: Poisson-subsampled Gaussians (sensitivity 1)."""
    pld = None
    for term in history:
        one = _term(*term)
        pld = one if pld is None else pld.compose(one)
    return pld


@functools.lru_cache(maxsize=64)
def _term(sigma: float, q: float, steps: int) -> Any:
    """The PLD of `steps` releases at (sigma, q): cached apart, since a run's parts (total, select,
    train) share their terms (dp-accounting's compose and self_compose return new objects)."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma, sampling_prob=q, value_discretization_interval=PLD_GRID, pessimistic_estimate=True
    ).self_compose(steps)


@functools.lru_cache(maxsize=64)
def _on_subset(history: History, p: float) -> Any:
    """The PLD of one phase on a secret Poisson subset (inclusion probability p) whose releases
    have the PLD `_composed(history)`, i.e. the dominating pair (A, B).

    Removal: the pmf holds L = log(A/B) under A. The pair ((1 - p) B + p A, B) has the loss
    log(1 - p + p e^L), whose mass at an atom l is p w(l) + (1 - p) e^-l w(l) (B's mass there),
    plus (1 - p) times B's mass outside A's support at loss log(1 - p). Addition: the pmf holds
    L = log(B/A) under B; the pair (B, (1 - p) B + p A) has the loss -log(1 - p + p e^-L) under B
    (A's mass outside B's support, L = inf, gives the finite -log(1 - p)). New losses are put on
    the grid by connect-the-dots splits and infinite losses stay infinite: a pessimistic estimate.
    """
    from dp_accounting.pld import pld_pmf
    from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution

    inner = _composed(history)
    remove, add = inner._pmf_remove.to_dense_pmf(), inner._pmf_add.to_dense_pmf()  # noqa: SLF001 (no public accessor)
    grid = remove._discretization

    def pmf(losses: np.ndarray, mass: np.ndarray, infinity_mass: float) -> Any:
        """Each atom (l, m) split between the grid points a <= l < b keeping m and m e^-l (connect
        the dots): delta(eps) = sum m (1 - e^eps e^-l)_+ is convex in e^-l, so it can only grow."""
        keep = mass > 0
        losses, mass = losses[keep], mass[keep]
        below = np.floor(losses / grid).astype(np.int64)  # (atoms,) index of a
        a = below * grid
        up = np.clip(-np.expm1(a - losses) / -np.expm1(-grid), 0.0, 1.0)  # (e^-a - e^-l) / (e^-a - e^-b)
        low = int(below.min())
        size = int(below.max()) - low + 2  # the last atom's b included
        probs = (np.bincount(below - low, weights=mass * (1 - up), minlength=size)
                 + np.bincount(below - low + 1, weights=mass * up, minlength=size))
        return pld_pmf.DensePLDPmf(grid, low, probs, infinity_mass, pessimistic_estimate=True)

    loss = (remove._lower_loss + np.arange(remove.size)) * grid  # (size,) L = log(A/B), under A
    w = remove._probs
    below = np.exp(-loss) * w  # B's mass at each atom
    # B's mass where A is 0; the discretised pair may overshoot 1 by ~1e-7, and the excess stays in
    # the upper distribution below, where it can only raise delta.
    rest = max(0.0, 1.0 - float(below.sum()))
    log_p, log_q = math.log(p), math.log1p(-p) if p < 1 else -math.inf
    removal = pmf(
        np.append(np.logaddexp(log_q, log_p + loss), log_q),  # log(1 - p + p e^L)
        np.append(p * w + (1 - p) * below, (1 - p) * rest),
        p * remove._infinity_mass,
    )
    loss = (add._lower_loss + np.arange(add.size)) * grid  # L = log(B/A), under B
    finite = p < 1  # A's mass outside B's support (L = inf) has the finite loss -log(1 - p)
    addition = pmf(
        np.append(-np.logaddexp(log_q, log_p - loss), -log_q),  # -log(1 - p + p e^-L)
        np.append(add._probs, add._infinity_mass if finite else 0.0),
        0.0 if finite else add._infinity_mass,
    )
    return PrivacyLossDistribution(removal, addition)


@dataclass(frozen=True)
class Accountant:
    """How one accountant composes releases (bound A) and phases on secret Poisson subsets."""

    compose: Callable[[History, float], float]  # (history, delta) -> epsilon
    phased: Callable[[list[Phase], float], float]  # (phases, delta) -> epsilon


ACCOUNTANTS: dict[str, Accountant] = {
    "pld": Accountant(_pld, _pld_phased),  # bound P
    "rdp": Accountant(_rdp, functools.partial(_phased, accountant="rdp")),  # bound M
    "prv": Accountant(_prv, functools.partial(_phased, accountant="prv")),  # bound M
}
assert tuple(ACCOUNTANTS) == options()["accountant"].choices, "config.py declares the accountants by these names"
