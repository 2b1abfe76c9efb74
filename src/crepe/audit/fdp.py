"""The f-DP conversion of a one-run audit: Mahloujifar, Melis & Chaudhuri, "Auditing f-Differential
Privacy in One Run" (ICML 2025, arXiv 2410.22235), their test with abstentions, written from its
statement as the authors' public code states it (facebookresearch/PrivacyGuard, `FDPAnalysisNode`;
google-deepmind/jax_privacy, `auditing.py`): read, not copied.

The game is bound.py's: m canaries, each included with probability 1/2; r guesses, v right
(W = the number right). The hypothesis is that the mechanism is f-DP with respect to each canary's
inclusion, for a tradeoff curve f; write fbar(x) = 1 - f(x) (the most power a test of size x has)
and g = fbar^-1. Per canary (m of them) let, for i = 0..v,

    r_i = E[#right guesses * 1{W >= i}] / m,    h_i = E[#wrong guesses * 1{W >= i}] / m.

Two facts tie them: (1) flipping canary j's secret turns "guess j right and W >= i" into "guess j
wrong and W >= i - 1" on the same outputs, so f-DP (averaged over j; g is convex) gives
h_{i-1} >= g(r_i), and h_{i-1} >= h_i; (2) exactly, r_{i-1} - r_i = (i-1) P[W = i-1] / m and
h_{i-1} - h_i = (r-i+1) P[W = i-1] / m. If P[W >= v] >= tau, then r_v >= tau v/m, and the test
starts from (r_v, h_v) = (tau v/m, tau (r-v)/m) and takes the least h allowed at each step:

    h_{i-1} = max(h_i, g(r_i)),    r_{i-1} = r_i + (i-1)/(r-i+1) (h_{i-1} - h_i),    i = v..1.

But r_0 + h_0 = E[#guesses] / m = r/m exactly; so if the least values already exceed it,
P[W >= v] >= tau is impossible under f-DP: the observation rejects f at confidence 1 - tau.
The total r_i + h_i only grows as i falls (each step adds r/(r-i+1) times the rise in h), and the
steps are monotone in g, so: the test stops as soon as the total passes r/m (rejected) or h stops
rising (nothing changes after), and a curve below a rejected one is rejected too.

For a pure eps-DP curve this is within ~1% of the binomial tail that bound.py uses and equals it
when every guess is right (tests/test_audit.py). It is tighter than bound.py when the curve is
a Gaussian one, G_mu(x) = Phi(Phi^-1(1 - x) - mu) (mu-GDP, g(y) = Phi(Phi^-1(y) - mu)), because
that curve is far from (eps, delta)'s two straight lines where an audit sees it: `mu_lower_bound`
is the largest mu that v right of r rejects, and `epsilon_lower_bound` converts it to the eps
of mu-GDP at delta. That eps bounds the mechanism's own only if its tradeoff curve is Gaussian
(docs/privacy.md section 12 says when DP-SGD's is close to one, and when not).

Pure Python and math (statistics.NormalDist for Phi and its inverse): no scipy at import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

from crepe.audit.bound import BISECTION_STEPS, check_counts

_PHI = NormalDist()
MU_MAX = 40.0  # mu-GDP at mu = 40 is eps ~ 800 at delta = 1e-5: far past any audit's ceiling


def rejects(inverse: Callable[[float], float], *, m: int, r: int, v: int, beta: float) -> bool:
    """True if v right of r guesses about m canaries rejects, at confidence 1 - beta, that the
    mechanism is f-DP, f given by `inverse` = (1 - f)^-1 (increasing, convex, [0, 1] -> [0, 1])."""
    check_counts(m, r, v, 0.0)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta (1 - confidence) must lie in (0, 1), got {beta}")
    total = r / m  # r_0 + h_0: what the least values must not exceed
    right, wrong = beta * v / m, beta * (r - v) / m  # (r_v, h_v)
    for i in range(v, 0, -1):  # step i: (r_i, h_i) -> (r_{i-1}, h_{i-1})
        rise = inverse(right) - wrong
        if rise <= 0:  # h does not rise: neither moves again
            break
        right += (i - 1) / (r - i + 1) * rise
        wrong += rise
        if right + wrong > total:  # the total never falls: rejected already
            return True
    return right + wrong > total


def gaussian_inverse(mu: float) -> Callable[[float], float]:
    """(1 - G_mu)^-1 (y) = Phi(Phi^-1(y) - mu): the inverse of mu-GDP's most power at size y."""
    def inverse(y: float) -> float:
        if y <= 0.0:
            return 0.0
        if y >= 1.0:
            return 1.0
        return _PHI.cdf(_PHI.inv_cdf(y) - mu)
    return inverse


def mu_lower_bound(*, m: int, r: int, v: int, beta: float = 0.05) -> float:
    """The largest mu whose mu-GDP v right of r guesses (m canaries) rejects at confidence 1 - beta
    (every smaller mu is rejected too); 0.0 if none is."""
    check_counts(m, r, v, 0.0)
    if r == 0 or not rejects(gaussian_inverse(0.0), m=m, r=r, v=v, beta=beta):
        return 0.0
    lo, hi = 0.0, MU_MAX
    if rejects(gaussian_inverse(hi), m=m, r=r, v=v, beta=beta):
        raise ValueError(f"mu-GDP is rejected up to mu = {MU_MAX} by m={m}, r={r}, v={v}: not an audit count")
    for _ in range(BISECTION_STEPS):  # invariant: lo rejected, hi not
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejects(gaussian_inverse(mid), m=m, r=r, v=v, beta=beta) else (lo, mid)
    return lo


def _log_phi(x: float) -> float:
    """log Phi(x), accurate far into the lower tail (erfc, not 1 - erf)."""
    value = 0.5 * math.erfc(-x / math.sqrt(2.0))
    if value > 0.0:
        return math.log(value)
    return -x * x / 2 - math.log(-x) - 0.5 * math.log(2 * math.pi)  # Mills ratio, x < -38


def gaussian_delta(mu: float, eps: float) -> float:
    """delta(eps) of mu-GDP (Dong, Roth & Su 2022, Corollary 2.13):
    Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    if mu <= 0.0:
        return 0.0
    first = math.exp(_log_phi(-eps / mu + mu / 2))
    second = math.exp(eps + _log_phi(-eps / mu - mu / 2))
    return max(0.0, first - second)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The eps of mu-GDP at delta (the least eps with delta(eps) <= delta); 0.0 if delta(0) <= delta."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1) for mu-GDP's epsilon, got {delta}")
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(mu, hi) > delta:  # delta(eps) falls to 0 as eps grows: this ends
        lo, hi = hi, 2 * hi
    for _ in range(BISECTION_STEPS):  # invariant: delta(lo) > delta >= delta(hi)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mu, mid) > delta else (lo, mid)
    return hi


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """The eps at delta of the largest mu-GDP that the count rejects: a lower bound on the
    mechanism's eps at confidence 1 - beta if its tradeoff curve is Gaussian."""
    return gaussian_epsilon(mu_lower_bound(m=m, r=r, v=v, beta=beta), delta)


def ceiling(*, m: int, r: int, delta: float, beta: float = 0.05) -> float:
    """The most this conversion can show from r guesses: every guess right."""
    return epsilon_lower_bound(m=m, r=r, v=r, delta=delta, beta=beta)
