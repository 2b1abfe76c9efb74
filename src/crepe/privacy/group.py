"""Group privacy: a user-level epsilon for an example-level ledger, a user owning at most k examples.

Adjacency: zero-out of a user (all of its at most k examples replaced by null examples), the
user-level form of the example-level convention (docs/privacy.md §1). k is public: the most
examples any one user holds. Each release kind moves by (derivation: docs/privacy.md §10):
- "train", "generate" (a noisy sum of clipped per-example terms over a Poisson batch at rate q):
  j of the user's k examples are in the batch, j ~ Binomial(k, q), and they move the sum by at
  most j (noise units): the mixture sum_j Binom(k, q)(j) N(j, sigma^2) against N(0, sigma^2),
  both directions (a vector sum is dominated by its norms, and larger shifts dominate smaller);
- "select" (a Gaussian on all n proxies, one row per example): the user's k rows are different
  coordinates, so they move the release by sqrt(k) jointly (sqrt(j) if ever subsampled);
- "subset" markers: ignored for k > 1 (NO amplification by the secret draw at the user level:
  every release as if computed on a fixed subset, the sound un-amplified bound A);
- a ledger of unit "user" already protects users: its own epsilon, whatever k.
k = 1 is the example-level epsilon itself (`accounting.epsilon`, bit for bit).

Accountants (`GROUP_ACCOUNTANTS`): "pld" (tight up to its grid: dp-accounting's pessimistic PLD
of each step's mixture, composed) and "rdp" (loose: the RDP of the same mixture, integrated
numerically at Opacus' orders, both directions, composed and converted as Opacus does). Opacus'
PRV has no mixture mechanism: "prv" is refused.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from typing import Any

import numpy as np

from crepe.config import UsageError
from crepe.privacy import accounting
from crepe.privacy.ledger import KINDS, Ledger, Release, as_ledger, parts

GROUP_ACCOUNTANTS = ("pld", "rdp")
# How a user's j examples in one release move it, per kind: "sum" (by j) or "rows" (by sqrt(j)).
SHIFT = {"train": "sum", "generate": "sum", "select": "rows"}
assert set(SHIFT) == set(KINDS), "every release kind needs its group sensitivity (docs/privacy.md §10)"

Term = tuple[float, float, int, str]  # (sigma, q, k, shift rule): one step's mechanism for a user


def group_accountant(accountant: str) -> str:
    """The accountant of a run's user-level epsilon: its own where it has a group conversion, else pld."""
    return accountant if accountant in GROUP_ACCOUNTANTS else "pld"


def user_epsilon(
    ledger: Ledger | list[Any],
    *,
    k: int,
    delta: float,
    accountant: str = "pld",
    kinds: tuple[str, ...] | None = None,
) -> float:
    """User-level epsilon at `delta` of the releases of the given kinds, for a user of at most k examples.

    0.0 for an empty ledger, math.inf if an included release had no noise. k = 1, and a ledger of
    unit "user", give `accounting.epsilon` of the same arguments. For k > 1 subset markers give
    no amplification (docs/privacy.md §10). UsageError for a bad k, accountant or delta.
    """
    _check(k=k, delta=delta, accountant=accountant)
    ledger = as_ledger(ledger)
    if k == 1 or ledger.unit == "user":
        return accounting.epsilon(ledger, delta=delta, accountant=accountant, kinds=kinds)
    kinds = tuple(KINDS) if kinds is None else kinds
    entries = [r for r in ledger if r.kind in kinds]  # markers are not kinds: dropped (no amplification)
    if not entries:
        return 0.0
    if any(r.noise_multiplier == 0 for r in entries):
        return math.inf
    terms = _terms(entries, k)
    return _pld(terms, delta) if accountant == "pld" else _rdp(terms, delta)


def user_epsilons(ledger: Ledger | list[Any], *, k: int, delta: float, accountant: str = "pld") -> dict[str, float]:
    """{"total", "select", "train"} user-level epsilons (as `accounting.epsilons`, per user of <= k examples)."""
    ledger = as_ledger(ledger)
    return {part: user_epsilon(ledger, k=k, delta=delta, accountant=accountant, kinds=kinds) for part, kinds in parts().items()}


def _check(*, k: object, delta: object, accountant: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(
            f"k (the most examples one user holds) must be an integer >= 1, got {k!r}; "
            "k = 1 is the example-level epsilon"
        )
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < delta < 1.0):
        raise UsageError(f"delta must be a number in (0, 1), got {delta!r}")
    if accountant not in GROUP_ACCOUNTANTS:
        raise UsageError(
            f"unknown accountant {accountant!r} for a user-level epsilon by group privacy; valid: "
            f"{', '.join(GROUP_ACCOUNTANTS)} (Opacus' PRV has no mixture-of-Gaussians mechanism)"
        )


def _terms(releases: list[Release], k: int) -> tuple[tuple[Term, int], ...]:
    """One entry (term, steps) per (sigma, q, shift rule), sorted: composition ignores order."""
    totals: Counter[Term] = Counter()
    for r in releases:
        totals[(float(r.noise_multiplier), float(r.sample_rate), int(k), SHIFT[r.kind])] += int(r.steps)
    return tuple(sorted(totals.items()))


def mixture(q: float, k: int, shift: str) -> tuple[np.ndarray, np.ndarray]:
    """(shifts, probabilities) of one step for a user of k examples: j ~ Binomial(k, q) of them in
    the batch move the release by j ("sum") or sqrt(j) ("rows"); zero-probability atoms dropped."""
    from scipy import stats

    j = np.arange(k + 1)
    w = stats.binom.pmf(j, k, q)
    keep = w > 0
    s = j.astype(float) if shift == "sum" else np.sqrt(j)
    return s[keep], w[keep]


