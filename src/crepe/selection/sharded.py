"""Sharded selection for one class, with an optional GreeDi merge (numpy + the exact engine).

A class of n points is split at random into m = ceil(n / shard_size) shards of
nearly equal size (floor or ceil of n / m). The split depends on n, shard_size
and the seed only, never on X: `split` sees no data. Each shard is solved by
the exact engine (`select_shard`) with its share of the class budget (`budgets`:
proportional, largest remainder, summing to k, at least 1 each), and each
point's weight counts toward the pick nearest to it within its own shard.

Merge (GreeDi, Mirzasoleiman et al. 2013/2016): each shard picks
min(n_p, k) instead, the exact engine picks k of the union of all shard picks
(maximising the facility location of the union's points), and weights are
counted over the whole class by nearest chosen point. Since a greedy sequence's
first k_p picks are the picks of a k_p budget, the unmerged selection comes for
free as prefixes; the merge returns whichever of the two has the larger F over
the whole class (as RandGreeDi, Barbosa et al. 2015, returns the best of the
merged and the machines' solutions), so it never does worse than no merge.

Workers (`solve_shards`): the shards of a class are solved here one after the
other (workers=None), by the ranks of the current torch.distributed process
group (workers="torch.distributed": every rank calls crepe.select with the same
arguments, rank r solves shards r, r + W, ..., the results are all-gathered and
every rank returns the same selection; the split's seed, if None, is rank 0's),
or as tasks on a Dask cluster (workers=a distributed.Client). The picks do not
depend on which: the same exact engine solves the same shards.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crepe.selection import cpu
from crepe.selection.problem import prepare
from crepe.selection.result import Selection
from crepe.selection.trace import column_sum, trace


def shard_count(n: int, shard_size: int) -> int:
    """m = ceil(n / shard_size) shards for a class of n points."""
    return -(-n // shard_size)


def split(n: int, shard_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """m random shards of range(n), each ascending, sizes floor or ceil of n / m.

    Depends on n, shard_size and the generator's state only: no data."""
    perm = rng.permutation(n)
    return [np.sort(part) for part in np.array_split(perm, shard_count(n, shard_size))]


def budgets(sizes: list[int], k: int) -> np.ndarray:
    """Picks per shard: k * n_p / n rounded by largest remainder (ties: the
    earlier shard), summing to k. Each is >= 1 when k >= len(sizes) and the
    sizes differ by at most one (as `split` makes them), and <= n_p."""
    n = sum(sizes)
    share = np.array(sizes, dtype=np.int64) * k
    out = share // n
    extra = k - int(out.sum())
    order = np.lexsort((np.arange(len(sizes)), -(share % n)))  # remainder descending
    out[order[:extra]] += 1
    return out


def select_shard(Xs: np.ndarray, budget: int, *, method_id: int, threads: int | None) -> Selection:
    """The exact engine on one shard (the unit of work a distributed fan-out sends out)."""
    return cpu.run(prepare(Xs, None, None, budget), method_id=method_id, threads=threads)


def solve_shards(jobs: list[tuple[np.ndarray, int]], *, method_id: int, threads: int | None,
                 workers: Any = None) -> list[Selection]:
    """`select_shard` on each (shard points, budget), here, over torch.distributed ranks or on Dask."""
    if workers is None:
        return [select_shard(Xs, b, method_id=method_id, threads=threads) for Xs, b in jobs]
    if workers == "torch.distributed":
        import torch.distributed as dist

        rank, size = dist.get_rank(), dist.get_world_size()
        mine = {j: select_shard(jobs[j][0], jobs[j][1], method_id=method_id, threads=threads)
                for j in range(rank, len(jobs), size)}
        gathered: list[Any] = [None] * size
        dist.all_gather_object(gathered, mine)
        done = {j: r for part in gathered for j, r in part.items()}
        return [done[j] for j in range(len(jobs))]
    futures = workers.map(select_shard, [Xs for Xs, _ in jobs], [b for _, b in jobs], method_id=method_id,
                          threads=threads, pure=False)
    return list(workers.gather(futures))


def sharded_class(
    Xc: np.ndarray,
    k: int,
    D: float,
    *,
    shard_size: int,
    merge: bool,
    rng: np.random.Generator,
    method_id: int,
    threads: int | None,
    workers: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(picks, weights, gains, objective) of one class; picks are within-class indices.

    Without merge: picks shard by shard (each in its greedy order), gains the
    marginal gains within the shard (the first with the class's D), weights
    counted within the shard, objective sum_i (D - distance of i to its
    shard's nearest pick) = the sum of the shard objectives in the class's D,
    a lower bound on F of the union. With merge: see the module docstring.
    """
    shards = split(Xc.shape[0], shard_size, rng)
    if len(shards) == 1:  # the class fits one shard: this is the exact engine, result and all
        r = select_shard(Xc, k, method_id=method_id, threads=threads)
        return np.array(r.indices), np.array(r.weights), np.array(r.gains), float(r.objective[0])
    sizes = [len(s) for s in shards]
    ks = budgets(sizes, k)
    wanted = [min(n_p, k) for n_p in sizes] if merge else ks.tolist()
    runs = solve_shards([(Xc[rows], int(b)) for rows, b in zip(shards, wanted)], method_id=method_id, threads=threads,
                        workers=workers)
    if not merge:
        picks = np.concatenate([rows[r.indices] for rows, r in zip(shards, runs)])
        weights = np.concatenate([r.weights for r in runs])
        gains = np.concatenate([_in_class_d(Xc[rows], r, D) for rows, r in zip(shards, runs)])
        return picks, weights, gains, float(np.sum(gains))
    union = np.concatenate([rows[r.indices] for rows, r in zip(shards, runs)])
    merged = union[select_shard(Xc[union], k, method_id=method_id, threads=threads).indices]
    prefixes = np.concatenate([rows[r.indices[:kp]] for rows, r, kp in zip(shards, runs, ks)])
    best = None
    for cand in (merged, prefixes):  # merged first: it wins ties
        g, _, assign, obj = trace(Xc, cand, D)
        if best is None or obj > best[3]:
            best = (cand, np.bincount(assign, minlength=k).astype(np.int64), g, obj)
    assert best is not None
    return best


def _in_class_d(Xs: np.ndarray, r: Selection, D: float) -> np.ndarray:
    """A shard's gains with its first one, n_p D_p - colsum, restated in the class's D."""
    g = np.array(r.gains, dtype=np.float64)
    g[0] = Xs.shape[0] * D - column_sum(Xs, int(r.indices[0]))
    return g


def min_shard_size(n: int, k: int) -> int:
    """The smallest shard_size that leaves every shard of a class of n points
    with k picks at least one pick: ceil(n / k)."""
    return math.ceil(n / k)
