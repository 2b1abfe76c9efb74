"""The one-run audit bound of Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run" (NeurIPS 2023, arXiv 2305.08846), written from its statement.

The game: m canaries, each included independently with probability 1/2 (S_i in {-1, +1}, secret).
After training, an auditor makes r guesses T_i in {-1, +1} (abstaining on the other m - r) and
v of them are right. If the mechanism is (eps, delta)-DP with respect to each canary's inclusion,
the number of correct guesses W satisfies, for every v (their main theorem for approximate DP):

    P[W >= v] <= f(v) + 2 m delta max_{i = 1..v} (f(v - i) - f(v)) / i,
    f(k) = P[Binomial(r, q) >= k],  q = e^eps / (1 + e^eps)

(q is the accuracy of eps-DP randomised response; with delta = 0 the bound is the binomial tail
alone). The right side is the p-value of the observation "v correct" under the null hypothesis
"the mechanism is (eps, delta)-DP". `epsilon_lower_bound` returns the largest eps that the
observed count rejects at confidence 1 - beta: every eps below it has p-value <= beta.

Pure numpy and math: the binomial probabilities are computed in log space from lgamma, so that
r in the thousands and eps up to ~30 neither underflow nor overflow before they are summed.
"""

from __future__ import annotations

import math

import numpy as np

BISECTION_STEPS = 60  # the bracket shrinks to 2^-60 of its width: far below any figure printed


def check_counts(m: int, r: int, v: int, delta: float) -> None:
    """ValueError unless 0 <= v <= r <= m are integers and delta lies in [0, 1]."""
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got m={m}, r={r}, v={v}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must lie in [0, 1], got {delta}")


def binomial_pmf(r: int, eps: float) -> np.ndarray:
    """(r + 1,) P[Binomial(r, q) = k] for k = 0..r, q = e^eps / (1 + e^eps)."""
    k = np.arange(r + 1, dtype=np.float64)
    log_q = -math.log1p(math.exp(-eps))  # log q, stable for large eps
    log_1mq = -eps - math.log1p(math.exp(-eps))  # log(1 - q) = log q - eps
    log_choose = math.lgamma(r + 1) - np.array([math.lgamma(x + 1) + math.lgamma(r - x + 1) for x in k])
    return np.exp(log_choose + k * log_q + (r - k) * log_1mq)


def p_value(*, m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The bound above on P[at least v of r guesses correct] under (eps, delta)-DP, at most 1."""
    check_counts(m, r, v, delta)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    pmf = binomial_pmf(r, eps)
    tail = float(pmf[v:].sum())  # f(v)
    if v == 0 or delta == 0:
        return min(1.0, tail)
    # f(v - i) - f(v) = P[v - i <= Binomial < v]: the pmf summed from v - 1 down to v - i
    below = np.cumsum(pmf[:v][::-1])  # i = 1..v
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """The largest eps that v correct of r guesses (m canaries) rejects at confidence 1 - beta:
    the mechanism is not (eps', delta)-DP for any eps' below it, except with probability beta.
    0.0 when the count rejects nothing (p-value above beta already at eps = 0)."""
    check_counts(m, r, v, delta)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta (1 - confidence) must lie in (0, 1), got {beta}")

    def rejected(eps: float) -> bool:
        return p_value(m=m, r=r, v=v, eps=eps, delta=delta) <= beta

    if r == 0 or not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):  # the p-value tends to 1 as eps grows (q -> 1): this ends
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            raise ValueError(f"no eps up to {hi:g} is consistent with m={m}, r={r}, v={v}, delta={delta}")
    for _ in range(BISECTION_STEPS):  # invariant: rejected(lo), not rejected(hi)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def ceiling(*, m: int, r: int, delta: float, beta: float = 0.05) -> float:
    """The most an audit of r guesses can show: epsilon_lower_bound with every guess right."""
    return epsilon_lower_bound(m=m, r=r, v=r, delta=delta, beta=beta)


def guess(scores: np.ndarray, guesses: int) -> np.ndarray:
    """(m,) in {-1, 0, +1}: +1 ("included") for the ceil(r/2) highest scores, -1 ("excluded") for the
    floor(r/2) lowest, 0 (abstain) for the middle. Ties go to the lower index (a stable sort)."""
    scores = np.asarray(scores, dtype=np.float64)
    m = len(scores)
    if not 1 <= guesses <= m:
        raise ValueError(f"guesses must lie in 1..{m} (the number of canaries), got {guesses}")
    order = np.argsort(-scores, kind="stable")  # highest first
    plus, minus = -(-guesses // 2), guesses // 2
    t = np.zeros(m, dtype=np.int8)
    t[order[:plus]] = 1
    t[order[m - minus:]] = -1
    return t
