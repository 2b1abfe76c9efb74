"""A second same-run sample of the 200,000-point figures that decide issue 25's
selection target, in the reverse order (sharded first, exact last, so drift in
the machine's load does not always favour the same side), plus the cost of
counting the unmerged picks' weights over the whole class. Run:

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/select_large_reversed.py

Prints one JSON object; see docs/scale.md for the figures it gave.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # bench/inputs.py
from inputs import one_class  # noqa: E402

import crepe  # noqa: E402
from crepe.selection.trace import diameter, trace  # noqa: E402

N, K, THREADS = 200_000, 2_000, 2


def main() -> None:
    X = one_class(N, sigma=1.0)
    D = diameter(X, threads=THREADS)

    def timed(**kw: object) -> tuple[crepe.Selection, float]:
        t0 = time.perf_counter()
        s = crepe.select(X, k=K, threads=THREADS, **kw)
        return s, time.perf_counter() - t0

    m, tm = timed(engine="sharded", shard_size=10_000, merge=True, seed=0)
    u, tu = timed(engine="sharded", shard_size=10_000, seed=0)
    t0 = time.perf_counter()
    Fu = trace(X, np.asarray(u.indices), D)[3]  # the unmerged picks, every point at its nearest pick
    tt = time.perf_counter() - t0
    e, te = timed()
    Fe = float(e.objective[0])
    print(json.dumps({
        "exact s": te, "merge s": tm, "merge time/exact": tm / te, "merge F/exact": float(m.objective[0]) / Fe,
        "unmerged s": tu, "unmerged time/exact": tu / te, "unmerged F/exact": float(u.objective[0]) / Fe,
        "reweight-over-class s": tt, "(unmerged+reweight) time/exact": (tu + tt) / te,
        "unmerged picks F (nearest over class)/exact": Fu / Fe,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
