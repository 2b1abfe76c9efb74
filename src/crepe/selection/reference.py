"""The oracle: a slow, plain NumPy naive greedy for CRAIG facility location.

Builds the full distance matrix of each class (O(n^2) memory: small inputs
only) and re-evaluates every candidate at every step. It sums in the same fixed
order as the C++ engine (see `blocked_sum`), which changes nothing but rounding:
that way exact ties stay exact ties in both, and the lowest-index tie-break
gives the same sequence.

It validates its input like `crepe.select` but counts each class's budget with
its own code (`budgets`), so a fault in the engine's budget rule shows up as
a mismatch instead of being shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crepe.selection.problem import prepare
from crepe.selection.result import Selection, make_selection

BLOCK = 256  # must equal the engine's crepe::kBlock (a test checks)


def blocked_sum(T: np.ndarray) -> np.ndarray:
    """Sum over axis 0: sequentially within blocks of BLOCK rows, then the blocks in order."""
    total = np.zeros(T.shape[1:])
    for lo in range(0, T.shape[0], BLOCK):
        part = np.zeros(T.shape[1:])
        for i in range(lo, min(T.shape[0], lo + BLOCK)):
            part = part + T[i]
        total = total + part
    return total


def distances(Xc: np.ndarray) -> np.ndarray:
    """(n, n) Euclidean distances as float64, computed in Xc's precision
    (float32 or float64): squares summed over dims in order, then sqrt."""
    d2 = np.zeros((Xc.shape[0], Xc.shape[0]), dtype=Xc.dtype)
    for k in range(Xc.shape[1]):
        t = Xc[:, None, k] - Xc[None, :, k]
        d2 = d2 + t * t
    return np.sqrt(d2).astype(np.float64)


def greedy_class(Xc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Naive greedy on one class: (picks, weights, gains, objective)."""
    n = Xc.shape[0]
    dist = distances(Xc)
    D = dist.max()
    sim = D - dist  # s_ij; F(S) = sum_i max_{j in S} s_ij
    # First pick: F({e}) = n D - sum_i d_ie, largest for the medoid.
    colsum = blocked_sum(dist)
    picks = [int(np.argmin(colsum))]  # argmin: lowest index on ties
    gains = [float(n) * D - colsum[picks[0]]]
    cur = dist[:, picks[0]].copy()  # distance to nearest pick
    assign = np.zeros(n, dtype=np.int64)
    selected = np.zeros(n, dtype=bool)
    selected[picks[0]] = True
    for t in range(1, k):
        # gain(e) = sum_i max(0, s_ie - max_{j in S} s_ij) = sum_i max(0, cur_i - d_ie)
        g = blocked_sum(np.maximum(0.0, cur[:, None] - dist))
        g[selected] = -np.inf
        e = int(np.argmax(g))  # argmax: lowest index on ties
        picks.append(e)
        gains.append(float(g[e]))
        closer = dist[:, e] < cur  # strict: ties stay with the earlier pick
        cur[closer] = dist[closer, e]
        assign[closer] = t
        selected[e] = True
    assert np.allclose(cur, D - sim[:, picks].max(axis=1), rtol=0, atol=1e-12 * max(D, 1.0))
    weights = np.bincount(assign, minlength=k).astype(np.int64)
    objective = float(blocked_sum(D - cur))
    return np.array(picks, dtype=np.int64), weights, np.array(gains), objective


def budgets(sizes: np.ndarray, *, fraction: float | None, k: int | None) -> np.ndarray:
    """Picks per class, written out apart from the engine's rule: k for every
    class, or fraction * n_c rounded half up, at least 1, at most n_c."""
    if k is not None:
        return np.full(len(sizes), k, dtype=np.int64)
    assert fraction is not None
    out = []
    for n_c in sizes.tolist():
        share = fraction * n_c
        rounded = int(share) + (1 if share - int(share) >= 0.5 else 0)  # half up; share >= 0
        out.append(min(n_c, max(1, rounded)))
    return np.array(out, dtype=np.int64)


def select_reference(X: Any, y: Any = None, *, fraction: float | None = None, k: int | None = None) -> Selection:
    """Same contract and result as `crepe.select`, computed the slow, obvious way."""
    p = prepare(X, y, fraction, k)  # validation only; the budgets are counted below
    ks = budgets(p.sizes, fraction=fraction, k=k)
    parts = []
    for c in range(len(p.classes)):
        rows = np.flatnonzero(p.cls == c)
        picks, w, g, obj = greedy_class(p.X[rows], int(ks[c]))
        parts.append((rows[picks], w, g, obj))
    return make_selection(
        classes=p.classes,
        sizes=p.sizes,
        budgets=ks,
        indices=np.concatenate([q[0] for q in parts]),
        weights=np.concatenate([q[1] for q in parts]),
        gains=np.concatenate([q[2] for q in parts]),
        objective=np.array([q[3] for q in parts]),
    )
