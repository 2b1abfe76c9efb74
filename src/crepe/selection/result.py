"""The result of a selection: a frozen `Selection` (numpy only, no other crepe import)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    """A coreset: per class, the greedy picks and their CRAIG weights.

    All arrays are read-only. Classes come in ascending label order, and each
    class's picks in greedy order.
    """

    indices: np.ndarray  # (K,) int64, row numbers into X
    weights: np.ndarray  # (K,) int64, gamma_j = points whose nearest pick is j; sum = class size
    gains: np.ndarray  # (K,) float64, marginal gain F(S + j) - F(S) at pick time
    labels: np.ndarray  # (K,) label of each pick
    classes: np.ndarray  # (C,) distinct labels, ascending
    class_sizes: np.ndarray  # (C,) int64 points per class
    objective: np.ndarray  # (C,) float64, F(S_c) for each class

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def make_selection(
    *,
    classes: np.ndarray,
    sizes: np.ndarray,
    budgets: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
    gains: np.ndarray,
    objective: np.ndarray,
) -> Selection:
    """A read-only Selection from per-class outputs (classes ascending, `budgets` picks each)."""
    return Selection(
        indices=_frozen(indices),
        weights=_frozen(weights),
        gains=_frozen(gains),
        labels=_frozen(np.repeat(classes, budgets)),
        classes=_frozen(classes.copy()),
        class_sizes=_frozen(sizes.copy()),
        objective=_frozen(objective),
    )
