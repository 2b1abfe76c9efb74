"""Small training sets: indices into the training data and CRAIG weights gamma.

- full: every example, weight 1;
- random: a uniform subset with CRAIG's per-class (or global) budgets, from a
  generator that reads no data beyond the labels;
- craig: CRAIG on privatised proxies only (nothing computed from clean proxies
  reaches the choice or the weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crepe.config import check_choice, options
from crepe.selection.problem import class_budget

SCOPES = options()["selection_scope"].choices


@dataclass(frozen=True)
class Coreset:
    indices: np.ndarray  # (k,) int64 rows of the training set
    gamma: np.ndarray  # (k,) int64 CRAIG weights (ones for random/full)


def full_set(n: int) -> Coreset:
    return Coreset(np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64))


def set_size(labels: np.ndarray, *, method: str, fraction: float, scope: str) -> int:
    """|S| before any selection runs (public: class sizes are public under per-class scope)."""
    if method in ("full", "private-set"):  # private-set: generation samples all n
        return len(labels)
    if scope == "global":
        return class_budget(len(labels), fraction)
    return sum(class_budget(int(c), fraction) for c in np.unique(labels, return_counts=True)[1])


def craig_coreset(
    noisy: torch.Tensor, labels: np.ndarray, *, fraction: float, scope: str, threads: int | None
) -> Coreset:
    """CRAIG on privatised proxies. Per-class scope reads the (public) labels;
    global scope runs one facility location over all points with budget round(f n)."""
    import crepe

    check_choice("selection scope", scope, SCOPES)
    y = labels if scope == "per-class" else None
    sel = crepe.select(noisy.numpy(), y, fraction=fraction, threads=threads)
    return Coreset(np.array(sel.indices, dtype=np.int64), np.array(sel.weights, dtype=np.int64))


def random_coreset(labels: np.ndarray, *, fraction: float, scope: str, generator: torch.Generator) -> Coreset:
    """A uniform subset with the same budgets as CRAIG; it reads no data beyond the labels."""
    check_choice("selection scope", scope, SCOPES)
    groups = [np.arange(len(labels))] if scope == "global" else [
        np.flatnonzero(labels == c) for c in np.unique(labels)
    ]
    picks = []
    for g in groups:
        k = class_budget(len(g), fraction)
        perm = torch.randperm(len(g), generator=generator).numpy()
        picks.append(g[perm[:k]])
    idx = np.concatenate(picks).astype(np.int64)
    return Coreset(idx, np.ones(len(idx), dtype=np.int64))
