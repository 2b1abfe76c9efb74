"""crepe.select on a CUDA device: torch glue for the crepe._cuda engine.

Imported only when a selection runs on the GPU, so `import crepe` never loads
torch. The matrix crosses to C++ as a device pointer plus the current stream
of its device (torch's), like faiss does; the extension never links libtorch.
Labels go to the host (class grouping and budgets are host work); the small
outputs come back as NumPy arrays in the same `Selection` as the CPU engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crepe._inputs import Problem, as_labels, as_matrix, budgets_for, is_torch_tensor

BUILD_HINT = (
    "crepe was built without its CUDA extension (crepe._cuda). It is built when CMake finds "
    "a CUDA compiler: put nvcc on PATH and reinstall, e.g. "
    "`pip install . -Ccmake.define.CREPE_CUDA=ON` (ON fails loudly if nvcc is missing)"
)


def cuda_module() -> Any:
    """crepe._cuda, or a RuntimeError saying how to build it."""
    try:
        from crepe import _cuda
    except ImportError as e:
        raise RuntimeError(BUILD_HINT) from e
    return _cuda


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise RuntimeError("device='cuda' needs PyTorch with CUDA support (pip install torch)") from e
    return torch


def select_cuda(X: Any, y: Any, *, fraction: Any, k: Any, method_id: int, batch: int | None = None) -> Any:
    """Run the selection on X's CUDA device (or the current one for host X)."""
    from crepe.select import make_selection

    _cuda = cuda_module()
    torch = _torch()
    if not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' but torch sees no CUDA GPU "
            f"(crepe._cuda: {_cuda.runtime_status()}); use device='cpu'"
        )
    if is_torch_tensor(X) and X.device.type == "cuda":
        name = str(X.dtype).removeprefix("torch.")
        if name not in ("float32", "float64"):
            raise TypeError(f"X has dtype torch.{name}; supported: torch.float32, torch.float64")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n points, d dims), got shape {tuple(X.shape)}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"X is empty: shape {tuple(X.shape)}; need at least one point and one dim")
        if is_torch_tensor(y) and y.device != X.device:
            raise ValueError(f"X is on {X.device} but y is on {y.device}; put both on one device")
        Xd = X.detach()
        bad = int((~torch.isfinite(Xd)).sum().item())
        if bad:
            raise ValueError(f"X contains {bad} NaN or Inf values; all entries must be finite")
        # A strided view is copied here, explicitly, on the device.
        Xd = Xd.contiguous()
    else:
        if is_torch_tensor(y) and y.device.type != "cpu":
            raise ValueError(f"X is on the host but y is on {y.device}; put both on one device")
        Xd = torch.from_numpy(as_matrix(X)).to("cuda")  # explicit host -> device copy
    n, d = int(Xd.shape[0]), int(Xd.shape[1])
    labels = np.zeros(n, dtype=np.int64) if y is None else as_labels(y, n)
    classes, cls, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    budgets = budgets_for(sizes, classes, fraction, k)
    # X stays on the device: the Problem carries only what make_selection reads.
    p = Problem(
        X=np.empty((0, d), dtype=np.float32),
        cls=np.ascontiguousarray(cls.reshape(-1), dtype=np.int64),
        classes=classes,
        sizes=sizes.astype(np.int64),
        budgets=budgets,
    )
    total = int(p.budgets.sum())
    idx = np.empty(total, dtype=np.int64)
    w = np.empty(total, dtype=np.int64)
    g = np.empty(total, dtype=np.float64)
    obj = np.empty(len(p.classes), dtype=np.float64)
    stats = np.zeros(2, dtype=np.int64)
    dev = Xd.device
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev)
        _cuda.select_per_class(
            Xd.data_ptr(),
            Xd.dtype == torch.float64,
            n,
            d,
            p.cls,
            p.budgets,
            method_id,
            int(batch or _cuda.DEFAULT_BATCH),
            dev.index,
            stream.cuda_stream,
            idx,
            w,
            g,
            obj,
            stats,
        )
    last_stats["rounds"], last_stats["evaluations"] = int(stats[0]), int(stats[1])
    return make_selection(p, idx, w, g, obj)


# Counters of the most recent GPU selection in this process (for bench/).
last_stats: dict[str, int] = {"rounds": 0, "evaluations": 0}