# ---- pld: dp-accounting's pessimistic PLD of each step's mixture, composed by FFT

def _pld(terms: tuple[tuple[Term, int], ...], delta: float) -> float:
    pld = None
    for term, steps in terms:
        one = step_pld(*term).self_compose(steps)
        pld = one if pld is None else pld.compose(one)
    assert pld is not None
    return float(pld.get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=64)
def step_pld(sigma: float, q: float, k: int, shift: str) -> Any:
    """The PLD (both directions) of one step for a user of k examples: at q = 1 a Gaussian of
    sensitivity k (sum) or sqrt(k) (rows), i.e. noise sigma / sensitivity; otherwise dp-accounting's
    MixtureGaussianPrivacyLoss of the mixture, pessimistic connect-the-dots on crepe's grid."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    shifts, probs = mixture(q, k, shift)
    if len(shifts) == 1:  # q = 1: every example in the batch, one Gaussian
        return pld_lib.from_gaussian_mechanism(
            standard_deviation=sigma / float(shifts[0]), sampling_prob=1.0,
            value_discretization_interval=accounting.PLD_GRID, pessimistic_estimate=True,
        )
    return pld_lib.from_mixture_gaussian_mechanism(
        standard_deviation=sigma, sensitivities=list(shifts), sampling_probs=list(probs),
        value_discretization_interval=accounting.PLD_GRID, pessimistic_estimate=True,
    )


# ---- rdp: the same mixture's Renyi divergence, integrated numerically

def _rdp(terms: tuple[tuple[Term, int], ...], delta: float) -> float:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(steps * step_rdp(*term) for term, steps in terms)
    with warnings.catch_warnings():  # the optimum at the edge of the orders: valid, not tightest
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=64)
def step_rdp(sigma: float, q: float, k: int, shift: str) -> np.ndarray:
    """RDP of one step for a user of k examples at Opacus' default orders (read-only): the larger
    of D_a(P || Q) and D_a(Q || P), P the mixture, Q = N(0, sigma^2)."""
    from opacus.accountants import RDPAccountant

    shifts, probs = mixture(q, k, shift)
    orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    if len(shifts) == 1:  # a Gaussian: a s^2 / (2 sigma^2), the same both ways
        curve = orders * float(shifts[0]) ** 2 / (2 * sigma**2)
    else:
        curve = np.array([max(_renyi(a, sigma, shifts, probs, forward=True),
                              _renyi(a, sigma, shifts, probs, forward=False)) for a in orders])
    curve.setflags(write=False)
    return curve


def _renyi(alpha: float, sigma: float, shifts: np.ndarray, probs: np.ndarray, *, forward: bool) -> float:
    """D_alpha(P || Q) (forward) or D_alpha(Q || P), P = sum_j w_j N(s_j, sigma^2), Q = N(0, sigma^2),
    s_j >= 0 with an atom at 0 (w_0 > 0). Both are log E_Q[exp(b L)] / (alpha - 1) with
    L = log(P/Q) = LSE_j(log w_j + (s_j x - s_j^2 / 2) / sigma^2), b = alpha (forward) or 1 - alpha.

    A Riemann sum on a grid finer than the integrand's narrowest feature (the log-integrand's
    curvature is >= -1/sigma^2 forward, >= -1/sigma^2 - (alpha-1) s_max^2 / (4 sigma^4) backward:
    L'' is a variance of s_j / sigma^2), plus analytic bounds on the tails left out:
    - forward: for x <= 0, L <= 0 (integrand <= Q); for x >= s_max, P <= N(s_max, sigma^2), so
      the integrand is <= C N(alpha s_max, sigma^2), log C = alpha (alpha-1) s_max^2 / (2 sigma^2);
    - backward: exp(-L) <= 1 / w_0 everywhere, so the integrand is <= Q w_0^(1-alpha), and the
      integral is >= 1/2 (x <= 0), which sets how far the grid must reach.
    """
    from scipy import special, stats

    s_max = float(shifts.max())
    log_w = np.log(probs)[:, None]
    if forward:
        b, width = alpha, sigma
        lo, hi = -40.0, alpha * s_max / sigma + 40.0  # in sigma units
        log_tails = [stats.norm.logsf(40.0), alpha * (alpha - 1) * s_max**2 / (2 * sigma**2) + stats.norm.logsf(40.0)]
    else:
        b = 1.0 - alpha
        width = sigma / math.sqrt(1.0 + (alpha - 1) * s_max**2 / (4 * sigma**2))
        excess = (alpha - 1) * -float(log_w[0, 0])  # log of the bound w_0^(1 - alpha)
        reach = math.sqrt(2.0 * (80.0 + excess))
        lo, hi = -reach, s_max / sigma + reach
        log_tails = [math.log(2.0) + stats.norm.logsf(reach) + excess]
    h = width / 20.0
    x = np.arange(lo * sigma, hi * sigma + h, h)  # (points,)
    loss = special.logsumexp(log_w + (np.outer(shifts, x) - 0.5 * shifts[:, None] ** 2) / sigma**2, axis=0)
    log_q = -0.5 * (x / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    log_integral = special.logsumexp(np.concatenate([log_q + b * loss + math.log(h), log_tails]))
    return max(0.0, float(log_integral) / (alpha - 1))
