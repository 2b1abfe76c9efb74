"""GPU selection vs the CPU engine on the same machine; writes JSON.

    python bench/bench_cuda.py [--quick] [--out bench/results/cuda.json]

Problems (DESIGN.md section 5, issue 5): one class of n = 60,000, d = 10,
k = 6,000; and 60,000 x 10 in 10 classes, 10% per class. Inputs are the
logits proxies of bench/inputs.py (float32). Each problem is first checked
against the CPU engine on a small slice (bitwise: same picks, weights, gains),
then the full problem is timed on both engines and compared the same way.

Achieved rates are computed from counted work, not measured counters:
  pairs   = candidate-point distance evaluations the greedy performed
            (first pick and step 1: sum n_c^2; later rounds: evaluations * n_c;
            updates: k_c * n_c),
  flops   = 3 d per pair (sub, mul, add per dim; sqrt, compare and the double
            sums are not counted),
  bytes   = points staged once per 128-candidate tile: pairs / 128 *
            (d + 1) * 4 + 8 bytes (coordinates, cur2, cur),
against the H100 SXM peaks below. Exits 0 with a message when no GPU is usable.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inputs import one_class, proxies  # noqa: E402

PEAK = {"fp32_flops": 67e12, "fp64_flops": 34e12, "hbm_bytes_per_s": 3.35e12}  # H100 SXM
CANDIDATES_PER_TILE = 128  # = kThreads in csrc/cuda/facility_location.cu


def gpu_or_exit():
    try:
        import torch
    except ImportError:
        print("bench_cuda: torch is not installed; skipping")
        raise SystemExit(0)
    try:
        from crepe import _cuda  # noqa: F401
    except ImportError:
        print("bench_cuda: crepe was built without crepe._cuda; skipping")
        raise SystemExit(0)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA GPU; skipping")
        raise SystemExit(0)
    return torch


def same(a, b) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ("indices", "weights", "gains", "objective")
    )


def counted_work(sizes: np.ndarray, budgets: np.ndarray, evaluations: int, d: int, itemsize: int) -> dict:
    n2 = float(np.sum(sizes.astype(np.float64) ** 2))
    step1 = float(np.sum((sizes.astype(np.float64) ** 2)[budgets >= 2]))
    # Later rounds: every evaluation is one candidate against its class.
    # (Exact for equal class sizes; the problems here have equal sizes.)
    later = float(evaluations) * float(np.mean(sizes))
    updates = float(np.sum(budgets * sizes))
    pairs = n2 + step1 + later + updates
    return {
        "pairs": pairs,
        "flops": 3.0 * d * pairs,
        "bytes": pairs / CANDIDATES_PER_TILE * ((d + 1) * itemsize + 8),
    }


def run(torch, name: str, X: np.ndarray, y: np.ndarray | None, *, k=None, fraction=None, repeats=3) -> dict:
    import crepe
    from crepe.selection import cuda

    # Correctness first, on a slice.
    m = min(len(X), 3000)
    ys = None if y is None else y[:m]
    small = dict(k=max(1, k * m // len(X)) if k else None, fraction=fraction)
    assert same(crepe.select(X[:m], ys, **small), crepe.select(torch.from_numpy(X[:m]).cuda(), ys, **small))

    Xd = torch.from_numpy(X).cuda()
    torch.cuda.synchronize()
    gpu = crepe.select(Xd, y, k=k, fraction=fraction)  # warm-up (JIT, allocator)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        gpu = crepe.select(Xd, y, k=k, fraction=fraction)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    p = cuda.prepare(Xd, y, fraction, k)
    stats = cuda.run(p, method_id=crepe.METHODS["lazy"])[1]  # the counters of the run timed above
    t0 = time.perf_counter()
    cpu = crepe.select(X, y, k=k, fraction=fraction)
    t_cpu = time.perf_counter() - t0
    t_gpu = min(times)
    d = X.shape[1]
    sizes = p.sizes
    work = counted_work(sizes, p.budgets, stats.evaluations, d, X.dtype.itemsize)
    peak_flops = PEAK["fp32_flops"] if X.dtype == np.float32 else PEAK["fp64_flops"]
    return {
        "problem": name,
        "n": int(len(X)),
        "d": int(d),
        "classes": int(len(sizes)),
        "picks": int(len(gpu)),
        "dtype": str(X.dtype),
        "gpu_s": t_gpu,
        "gpu_s_all": times,
        "cpu_s": t_cpu,
        "speedup": t_cpu / t_gpu,
        "identical_to_cpu": same(cpu, gpu),
        "rounds": stats.rounds,
        "evaluations_after_step1": stats.evaluations,
        "counted_pairs": work["pairs"],
        "achieved_flops": work["flops"] / t_gpu,
        "fraction_of_flop_peak": work["flops"] / t_gpu / peak_flops,
        "achieved_bytes_per_s": work["bytes"] / t_gpu,
        "fraction_of_bandwidth_peak": work["bytes"] / t_gpu / PEAK["hbm_bytes_per_s"],
        "device_memory_peak_bytes": int(torch.cuda.max_memory_allocated()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n = 6,000 instead of 60,000")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cuda.json"))
    args = ap.parse_args(argv)
    torch = gpu_or_exit()
    import crepe
    from crepe import _core

    n = 6000 if args.quick else 60000
    X1 = one_class(n, classes=10)
    X10, y10 = proxies(n, classes=10)
    results = [
        run(torch, f"one class, n={n}, d=10, k={n // 10}", X1, None, k=n // 10),
        run(torch, f"{n} x 10, 10 classes, 10%", X10, y10, fraction=0.1),
    ]
    report = {
        "device": torch.cuda.get_device_name(0),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": _core.resolve_threads(0),
        "crepe": crepe.__version__,
        "torch": torch.__version__,
        "peaks": PEAK,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(
            f"{r['problem']}: GPU {r['gpu_s']:.3f} s, CPU {r['cpu_s']:.2f} s, {r['speedup']:.1f}x, "
            f"identical={r['identical_to_cpu']}, rounds={r['rounds']}, "
            f"{r['fraction_of_flop_peak']:.1%} of FLOP peak, {r['fraction_of_bandwidth_peak']:.1%} of HBM"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
