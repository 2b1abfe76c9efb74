"""crepe.select(engine="sharded", workers="torch.distributed") on every rank: run by tests/test_distributed.py
under torchrun; each rank writes OUT/select.rank<r>.npz (its selection) and the shards it solved."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

import crepe.select
from crepe.selection import sharded


def problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.standard_normal((3000, 10)).astype(np.float32), rng.integers(0, 2, 3000)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    solved = []
    select_shard = sharded.select_shard

    def traced(Xs, budget, **k):  # type: ignore[no-untyped-def]
        solved.append(float(Xs.sum()))  # which shard: its points' sum
        return select_shard(Xs, budget, **k)

    sharded.select_shard = traced
    X, y = problem()
    runs = {name: crepe.select(X, y, fraction=0.05, engine="sharded", shard_size=400, merge=merge, seed=seed,
                               workers="torch.distributed")
            for name, merge, seed in (("plain", False, 3), ("merge", True, 3), ("fresh", False, None))}
    np.savez(Path(sys.argv[1]) / f"select.rank{dist.get_rank()}.npz", solved=np.array(solved),
             **{f"{n}_{f}": getattr(s, f) for n, s in runs.items() for f in ("indices", "weights", "objective")})
    dist.destroy_process_group()
