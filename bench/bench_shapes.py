"""Selection at every shape (issue 15). Run:

    OMP_WAIT_POLICY=PASSIVE python -m pytest bench/bench_shapes.py -s -p no:randomly \
        --benchmark-json=bench-shapes.json [--quick]

- the grid: one class, d in {10, 64, 330, 1024} x n in {5k, 50k, 200k},
  k = min(n / 10, 2,000), float32. Each cell prints its time, a floor and the
  ratio. The floor is two n^2 d passes (the medoid's and step 1's, at one
  multiply-add per pair and dimension) at the multiply-add rate of this
  machine, measured in this run by a BLAS GEMM of the same precision. An
  exact distance needs a subtraction, a product and a sum per term, unfused,
  so for two passes ratios near 1-2 are the target; from d = 64 the engine
  computes each distance once (half the matrix, kept for the second pass when
  it fits in the memory budget), and from n = 1,024 (n >= 8 d) it finds the
  medoid from bounds instead of a pass where the second does not read the
  first's distances, so ratios below 1 are possible. Cells whose
  floor exceeds CREPE_BENCH_MAX_FLOOR_S (default 60 s) are skipped.
- the peers, in the same run: apricot-select and submodlib-py (`pip install
  apricot-select submodlib-py`; skipped when absent) and the original CRAIG
  code path in a few lines of NumPy (full distance matrix by BLAS, similarity
  max - d, lazy greedy on a heap), on the shapes of issue 15. Ratios are peer
  time / crepe time, both from this run.
Every benchmark first checks crepe against the oracle on a slice.
"""

from __future__ import annotations

import heapq
import os
import time
from typing import Callable

import numpy as np
import pytest
from bench_select import peers as public_peers
from bench_select import report_speedups
from inputs import one_class

import crepe

from crepe.selection.reference import select_reference


def gaussian_mixture(n: int, d: int, *, components: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 2.0, size=(components, d))
    return np.ascontiguousarray(means[rng.integers(0, components, size=n)] + rng.normal(size=(n, d)), dtype=np.float32)


def shaped(n: int, d: int) -> np.ndarray:
    """Noisy logits proxies at d = 10, noisy last-layer proxies of the CNN at
    d = 330, a Gaussian mixture elsewhere (float32, as crepe train hands them)."""
    if d == 10:
        return one_class(n, sigma=1.0)
    if d == 330:
        return one_class(n, sigma=1.0, kind="last-layer")
    return gaussian_mixture(n, d)


_RATES: dict[str, float] = {}


def fma_rate(dtype: type) -> float:
    """Multiply-adds per second of a BLAS GEMM in `dtype` on this machine, now."""
    name = np.dtype(dtype).name
    if name not in _RATES:
        m = 1024
        a = np.random.default_rng(0).normal(size=(m, m)).astype(dtype)
        a @ a  # warm-up (threads, pages)
        best = min(_timed(lambda: a @ a) for _ in range(3))
        _RATES[name] = m**3 / best
    return _RATES[name]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def floor_s(n: int, d: int, dtype: type) -> float:
    return 2.0 * n * n * d / fma_rate(dtype)


def check_against_reference(X: np.ndarray, k: int, prefix: int = 20) -> None:
    """A slice against the oracle, bit for bit; the full problem's first picks
    against the naive engine (itself held to the oracle by the tests)."""
    small = X[:300]
    ref = select_reference(small, k=30)
    got = crepe.select(small, k=30)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.gains, ref.gains)
    if len(X) <= 20_000:
        prefix = min(k, prefix)
        lazy, naive = crepe.select(X, k=prefix), crepe.select(X, k=prefix, method="naive")
        np.testing.assert_array_equal(lazy.indices, naive.indices)
        np.testing.assert_array_equal(lazy.gains, naive.gains)


GRID_D = [10, 64, 330, 1024]
GRID_N = [5_000, 50_000, 200_000]


