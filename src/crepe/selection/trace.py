"""Facility location of a given pick sequence, outside the exact engine (numpy only).

The approximate engines (stochastic, sharded) choose picks by other means but
report the same quantities as the exact engine: the class's D (largest
distance), each pick's marginal gain, the nearest-pick assignment that the
weights count, and F(S). These helpers compute them for any sequence of picks.

Distances here are float64 (X is widened once), through the expansion
|x|^2 + |p|^2 - 2 x.p where that is cheaper (n x m blocks), so they agree with
the engine's (float32 or float64, canonical order) to rounding, not bit for
bit: a point equally near two picks may be assigned differently. Only `diameter`
calls the exact engine (one pick: the medoid and D, O(n d^2) plus its pruned
candidates, 0.5 s for 200,000 points here).
"""

from __future__ import annotations

import numpy as np

CHUNK = 64  # picks (or candidates) per n x CHUNK block of float64 distances


def widen(Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X as float64, centred, and its squared row norms): what the block
    distances read. Centring keeps |x|^2 small, and with it the expansion's
    cancellation error (about 1e-16 |x|^2 in d^2); the centre is rounded to
    integers so that integer points stay integers and their squared
    distances, hence their ties, stay exact."""
    X64 = np.asarray(Xc, dtype=np.float64)
    X64 = np.ascontiguousarray(X64 - np.round(X64.mean(axis=0)))
    return X64, np.einsum("ij,ij->i", X64, X64)


def block_distances(X64: np.ndarray, sq: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, len(cols)) float64 Euclidean distances of every point to the points `cols`."""
    d2 = sq[:, None] + sq[cols][None, :] - 2.0 * (X64 @ X64[cols].T)
    np.maximum(d2, 0.0, out=d2)  # the expansion can round a tiny square below zero
    d2[cols, np.arange(len(cols))] = 0.0  # d(x, x) = 0 exactly (the expansion leaves ~1e-8 |x|)
    return np.sqrt(d2, out=d2)


def column_sum(Xc: np.ndarray, e: int) -> float:
    """sum_i d(x_i, x_e), with distances in X's precision as the engine computes them."""
    diff = Xc - Xc[e]
    d2 = np.zeros(Xc.shape[0], dtype=Xc.dtype)
    for k in range(Xc.shape[1]):  # squares summed over dims in order, as the contract says
        d2 += diff[:, k] * diff[:, k]
    return float(np.sqrt(d2).astype(np.float64).sum())


def diameter(Xc: np.ndarray, *, threads: int | None) -> float:
    """D of one class (largest pairwise distance), from the exact engine's one-pick run.

    That run returns F({medoid}) = n D - colsum(medoid); adding the column sum
    back gives D to rounding (the column sum's, about 1e-16 relative)."""
    from crepe.selection import cpu
    from crepe.selection.problem import prepare

    one = cpu.run(prepare(Xc, None, None, 1), method_id=1, threads=threads)
    n = Xc.shape[0]
    return (float(one.objective[0]) + column_sum(Xc, int(one.indices[0]))) / n


def trace(Xc: np.ndarray, picks: np.ndarray, D: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The facility location of `picks` (within-class indices) taken in order.

    Returns (gains, cur, assign, objective): gains[t] = F(S_t+1) - F(S_t) with
    F({p_0}) = n D - colsum(p_0); cur[i] the distance of point i to its nearest
    pick; assign[i] the position of that pick (the earliest on ties); objective
    F(S) = sum_i (D - cur_i). O(n len(picks) d) time, O(n CHUNK) memory.
    """
    X64, sq = widen(Xc)
    n = X64.shape[0]
    cur = np.full(n, np.inf)
    assign = np.zeros(n, dtype=np.int64)
    gains = np.empty(len(picks))
    for lo in range(0, len(picks), CHUNK):
        block = block_distances(X64, sq, picks[lo : lo + CHUNK])
        for j in range(block.shape[1]):
            t = lo + j
            col = block[:, j]
            closer = col < cur  # strict: ties stay with the earlier pick
            if t == 0:
                gains[t] = n * D - float(col.sum())
            else:
                gains[t] = float((cur[closer] - col[closer]).sum())
            cur[closer] = col[closer]
            assign[closer] = t
    return gains, cur, assign, float((D - cur).sum())
