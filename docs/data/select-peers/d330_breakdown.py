"""n = 50,000, d = 330, k = 2,000 (bench_shapes' grid cell), one process: the bench's floor
(2 n^2 d at the 1024^3 SGEMM rate), two real passes of a blocked float32 GEMM X @ X[b].T
over the n x n products, and crepe.select at k = 1 (medoid from bounds), k = 2 (+ step 1's
n^2 pass), k = 2000 (+ the lazy greedy on gain lists); wall and process CPU seconds, loadavg."""
import json, os, sys, time
import numpy as np
sys.path.insert(0, "/work/wt-peers/bench")
from bench_shapes import shaped, fma_rate, _RATES
import crepe

def timed(fn):
    l0 = os.getloadavg(); w, c = time.perf_counter(), time.process_time(); fn()
    return {"wall s": time.perf_counter() - w, "cpu s": time.process_time() - c, "loadavg start": l0, "loadavg end": os.getloadavg()}

n, d, k = 50_000, 330, 2_000
X = shaped(n, d)
out = {"n": n, "d": d, "k": k, "threads": crepe._core.resolve_threads(0) if hasattr(crepe, "_core") else None}
r0 = fma_rate(np.float32); out["sgemm 1024^3 multiply-adds/s (before)"] = r0
out["bench floor s (2 n^2 d / rate before)"] = 2 * n * n * d / r0
def two_gemm_passes():
    buf = np.empty((2_000, n), np.float32)
    for _ in range(2):
        for s in range(0, n, 2_000):
            np.matmul(X[s:s + 2_000], X.T, out=buf)
out["two blocked GEMM passes X @ X.T"] = timed(two_gemm_passes)
for kk in (1, 2, k):
    out[f"crepe.select k={kk}"] = timed(lambda: crepe.select(X, k=kk))
    print(kk, out[f"crepe.select k={kk}"], flush=True)
_RATES.clear(); r1 = fma_rate(np.float32); out["sgemm 1024^3 multiply-adds/s (after)"] = r1
full, g = out[f"crepe.select k={k}"], out["two blocked GEMM passes X @ X.T"]
out["ratio crepe k=2000 / bench floor (wall)"] = full["wall s"] / out["bench floor s (2 n^2 d / rate before)"]
out["ratio crepe k=2000 / two GEMM passes (wall)"] = full["wall s"] / g["wall s"]
out["ratio crepe k=2000 / two GEMM passes (cpu)"] = full["cpu s"] / g["cpu s"]
print(json.dumps(out, indent=1))
