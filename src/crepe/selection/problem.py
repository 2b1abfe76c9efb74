"""A validated selection problem and the one budget rule (numpy only).

Both engines (cpu, cuda) consume the same `Problem`; only where X lives
differs. The oracle (reference) validates through here too, but counts its
budgets with its own code, so a fault in `class_budget` shows up as a mismatch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from crepe.selection.result import Selection, make_selection

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Problem:
    """A validated selection problem: what the engines and the oracle consume."""

    # (n, d) float32 or float64, C-contiguous, finite: a numpy array, or for the
    # CUDA engine a torch tensor on the GPU (it never comes to the host).
    X: Any
    cls: np.ndarray  # (n,) int64 class id in [0, C): position of the label in `classes`
    classes: np.ndarray  # (C,) sorted distinct labels
    sizes: np.ndarray  # (C,) int64 points per class
    budgets: np.ndarray  # (C,) int64 picks per class, 1 <= budget <= size

    def outputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Empty (indices, weights, gains, objective) arrays for an engine to fill."""
        total = int(self.budgets.sum())
        return (
            np.empty(total, dtype=np.int64),
            np.empty(total, dtype=np.int64),
            np.empty(total, dtype=np.float64),
            np.empty(len(self.classes), dtype=np.float64),
        )

    def selection(self, indices: np.ndarray, weights: np.ndarray, gains: np.ndarray, objective: np.ndarray) -> Selection:
        """The read-only Selection of filled `outputs()`."""
        return make_selection(
            classes=self.classes, sizes=self.sizes, budgets=self.budgets,
            indices=indices, weights=weights, gains=gains, objective=objective,
        )  # fmt: skip


def class_budget(n_c: int, fraction: float) -> int:
    """Picks for a class of n_c points: k_c = max(1, floor(fraction * n_c + 0.5)), at most n_c."""
    return min(n_c, max(1, math.floor(fraction * n_c + 0.5)))


def is_torch_tensor(obj: Any) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "detach")


def as_matrix(X: Any) -> np.ndarray:
    """(n, d) finite float32/float64 C-contiguous array; a CPU tensor shares memory."""
    if is_torch_tensor(X):
        if X.device.type != "cpu":
            raise ValueError(f"X is on device {X.device}; this path takes CPU data")
        name = str(X.dtype).removeprefix("torch.")
        if name not in ("float32", "float64"):
            raise TypeError(f"X has dtype torch.{name}; supported: torch.float32, torch.float64")
        X = X.detach().numpy()
    elif not isinstance(X, np.ndarray):
        raise TypeError(
            f"X must be a numpy array or a torch tensor, got {type(X).__name__}"
        )
    if X.dtype not in FLOAT_DTYPES:
        raise TypeError(f"X has dtype {X.dtype}; supported: float32, float64")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n points, d dims), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X is empty: shape {X.shape}; need at least one point and one dim")
    if not np.isfinite(X).all():
        bad = int(np.count_nonzero(~np.isfinite(X)))
        raise ValueError(f"X contains {bad} NaN or Inf values; all entries must be finite")
    check_distances_fit(X.min(axis=0), X.max(axis=0), X.dtype.name)
    # A strided view is copied here, explicitly; the engine reads C order only.
    return np.ascontiguousarray(X)


def check_distances_fit(lo: np.ndarray, hi: np.ndarray, dtype: str) -> None:
    """Raises ValueError if squared distances between points whose coordinates
    lie in [lo, hi] (per dimension) could overflow `dtype`, the precision the
    engines compute them in: they would turn into inf, and gains into NaN."""
    with np.errstate(over="ignore"):
        span = hi.astype(np.float64) - lo.astype(np.float64)
        worst = float(np.sum(span * span))
    largest = float(np.finfo(dtype).max)
    if not worst <= largest / 2:
        raise ValueError(
            f"X spans up to {float(span.max()):.3g} in one dimension: squared distances up to "
            f"{worst:.3g} would overflow {dtype} (largest {largest:.3g}); rescale X, or pass float64"
        )


def as_labels(y: Any, n: int) -> np.ndarray:
    """(n,) integer label array."""
    if is_torch_tensor(y):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match X, got {y.shape}")
    return y


def budgets_for(sizes: np.ndarray, classes: np.ndarray, fraction: Any, k: Any) -> np.ndarray:
    """(C,) int64 picks per class: `class_budget` of each size, or k for every class."""
    if (fraction is None) == (k is None):
        raise ValueError("give exactly one of fraction= (share of each class) or k= (picks per class)")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise TypeError(f"fraction must be a real number in (0, 1], got {fraction!r}")
        f = float(fraction)
        if not (0.0 < f <= 1.0):  # also rejects NaN
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        return np.array([class_budget(int(s), f) for s in sizes], dtype=np.int64)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    too_small = [(c, s) for c, s in zip(classes.tolist(), sizes.tolist()) if s < k]
    if too_small:
        c, s = too_small[0]
        raise ValueError(
            f"k={k} is larger than class {c!r}, which has {s} points "
            f"({len(too_small)} class(es) smaller than k); use fraction= or a smaller k"
        )
    return np.full(len(sizes), int(k), dtype=np.int64)


def make_problem(X: Any, n: int, y: Any, fraction: Any, k: Any) -> Problem:
    """The Problem for an already validated (n, d) matrix X (host or device) and raw y."""
    labels = np.zeros(n, dtype=np.int64) if y is None else as_labels(y, n)
    classes, cls, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return Problem(
        X=X,
        cls=np.ascontiguousarray(cls.reshape(-1), dtype=np.int64),
        classes=classes,
        sizes=sizes.astype(np.int64),
        budgets=budgets_for(sizes, classes, fraction, k),
    )


def prepare(X: Any, y: Any, fraction: Any, k: Any) -> Problem:
    """Validate a host selection; raise ValueError/TypeError naming the problem."""
    Xn = as_matrix(X)
    return make_problem(Xn, Xn.shape[0], y, fraction, k)
