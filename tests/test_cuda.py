"""The CUDA engine (crepe._cuda) against the CPU engine and the NumPy oracle.

Tests marked `cuda` need an NVIDIA GPU, torch with CUDA and the extension; they
skip cleanly otherwise. The device computes the same numbers as the CPU engine
(same precision per dtype, no FMA, same summation order), so parity is exact:
indices, weights, gains and objective compare bitwise. The unmarked tests run
anywhere: the build check (when nvcc is on PATH) and the clean errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import crepe
from crepe.selection.reference import select_reference
from test_select import assert_same

REPO = Path(__file__).resolve().parents[1]


def _cuda_module():
    try:
        from crepe import _cuda
    except ImportError:
        return None
    return _cuda


def _gpu_ready() -> bool:
    if _cuda_module() is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


GPU = _gpu_ready()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU, torch with CUDA and crepe._cuda")
# Until a GPU run verifies the CUDA path, using it warns (tested below); here that is expected.
pytestmark = pytest.mark.filterwarnings("ignore::crepe.selection.UnverifiedCUDAWarning")


def cases(seed: int, count: int):
    """Seeded inputs: sizes, dims, classes, both dtypes, duplicates and exact ties."""
    rng = np.random.default_rng(seed)
    for j in range(count):
        n = int(rng.integers(1, 300))
        d = int(rng.choice([1, 2, 3, 10, 17, 40]))
        dtype = np.float32 if j % 2 else np.float64
        if j % 3 == 0:  # small integer grid: many exact distance and gain ties
            X = rng.integers(-2, 3, size=(n, d)).astype(dtype)
        else:
            X = rng.normal(size=(n, d)).astype(dtype)
        if j % 4 == 1 and n > 2:  # duplicated rows
            X[n // 2 :] = X[: n - n // 2]
        classes = int(rng.integers(1, 5))
        y = rng.integers(0, classes, size=n)
        fraction = float(rng.choice([0.05, 0.1, 0.5, 1.0]))
        yield X, y, fraction


# ---- on a GPU


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("method", ["lazy", "naive"])
def test_matches_cpu_engine(method: str) -> None:
    import torch

    for X, y, fraction in cases(seed=1, count=40):
        cpu = crepe.select(X, y, fraction=fraction, method=method)
        gpu = crepe.select(torch.from_numpy(X).cuda(), y, fraction=fraction, method=method)
        assert_same(cpu, gpu)


@pytest.mark.cuda
@needs_gpu
def test_matches_reference() -> None:
    import torch

    for X, y, fraction in cases(seed=2, count=25):
        ref = select_reference(X, y, fraction=fraction)
        gpu = crepe.select(torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda(), fraction=fraction)
        assert_same(ref, gpu)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_class_matches_cpu(dtype: type) -> None:
    import torch

    X = np.random.default_rng(3).normal(size=(4000, 10)).astype(dtype)
    cpu = crepe.select(X, k=400)
    gpu = crepe.select(torch.from_numpy(X).cuda(), k=400)
    assert_same(cpu, gpu)
    assert int(gpu.weights.sum()) == 4000


@pytest.mark.cuda
@needs_gpu
def test_batch_and_stream_do_not_change_results() -> None:
    import torch

    from crepe.selection import cuda

    rng = np.random.default_rng(4)
    X = torch.from_numpy(rng.normal(size=(1500, 6)).astype(np.float32)).cuda()
    y = torch.from_numpy(rng.integers(0, 3, size=1500)).cuda()
    want = crepe.select(X.cpu().numpy(), y.cpu().numpy(), fraction=0.1)
    p = cuda.prepare(X, y, 0.1, None)
    for batch in (1, 7, 128, 4096):
        assert_same(want, cuda.run(p, method_id=1, batch=batch)[0])
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert_same(want, crepe.select(X, y, fraction=0.1))


@pytest.mark.cuda
@needs_gpu
def test_device_argument_moves_data_explicitly() -> None:
    import torch

    X = np.random.default_rng(5).normal(size=(200, 4))
    want = crepe.select(X, fraction=0.1)
    assert_same(want, crepe.select(X, fraction=0.1, device="cuda"))
    assert_same(want, crepe.select(torch.from_numpy(X), fraction=0.1, device="cuda"))
    assert_same(want, crepe.select(torch.from_numpy(X).cuda(), fraction=0.1, device="cpu"))
    # A strided CUDA view is copied on the device and gives the same answer.
    wide = torch.from_numpy(np.repeat(X, 2, axis=1)).cuda()[:, ::2]
    assert_same(want, crepe.select(wide, fraction=0.1))


@pytest.mark.cuda
@needs_gpu
def test_bad_gpu_input_rejected() -> None:
    import torch

    X = torch.randn(50, 3, device="cuda")
    with pytest.raises(TypeError, match="torch.float16"):
        crepe.select(X.half(), k=2)
    with pytest.raises(TypeError, match="torch.int64"):
        crepe.select(X.long(), k=2)
    with pytest.raises(ValueError, match="y is on cpu"):
        crepe.select(X, torch.zeros(50, dtype=torch.int64), k=2)
    with pytest.raises(ValueError, match="y is on cuda"):
        crepe.select(X.cpu(), torch.zeros(50, dtype=torch.int64, device="cuda"), k=2, device="cuda")
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or Inf"):
        crepe.select(bad, k=2)
    with pytest.raises(ValueError, match="would overflow float32"):
        crepe.select(X * 1e19, k=2)
    with pytest.raises(ValueError, match="2-D"):
        crepe.select(X[None], k=2)
    with pytest.raises(ValueError, match="k=60 is larger"):
        crepe.select(X, k=60)
    with pytest.raises(ValueError, match="shape \\(50,\\)"):
        crepe.select(X, np.zeros(49, dtype=np.int64), k=2)


# ---- anywhere


def test_cuda_path_warns_once_that_it_is_unverified(monkeypatch: pytest.MonkeyPatch) -> None:
    """crepe.select on the CUDA path says, once per process, that it is unverified
    on hardware. No GPU needed: the CUDA engine is swapped for the CPU one."""
    from crepe.selection import api, cpu, cuda, problem

    monkeypatch.setattr(cuda, "prepare", problem.prepare)
    monkeypatch.setattr(cuda, "run", lambda p, *, method_id: (cpu.run(p, method_id=method_id, threads=None), None))
    api.warn_unverified_cuda.cache_clear()  # another test may have spent the once
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.warns(crepe.selection.UnverifiedCUDAWarning, match="not been verified on hardware") as seen:
        first = crepe.select(X, k=3, device="cuda")
    assert len(seen) == 1
    assert seen[0].filename == __file__  # points at the caller of crepe.select
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert_same(first, crepe.select(X, k=3, device="cuda"))
        crepe.select(X, k=3)  # the CPU path never warns


def test_unknown_device_rejected() -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        crepe.select(np.zeros((3, 2)), k=1, device="gpu")  # type: ignore[arg-type]


def test_missing_extension_names_the_build_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(crepe, "_cuda", raising=False)
    monkeypatch.setitem(sys.modules, "crepe._cuda", None)  # import now raises ImportError
    with pytest.raises(RuntimeError, match="CREPE_CUDA=ON"):
        crepe.select(np.zeros((3, 2)), k=1, device="cuda")


@pytest.mark.skipif(GPU or _cuda_module() is None, reason="needs crepe._cuda built and no usable GPU")
def test_no_gpu_gives_a_clean_error() -> None:
    pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        crepe.select(np.ones((4, 2), dtype=np.float32), k=1, device="cuda")
    _cuda = _cuda_module()
    assert _cuda.device_count() == 0
    z = np.zeros(1, dtype=np.int64)
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        _cuda.select_per_class(
            1 << 20, False, 1, 1, z, np.ones(1, dtype=np.int64), 1, 256, 0, 0,
            np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros(1),
            np.zeros(2, dtype=np.int64),
        )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_cuda_extension_builds(tmp_path: Path) -> None:
    """The CI compile check: configure with CREPE_CUDA=ON and build crepe._cuda (one arch)."""
    pybind11 = pytest.importorskip("pybind11")
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on PATH")
    env = {**os.environ, "CREPE_CUDA": "ON"}
    t0 = time.perf_counter()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(tmp_path), *gen, "-DCMAKE_BUILD_TYPE=Release",
         "-DCREPE_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80-real",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"],
        check=True, capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(tmp_path), "--target", "_cuda", "-j", "2"],
        check=True, capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert list(tmp_path.glob("_cuda*.so")), "crepe._cuda was not built"
    print(f"configure + build of crepe._cuda: {elapsed:.1f} s")


@pytest.mark.skipif(_cuda_module() is None, reason="needs crepe._cuda built")
def test_both_bindings_check_host_arrays_alike() -> None:
    """One check (csrc/binding_checks.hpp) serves both modules: the same
    wrong length gets the same message, before any device work."""
    from crepe import _core

    _cuda = _cuda_module()
    X, cls = np.zeros((4, 2)), np.zeros(4, np.int64)
    for budgets, out, message in [
        (np.array([2]), [np.empty(1, np.int64), np.empty(2, np.int64), np.empty(2), np.empty(1)],
         "out_idx has 1 entries, expected 2"),
        (np.array([1]), [np.empty(1, np.int64), np.empty(1, np.int64), np.empty(1), np.empty(2)],
         "out_obj has 2 entries, expected 1"),
        (np.array([1]), [np.empty(1, np.int64), np.empty(1, np.int64), np.empty(3), np.empty(1)],
         "out_gain has 3 entries, expected 1"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            _core.select_per_class(X, cls, budgets, 1, 1, *out)
        with pytest.raises(ValueError, match=message):
            _cuda.select_per_class(1 << 20, True, 4, 2, cls, budgets, 1, 256, 0, 0, *out, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="cls has 3 entries, expected 4"):
        _core.select_per_class(X, cls[:3], np.array([1]), 1, 1, *out)
    with pytest.raises(ValueError, match="cls has 3 entries, expected 4"):
        _cuda.select_per_class(1 << 20, True, 4, 2, cls[:3], np.array([1]), 1, 256, 0, 0, *out, np.zeros(2, np.int64))


def test_nvcc_never_sees_python_headers() -> None:
    """The layout the CUDA build relies on: csrc/cuda and the pure C++ core
    (csrc/crepe) include no pybind11 or Python header, and the bindings' shared
    checks (which include pybind11) are included only by the two bindings."""
    csrc = REPO / "csrc"
    for f in sorted([*(csrc / "cuda").iterdir(), *(csrc / "crepe").iterdir()]):
        text = f.read_text()
        for banned in ("pybind11", "Python.h", "binding_checks.hpp"):
            assert f"#include <{banned}" not in text and f'#include "{banned}' not in text, (f, banned)
    users = sorted(f.name for f in csrc.rglob("*") if f.is_file() and '#include "binding_checks.hpp"' in f.read_text())
    assert users == ["bindings.cpp", "bindings_cuda.cpp"]
