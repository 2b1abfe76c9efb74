"""Same-run comparison of two (or more) builds of the selection engine, e.g.
before and after a change (issue 15: "no regression on the shapes that are fast
today"). Each run loads one build's `_core` module in a fresh process, and the
builds alternate case by case, so that the machine's drift hits them alike;
every run must return the same picks and gains (a hash), or the script fails.

    # a build of each commit, each in its own folder:
    git worktree add /tmp/crepe-old <commit>
    python -m pip install --no-deps --no-build-isolation --target /tmp/old /tmp/crepe-old
    python -m pip install --no-deps --no-build-isolation --target /tmp/new .
    OMP_WAIT_POLICY=PASSIVE python bench/ab_builds.py old=/tmp/old/crepe/_core.cpython-311-x86_64-linux-gnu.so \\
        new=/tmp/new/crepe/_core.cpython-311-x86_64-linux-gnu.so [--rounds 3] [--quick]

Prints, per case and dtype, each build's median seconds and its speed-up over
the first build. The inputs are those of bench_shapes.py (proxy-shaped or a
Gaussian mixture, float32 as `crepe train` hands them, float64 as well).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {  # name: (input, n, d, k per class; k = 0: 10% of each class)
    "proxies n=5000 d=10": ("proxy", 5_000, 10, 500),
    "gaussian mixture n=8000 d=10": ("mixture", 8_000, 10, 800),
    "proxies n=20000 d=10": ("proxy", 20_000, 10, 2_000),
    "mixture n=5000 d=128": ("mixture", 5_000, 128, 500),
    "last-layer proxies n=6000 d=330": ("last-layer", 6_000, 330, 600),
    "MNIST-shaped logits proxies 60000 x 10, 10 classes": ("classes", 60_000, 10, 0),
    "Fashion-MNIST-shaped last-layer proxies 60000 x 330, 10 classes": ("classes-ll", 60_000, 330, 0),
}
QUICK = ["proxies n=5000 d=10", "mixture n=5000 d=128", "last-layer proxies n=6000 d=330"]


def make_input(kind: str, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    from bench_shapes import gaussian_mixture  # bench/ is on the path: this script lives there
    from inputs import one_class, proxies

    if kind == "proxy":
        return one_class(n, sigma=1.0), np.zeros(n, np.int64)
    if kind == "last-layer":
        return one_class(n, sigma=1.0, kind="last-layer"), np.zeros(n, np.int64)
    if kind == "mixture":
        return gaussian_mixture(n, d), np.zeros(n, np.int64)
    X, y = proxies(n, sigma=1.0, kind="last-layer" if kind == "classes-ll" else "logits")
    return X, y.astype(np.int64)


def run_one(so: str, data: str, k: int, dtype: str) -> dict[str, object]:
    """In this process: load the build at `so`, time one selection of `data`."""
    spec = importlib.util.spec_from_file_location("crepe_ab._core", so)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load a module from {so}")
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    f = np.load(data)
    X, y = np.ascontiguousarray(f["X"].astype(dtype)), f["y"]
    sizes = np.bincount(y)
    budgets = np.array([k] * len(sizes) if k else [max(1, int(np.floor(0.1 * s + 0.5))) for s in sizes], np.int64)
    total = int(budgets.sum())
    out = (np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total), np.empty(len(sizes)))
    t0 = time.perf_counter()
    core.select_per_class(X, y, budgets, 1, 0, *out)
    s = time.perf_counter() - t0
    return {"s": s, "hash": hashlib.md5(out[0].tobytes() + out[2].tobytes()).hexdigest()[:12]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("builds", nargs="*", metavar="NAME=PATH", help="a name and the path of a built _core module")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help=f"only {QUICK}")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._one:
        so, data, k, dtype = a._one
        print(json.dumps(run_one(so, data, int(k), dtype)))
        return
    if not a.builds or any("=" not in b for b in a.builds):
        p.error("give one or more builds as NAME=PATH")
    builds = dict(b.split("=", 1) for b in a.builds)
    for name, so in builds.items():
        if not Path(so).is_file():
            p.error(f"build {name!r}: no file {so}")
    cases = QUICK if a.quick else list(CASES)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            kind, n, d, k = CASES[case]
            X, y = make_input(kind, n, d)
            data = f"{tmp}/input.npz"
            np.savez(data, X=X, y=y)
            for dtype in a.dtypes if not kind.startswith("classes") else ["float32"]:
                times: dict[str, list[float]] = {name: [] for name in builds}
                hashes = set()
                for r in range(a.rounds):
                    order = list(builds) if r % 2 == 0 else list(reversed(builds))
                    for name in order:
                        cmd = [sys.executable, __file__, "--_one", builds[name], data, str(k), dtype]
                        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                        times[name].append(res["s"])
                        hashes.add(res["hash"])
                med = {name: statistics.median(v) for name, v in times.items()}
                first = next(iter(builds))
                row = "  ".join(f"{name} {med[name]:.3f} s ({med[first] / med[name]:.2f}x)" for name in builds)
                same = "same picks" if len(hashes) == 1 else "DIFFERENT PICKS"
                failed |= len(hashes) != 1
                print(f"{case:<66} {dtype}: {row}  [{same}]", flush=True)
    if failed:
        raise SystemExit("builds disagree on some case")


if __name__ == "__main__":
    main()
