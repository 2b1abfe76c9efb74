"""Small training sets: indices into the training data and CRAIG weights gamma.

- full: every example, weight 1;
- random: drawn from a secret generator, independently of the data: by default
  Poisson selection (each example with probability --fraction; reads nothing,
  not even the labels), or a fixed-size draw with CRAIG's per-class (or global)
  budgets (reads the labels);
- craig: CRAIG on privatised proxies only (nothing computed from clean proxies
  reaches the choice or the weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crepe.config import TrainConfig, check_choice, options
from crepe.selection.problem import class_budget

SCOPES = options()["selection_scope"].choices


@dataclass(frozen=True)
class Coreset:
    indices: np.ndarray  # (k,) int64 rows of the training set
    gamma: np.ndarray  # (k,) int64 CRAIG weights (ones for random/full)


def full_set(n: int) -> Coreset:
    return Coreset(np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64))


def set_size(labels: np.ndarray, cfg: TrainConfig) -> float:
    """The public size |S| of the set, known before any selection runs, that the sample rate q = B/|S|
    comes from: CRAIG's budgets (class sizes are public under per-class scope), all n, or for a Poisson
    subset its expected size fraction * n (never the realised one: docs/privacy.md)."""
    if cfg.method in ("full", "private-set"):  # private-set: generation samples all n
        return len(labels)
    if cfg.poisson_draw:
        return cfg.fraction * len(labels)
    if cfg.selection_scope == "global":
        return class_budget(len(labels), cfg.fraction)
    return sum(class_budget(int(c), cfg.fraction) for c in np.unique(labels, return_counts=True)[1])


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


def poisson_subset(n: int, *, probability: float, generator: torch.Generator) -> Coreset:
    """Each of the n examples independently with `probability` (reads no data)."""
    keep = torch.rand(n, generator=generator) < probability  # (n,)
    idx = torch.nonzero(keep).flatten().numpy().astype(np.int64)
    return Coreset(idx, np.ones(len(idx), dtype=np.int64))
