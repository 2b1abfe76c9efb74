"""Small training sets as indices into the training data and CRAIG weights gamma, and the
draws that make them: all n, a uniform subset with CRAIG's budgets, a Poisson subset, and CRAIG
on privatised proxies (the methods in smallsets/methods/ call these).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from crepe.config import TrainConfig, check_choice, options
from crepe.selection.problem import class_budget

if TYPE_CHECKING:
    import torch

SCOPES = options()["selection_scope"].choices


@dataclass(frozen=True)
class Coreset:
    indices: np.ndarray  # (k,) int64 rows of the training set
    gamma: np.ndarray  # (k,) int64 CRAIG weights (ones for random/full)


def full_set(n: int) -> Coreset:
    return Coreset(np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64))


def budget_size(cfg: TrainConfig, counts: Sequence[int]) -> int:
    """The size of a set with CRAIG's budgets, from the class counts alone (public under per-class
    scope; global scope needs only n): round(fraction * count) per class, at least 1, or one budget
    over all n."""
    if cfg.selection_scope == "global":
        return class_budget(int(sum(counts)), cfg.fraction)
    return sum(class_budget(int(c), cfg.fraction) for c in counts)


def craig_coreset(
    noisy: torch.Tensor, labels: np.ndarray, *, fraction: float, scope: str, threads: int | None
) -> Coreset:
    """CRAIG on privatised proxies. Per-class scope reads the (public) labels;
    global scope runs one facility location over all points with budget round(f n)."""
    from crepe.selection import select

    check_choice("selection scope", scope, SCOPES)
    y = labels if scope == "per-class" else None
    sel = select(noisy.numpy(), y, fraction=fraction, threads=threads)
    return Coreset(np.array(sel.indices, dtype=np.int64), np.array(sel.weights, dtype=np.int64))


def random_coreset(labels: np.ndarray, *, fraction: float, scope: str, generator: torch.Generator) -> Coreset:
    """A uniform subset with the same budgets as CRAIG; it reads no data beyond the labels."""
    import torch

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
    import torch

    keep = torch.rand(n, generator=generator) < probability  # (n,)
    idx = torch.nonzero(keep).flatten().numpy().astype(np.int64)
    return Coreset(idx, np.ones(len(idx), dtype=np.int64))
