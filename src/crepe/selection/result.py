"""The result of a selection: a frozen `Selection` (numpy only, no other crepe import)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True, eq=False)
class Selection:
    """A CRAIG coreset: per class, the greedy picks and their weights.

    K is the number of picks over all classes, C the number of classes. Classes
    come in ascending label order, each class's picks in greedy order, so the
    picks of class `classes[c]` are one contiguous run of length
    `np.count_nonzero(labels == classes[c])`. All arrays are read-only numpy
    arrays, also when the input was a torch tensor (CPU or CUDA).

    Attributes:
        indices: (K,) int64 row numbers into X of the picks.
        weights: (K,) int64 CRAIG weight gamma_j of each pick: the number of
            points of its class whose most similar pick it is (ties go to the
            earlier pick); they sum to the class size.
        gains: (K,) float64 marginal gain F(S + j) - F(S) of each pick when it
            was picked; per class they sum to `objective`.
        labels: (K,) label of each pick (the dtype of y; int64 without y).
        classes: (C,) the distinct labels, ascending.
        class_sizes: (C,) int64 points per class.
        objective: (C,) float64 facility-location value F(S_c) of each class.

    `a == b` is True when every array has the same dtype, shape and values.
    A Selection is not hashable (its arrays are not).
    """

    indices: np.ndarray
    weights: np.ndarray
    gains: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    class_sizes: np.ndarray
    objective: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selection):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a.dtype != b.dtype or not np.array_equal(a, b):
                return False
        return True

    # Equal selections must hash equally; arrays do not hash, so neither does this.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Selection({len(self)} picks of {int(self.class_sizes.sum())} points, "
            f"{len(self.classes)} classes, objective {float(self.objective.sum()):.6g})"
        )


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
