"""Stochastic greedy for one class (Mirzasoleiman et al., AAAI 2015, "Lazier than lazy greedy").

Each of the k steps draws s = ceil((n / k) ln(1 / epsilon)) candidates
uniformly without replacement from the points not yet picked (all of them when
fewer remain), evaluates their exact marginal gains and picks the best (lowest
index on ties). In expectation F(S) >= (1 - 1/e - epsilon) OPT. With s >= n
every step sees every candidate: this is the exact greedy.

Gains are evaluated lazily within the sample: each point keeps the last gain
computed for it, an upper bound on its gain now (submodularity: gains only
shrink), and the sample is evaluated best bound first, in blocks of CHUNK, until
no bound left can reach the best gain found. The pick is the one a full
evaluation of the sample would make. Cost: s k = n ln(1/epsilon) draws, each
first evaluation O(n d); since the draws reach about (1 - epsilon) of all n
points, it is about (1 - epsilon) n^2 d, the same order as the exact engine's
first two passes, and computed here in numpy (float64 blocks), not SIMD C++.

numpy only; the randomness is a numpy Generator the caller seeds (post-processing
of noised proxies: it needs no secrecy, docs/scale.md).
"""

from __future__ import annotations

import math

import numpy as np

from crepe.selection.trace import CHUNK, block_distances, widen


def sample_size(n: int, k: int, epsilon: float) -> int:
    """s = ceil((n / k) ln(1 / epsilon)), at least 1, at most n."""
    return min(n, max(1, math.ceil(n / k * math.log(1.0 / epsilon))))


def stochastic_greedy(
    Xc: np.ndarray, k: int, *, epsilon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """k picks of one class (within-class indices, greedy order).

    Returns (picks, gains, cur, assign): gains[t] the marginal gain of pick t,
    except gains[0] = -colsum(picks[0]) (F({p_0}) = n D + gains[0] needs the
    class's D, which the caller has: trace.diameter); cur[i] the distance of
    point i to its nearest pick; assign[i] that pick's position (the earliest
    on ties).
    """
    X64, sq = widen(Xc)
    n = X64.shape[0]
    s = sample_size(n, k, epsilon)
    remaining = np.arange(n)  # unpicked points, in the first n - t slots
    slot = np.arange(n)  # slot[e]: where e sits in remaining
    bound = np.full(n, np.inf)  # last computed gain: an upper bound from step 1 on
    cur = np.full(n, np.inf)
    assign = np.zeros(n, dtype=np.int64)
    picks = np.empty(k, dtype=np.int64)
    gains = np.empty(k)
    for t in range(k):
        left = n - t
        sample = remaining[:left] if s >= left else remaining[:left][rng.choice(left, size=s, replace=False)]
        if t == 0:  # F({e}) = n D - colsum(e): the best is the smallest column sum
            score = np.concatenate([
                -block_distances(X64, sq, sample[lo : lo + CHUNK]).sum(axis=0)
                for lo in range(0, len(sample), CHUNK)
            ])  # fmt: skip
            best, gains[t] = _best(sample, score)
        else:
            best, gains[t] = _lazy_best(X64, sq, cur, bound, sample)
        picks[t] = best
        col = block_distances(X64, sq, np.array([best]))[:, 0]
        closer = col < cur  # strict: ties stay with the earlier pick
        cur[closer] = col[closer]
        assign[closer] = t
        last = remaining[left - 1]  # swap the pick out of the unpicked slots
        remaining[slot[best]], slot[last] = last, slot[best]
        remaining[left - 1], slot[best] = best, left - 1
    return picks, gains, cur, assign


def _best(cands: np.ndarray, score: np.ndarray) -> tuple[int, float]:
    """The candidate of highest score (the lowest index among equals) and its score."""
    top = score.max()
    return int(cands[score == top].min()), float(top)


def _lazy_best(
    X64: np.ndarray, sq: np.ndarray, cur: np.ndarray, bound: np.ndarray, sample: np.ndarray
) -> tuple[int, float]:
    """The sample's best exact gain sum_i max(0, cur_i - d_ie), evaluating
    best bound first and stopping once no remaining bound can reach it."""
    order = sample[np.lexsort((sample, -bound[sample]))]  # bound descending, index ascending
    best_e, best_g = -1, -np.inf
    for lo in range(0, len(order), CHUNK):
        if bound[order[lo]] < best_g:  # the rest cannot even tie
            break
        block = order[lo : lo + CHUNK]
        g = np.maximum(cur[:, None] - block_distances(X64, sq, block), 0.0).sum(axis=0)
        bound[block] = g
        top = g.max()
        if top > best_g or (top == best_g and int(block[g == top].min()) < best_e):
            best_e, best_g = int(block[g == top].min()), float(top)
    return best_e, best_g
