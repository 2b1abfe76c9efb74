"""Why crepe.select(k=1) costs ~42 s at n = 50,000, d = 330 (last-layer proxies, sigma = 1):
how much bounded_medoid prunes, from outside (the engine's own column_sum_lower_bounds;
exact column sums and D's pair set recomputed in float64 numpy, as solver_bounds.cpp defines them)."""
import json, os, sys, time
import numpy as np
sys.path.insert(0, "/work/wt-peers/bench")
from bench_shapes import shaped
from crepe import _core
out = {"loadavg start": os.getloadavg()}
for n in (5_000, 50_000):
    X = shaped(n, 330); d = X.shape[1]
    t = time.perf_counter(); L = np.asarray(_core.column_sum_lower_bounds(X, 0)); tb = time.perf_counter() - t
    X64 = X.astype(np.float64); sq = np.einsum("ij,ij->i", X64, X64)
    order = np.argsort(L, kind="stable")
    def colsums(idx):
        d2 = sq[:, None] + sq[idx][None, :] - 2.0 * (X64 @ X64[idx].T)
        return np.sqrt(np.maximum(d2, 0)).sum(axis=0)
    S = colsums(order[:512]); smin = S.min()
    evaluated = int(np.searchsorted(L[order], smin, side="right"))
    c = X64.mean(axis=0); r = np.linalg.norm(X64 - c, axis=1); R = r.max()
    a = int(r.argmax()); q2 = 0.0
    for _ in range(2):
        d2 = ((X64 - X64[a]) ** 2).sum(axis=1); b = int(d2.argmax()); q2 = max(q2, d2[b]); a = b
    far = int(((r + R) ** 2 >= q2).sum())
    out[f"n={n}"] = {"d": d, "bounds s": tb, "smallest exact colsum among the 512 lowest L": smin,
                     "candidates with L <= it (summed exactly, about)": evaluated,
                     "D: points in the far set (r_i + R >= sqrt(q2))": far, "far fraction": far / n,
                     "D pair pass cost / one full n^2 pass": (far / n) ** 2,
                     "r min/median/max": [float(r.min()), float(np.median(r)), R], "sqrt(q2)": float(np.sqrt(q2))}
    print(json.dumps(out[f"n={n}"]), flush=True)
out["loadavg end"] = os.getloadavg()
print(json.dumps(out, indent=1))
