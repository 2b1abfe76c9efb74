"""crepe.select: CRAIG per-class facility location, maximised by greedy, in C++."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from crepe._inputs import Problem, is_torch_tensor, prepare

Method = Literal["lazy", "naive"]
METHODS: dict[str, int] = {"naive": 0, "lazy": 1}
Device = Literal["cpu", "cuda"]
DEVICES = ("cpu", "cuda")


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


def make_selection(p: Problem, idx: np.ndarray, w: np.ndarray, g: np.ndarray, obj: np.ndarray) -> Selection:
    """Assemble a read-only Selection from per-class outputs (classes ascending)."""
    return Selection(
        indices=_frozen(idx),
        weights=_frozen(w),
        gains=_frozen(g),
        labels=_frozen(np.repeat(p.classes, p.budgets)),
        classes=_frozen(p.classes.copy()),
        class_sizes=_frozen(p.sizes.copy()),
        objective=_frozen(obj),
    )


def select(
    X: Any,
    y: Any = None,
    *,
    fraction: float | None = None,
    k: int | None = None,
    method: Method = "lazy",
    threads: int | None = None,
    device: Device | None = None,
) -> Selection:
    """Select a CRAIG coreset: per-class facility location, greedy.

    Args:
        X: (n, d) float32 or float64 numpy array or CPU torch tensor of
            per-example gradient proxies. A C-contiguous input is read in place;
            other layouts are copied once. NaN/Inf are rejected.
        y: optional (n,) integer labels. Classes are solved independently; None
            means one class.
        fraction: share of each class to pick: k_c = max(1, floor(f * n_c + 0.5)),
            at most n_c. Exactly one of fraction and k.
        k: picks per class (every class must have at least k points).
        method: "lazy" (fast) or "naive" (re-evaluates every candidate at every
            step; for verification). Both return the same picks.
        threads: OpenMP threads (default: OMP_NUM_THREADS or all cores). Results
            do not depend on it. CPU engine only.
        device: where to compute. None: where X lives (a CUDA tensor runs on
            its GPU, on torch's current stream, without a copy to the host).
            "cpu" copies a CUDA X to the host first; "cuda" moves host X to the
            current GPU (needs torch with CUDA and crepe built with its CUDA
            extension). On a GPU, a torch y must be on X's device. Both engines
            return the same Selection, bitwise.

    Within a class, distances are Euclidean, similarity is s_ij = D_c - d_ij
    with D_c the largest distance in the class, and F(S) = sum_i max_{j in S}
    s_ij. Among equal gains the lowest row index (within the class) is picked;
    a point equally near to two picks counts toward the earlier one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {sorted(METHODS)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if device is not None and device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {list(DEVICES)} or None (where X lives)")
    on_cuda = is_torch_tensor(X) and X.device.type == "cuda"
    if (device or ("cuda" if on_cuda else "cpu")) == "cuda":
        from crepe._gpu import select_cuda

        return select_cuda(X, y, fraction=fraction, k=k, method_id=METHODS[method])
    if on_cuda:
        X = X.detach().cpu()  # device="cpu": an explicit copy to the host

    from crepe import _core

    p = prepare(X, y, fraction, k)
    total = int(p.budgets.sum())
    idx = np.empty(total, dtype=np.int64)
    w = np.empty(total, dtype=np.int64)
    g = np.empty(total, dtype=np.float64)
    obj = np.empty(len(p.classes), dtype=np.float64)
    _core.select_per_class(p.X, p.cls, p.budgets, METHODS[method], threads or 0, idx, w, g, obj)
    return make_selection(p, idx, w, g, obj)
