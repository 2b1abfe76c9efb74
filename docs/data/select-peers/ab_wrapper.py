"""Same-run A/B of crepe.select between two Python packages (src folders) that load the same
compiled _core .so: fresh subprocesses, builds alternating round by round (ABBA...),
every call's picks+gains hashed (must agree). Prints per case each build's median seconds
and the median of the per-round paired ratios old/new; os.getloadavg() per case."""
import hashlib, json, os, statistics, subprocess, sys, tempfile, time
import numpy as np

CASES = {  # name: (kind, n, d, k)   k = 0: fraction 0.1 per class
    "proxies n=5000 d=10 k=500": ("proxy", 5_000, 10, 500),
    "mixture n=5000 d=64 k=500": ("mixture", 5_000, 64, 500),
    "last-layer n=6000 d=330 k=600": ("last-layer", 6_000, 330, 600),
    "proxies n=50000 d=10 k=5000": ("proxy", 50_000, 10, 5_000),
    "mixture n=50000 d=64 k=5000": ("mixture", 50_000, 64, 5_000),
    "MNIST-shaped 60000 x 10, 10 classes, 10%": ("classes", 60_000, 10, 0),
}

def one(data, k, reps):
    import crepe
    f = np.load(data); X, y = f["X"], f["y"]
    call = (lambda: crepe.select(X, y, fraction=0.1)) if k == 0 else (lambda: crepe.select(X, k=k))
    ts, h = [], set()
    for _ in range(reps):
        t0 = time.perf_counter(); s = call(); ts.append(time.perf_counter() - t0)
        h.add(hashlib.md5(np.asarray(s.indices).tobytes() + np.asarray(s.gains).tobytes()).hexdigest()[:12])
    return {"s": ts, "hash": sorted(h), "crepe": crepe.__file__}

def main():
    if sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))); return
    builds = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    rounds = 6
    sys.path.insert(0, "/work/wt-peers/bench")
    from bench_shapes import gaussian_mixture
    from inputs import one_class, proxies
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, (kind, n, d, k) in CASES.items():
            if kind == "proxy": X, y = one_class(n, sigma=1.0), np.zeros(n, np.int64)
            elif kind == "last-layer": X, y = one_class(n, sigma=1.0, kind="last-layer"), np.zeros(n, np.int64)
            elif kind == "mixture": X, y = gaussian_mixture(n, d), np.zeros(n, np.int64)
            else: X, y = proxies(n, sigma=1.0)
            data = f"{tmp}/in.npz"; np.savez(data, X=X, y=y)
            reps = 3 if n * n * d < 5e10 else 1
            load0 = os.getloadavg()
            times = {b: [] for b in builds}; hashes = set(); paired = []
            for r in range(rounds):
                order = list(builds) if r % 2 == 0 else list(reversed(builds))
                got = {}
                for b in order:
                    env = dict(os.environ, PYTHONPATH=builds[b], OMP_WAIT_POLICY="PASSIVE")
                    out = subprocess.run([sys.executable, __file__, "--one", data, str(k), str(reps)],
                                         env=env, check=True, capture_output=True, text=True).stdout
                    res = json.loads(out.strip().splitlines()[-1])
                    assert res["crepe"].startswith(builds[b]), res["crepe"]
                    got[b] = min(res["s"]); times[b].append(got[b]); hashes.update(res["hash"])
                names = list(builds); paired.append(got[names[0]] / got[names[1]])
            load1 = os.getloadavg()
            med = {b: statistics.median(v) for b, v in times.items()}
            row = {"case": case, "n": n, "d": d, "k": k, "dtype": "float32", "rounds": rounds,
                   "calls per subprocess (min taken)": reps, "times s": times, "median s": med,
                   "median paired ratio old/new": statistics.median(paired), "paired ratios": paired,
                   "same picks and gains": len(hashes) == 1, "loadavg start": load0, "loadavg end": load1}
            results.append(row)
            print(f"{case:<45} " + "  ".join(f"{b} {med[b]:.4f} s" for b in builds)
                  + f"  old/new median paired {statistics.median(paired):.3f}  [{'same picks' if len(hashes)==1 else 'DIFFERENT PICKS'}]"
                  + f"  load {load0[0]:.2f}->{load1[0]:.2f}", flush=True)
    print("JSON " + json.dumps(results))

if __name__ == "__main__":
    main()
