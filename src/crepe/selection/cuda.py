"""The CUDA engine: torch glue for crepe._cuda.

Imported only when a selection runs on the GPU, so `import crepe` never loads
torch. The matrix crosses to C++ as a device pointer plus the current stream
of its device (torch's), like faiss does; the extension never links libtorch.
Labels go to the host (class grouping and budgets are host work); the small
outputs come back as NumPy arrays in the same `Selection` as the CPU engine.
The engine's counters are returned beside the Selection (for bench/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crepe.selection.problem import Problem, as_matrix, check_distances_fit, is_torch_tensor, make_problem
from crepe.selection.result import Selection

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


@dataclass(frozen=True)
class CudaStats:
    """Counters of one GPU selection."""

    rounds: int  # lazy-greedy rounds over all classes
    evaluations: int  # candidate re-evaluations after the second pick


def prepare(X: Any, y: Any, fraction: Any, k: Any) -> Problem:
    """Validate a selection for the GPU; the Problem's X is a contiguous CUDA tensor
    on X's device (host X is copied to the current device)."""
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
        check_distances_fit(Xd.amin(0).double().cpu().numpy(), Xd.amax(0).double().cpu().numpy(), name)
        # A strided view is copied here, explicitly, on the device.
        Xd = Xd.contiguous()
    else:
        if is_torch_tensor(y) and y.device.type != "cpu":
            raise ValueError(f"X is on the host but y is on {y.device}; put both on one device")
        Xd = torch.from_numpy(as_matrix(X)).to("cuda")  # explicit host -> device copy
    # Labels go to the host: class grouping and budgets are host work.
    return make_problem(Xd, int(Xd.shape[0]), y, fraction, k)


def run(p: Problem, *, method_id: int, batch: int | None = None) -> tuple[Selection, CudaStats]:
    """Select on the GPU that holds p.X, on torch's current stream of that device."""
    _cuda = cuda_module()
    torch = _torch()
    Xd = p.X
    out = p.outputs()
    stats = np.zeros(2, dtype=np.int64)
    dev = Xd.device
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev)
        _cuda.select_per_class(
            Xd.data_ptr(),
            Xd.dtype == torch.float64,
            int(Xd.shape[0]),
            int(Xd.shape[1]),
            p.cls,
            p.budgets,
            method_id,
            int(batch or _cuda.DEFAULT_BATCH),
            dev.index,
            stream.cuda_stream,
            *out,
            stats,
        )
    return p.selection(*out), CudaStats(rounds=int(stats[0]), evaluations=int(stats[1]))