@pytest.mark.parametrize("d", GRID_D)
@pytest.mark.parametrize("n", GRID_N)
def test_shape_grid(benchmark: pytest.FixtureRequest, quick: bool, n: int, d: int) -> None:
    if quick and (n != GRID_N[0] or d == 64):
        pytest.skip("--quick: n = 2,000 and d in {10, 330, 1024} only")
    n = 2_000 if quick else n
    k = min(n // 10, 2_000)
    floor = floor_s(n, d, np.float32)
    cap = float(os.environ.get("CREPE_BENCH_MAX_FLOOR_S", "60"))
    if floor > cap:
        pytest.skip(f"floor {floor:.0f} s > CREPE_BENCH_MAX_FLOOR_S={cap:.0f}")
    X = shaped(n, d)
    check_against_reference(X, k)
    rounds = 3 if floor < 1 else 1
    benchmark.group = "shapes"
    benchmark.pedantic(crepe.select, args=(X,), kwargs={"k": k}, rounds=rounds, warmup_rounds=0)
    t = benchmark.stats.stats.min
    info = {"n": n, "d": d, "k": k, "s": t, "floor s": floor, "ratio to floor": t / floor,
            "gemm multiply-adds/s": fma_rate(np.float32)}
    benchmark.extra_info.update(info)
    print(f"\nn={n:>7} d={d:>5} k={k:>5}: {t:8.3f} s  floor {floor:7.3f} s  ratio {t / floor:5.2f}")


def craig_numpy(X: np.ndarray, k: int) -> list[int]:
    """The original CRAIG code path: the full distance matrix (BLAS), the
    similarity max - d, a lazy greedy on a heap of marginal gains."""
    sq = np.einsum("ij,ij->i", X, X)
    D = X @ X.T  # then in place: one n x n matrix in all
    D *= -2.0
    D += sq[:, None]
    D += sq[None, :]
    np.maximum(D, 0.0, out=D)
    np.sqrt(D, out=D)
    S = np.subtract(D.max(), D, out=D)  # in place: one n x n matrix
    cur = np.zeros(len(X))
    heap = [(-float(g), e) for e, g in enumerate(S.sum(axis=1))]
    heapq.heapify(heap)
    picks: list[int] = []
    while len(picks) < k:  # S is symmetric: row e (contiguous) is column e
        _, e = heapq.heappop(heap)
        g = float(np.maximum(S[e] - cur, 0.0).sum())
        if not heap or g >= -heap[0][0]:
            picks.append(e)
            np.maximum(cur, S[e], out=cur)
        else:
            heapq.heappush(heap, (-g, e))
    return picks


def peers(X: np.ndarray, k: int) -> dict[str, Callable[[], object]]:
    """Every peer builds an n x n float64 matrix, apricot and submodlib
    several (at n = 20,000 one of them reached 16 GB and was OOM-killed here):
    all are skipped where eight such matrices would not fit in memory."""
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    if 8 * 8 * len(X) ** 2 > avail:
        return {}
    return {"CRAIG (numpy/BLAS)": lambda: craig_numpy(X, k), **public_peers(X, k)}


PEER_CASES = {  # name: (n, d, input), k = 10%
    "gaussian mixture n=8000 d=10": (8_000, 10, "mixture"),
    "proxies n=5000 d=10": (5_000, 10, "shaped"),
    "proxies n=20000 d=10": (20_000, 10, "shaped"),
    "mixture n=5000 d=128": (5_000, 128, "mixture"),
    "last-layer proxies n=6000 d=330": (6_000, 330, "shaped"),
}


@pytest.mark.parametrize("case", list(PEER_CASES))
def test_vs_peers(benchmark: pytest.FixtureRequest, quick: bool, case: str) -> None:
    n, d, kind = PEER_CASES[case]
    if quick:
        n = min(n, 1_500)
    k = n // 10
    X32 = gaussian_mixture(n, d) if kind == "mixture" else shaped(n, d)
    X = X32.astype(np.float64)  # the peers compute in float64
    check_against_reference(X32, k)
    check_against_reference(X, k)
    info: dict[str, object] = {"case": case, "n": n, "d": d, "k": k}
    peer_times = {name: min(_timed(fn) for _ in range(1 if not quick else 2)) for name, fn in peers(X, k).items()}
    if not peer_times:
        pytest.skip(f"no peer installed, or n = {n} too large for their n x n matrices here")
    info.update({f"{name} s": t for name, t in peer_times.items()})
    info["crepe float64 s"] = t64 = min(_timed(lambda: crepe.select(X, k=k)) for _ in range(3))
    benchmark.group = "vs peers"
    benchmark.pedantic(crepe.select, args=(X32,), kwargs={"k": k}, rounds=3, warmup_rounds=1)
    info["crepe float32 s"] = t32 = benchmark.stats.stats.min
    report_speedups(benchmark, info, peer_times, t32, t64)
