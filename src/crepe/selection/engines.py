"""The engines beside the exact one: their options, checked, and their per-class loop.

    engine="exact"       the C++ lazy greedy (cpu, cuda): the default
    engine="stochastic"  stochastic greedy (stochastic.py); needs epsilon in (0, 1)
    engine="sharded"     random shards, the exact engine per shard, optional
                         GreeDi merge (sharded.py); needs shard_size

Each option belongs to one engine (as a scikit-learn variant declares only its
own parameters): passing epsilon to the sharded engine, say, is an error, not
a silently ignored knob. `seed` seeds the engines' randomness (candidate
samples, shard splits); class c draws from its own child of SeedSequence(seed),
so its draws depend on the seed, c and its size only.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

import numpy as np

from crepe.selection.problem import Problem
from crepe.selection.result import Selection

Engine = Literal["exact", "stochastic", "sharded"]
# engine -> the options it takes (besides the budget, method and threads)
ENGINES: dict[str, tuple[str, ...]] = {
    "exact": (),
    "stochastic": ("epsilon", "seed"),
    "sharded": ("shard_size", "merge", "seed", "workers"),
}


def check_options(engine: Any, options: dict[str, Any]) -> None:
    """Raise ValueError for an unknown engine, an option of another engine, or
    a bad value; `options` holds the engine options that were given (not None)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid: {sorted(ENGINES)}")
    for name in options:
        if name not in ENGINES[engine]:
            takers = sorted(e for e, opts in ENGINES.items() if name in opts)
            raise ValueError(f"{name}= applies to engine={' or '.join(map(repr, takers))} only, not {engine!r}")
    if engine == "stochastic":
        eps = options.get("epsilon")
        if eps is None:
            raise ValueError("engine='stochastic' needs epsilon= in (0, 1): s = (n/k) ln(1/epsilon) candidates per step")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0.0 < float(eps) < 1.0):
            raise ValueError(f"epsilon must be a real number in (0, 1), got {eps!r}")
    if engine == "sharded":
        size = options.get("shard_size")
        if size is None:
            raise ValueError("engine='sharded' needs shard_size= (an int >= 1, the most points per shard)")
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"shard_size must be an int >= 1, got {size!r}")
        if not isinstance(options.get("merge", False), bool):
            raise ValueError(f"merge must be True or False, got {options['merge']!r}")
        check_workers(options.get("workers"))
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")


def check_workers(workers: Any) -> None:
    """None, "torch.distributed" (with a process group joined) or a Dask distributed.Client."""
    if workers is None:
        return
    if workers == "torch.distributed":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("workers='torch.distributed' needs a process group: call torch.distributed."
                             "init_process_group first (torchrun sets its environment)")
        return
    if type(workers).__name__ == "Client" and type(workers).__module__.startswith("distributed"):
        return
    raise ValueError(f"workers must be None, 'torch.distributed' or a dask distributed.Client, got {workers!r}")


def check_shards(p: Problem, shard_size: int) -> None:
    """Every shard of every class needs a pick: ValueError otherwise, naming the class."""
    from crepe.selection.sharded import min_shard_size, shard_count

    for c, n_c, k_c in zip(p.classes.tolist(), p.sizes.tolist(), p.budgets.tolist()):
        m = shard_count(n_c, shard_size)
        if m > k_c:
            raise ValueError(
                f"shard_size={shard_size} splits class {c!r} ({n_c} points) into {m} shards, more than "
                f"its budget of {k_c} picks: every shard needs one; use shard_size >= {min_shard_size(n_c, k_c)}"
            )


def run(p: Problem, engine: str, options: dict[str, Any], *, method_id: int, threads: int | None) -> Selection:
    """The stochastic or sharded engine on a validated host problem, class by class."""
    from crepe.selection.sharded import sharded_class
    from crepe.selection.stochastic import stochastic_greedy
    from crepe.selection.trace import diameter

    seed = options.get("seed")
    if engine == "sharded":
        check_shards(p, int(options["shard_size"]))
        if seed is None and options.get("workers") == "torch.distributed":  # every rank must split alike
            import torch.distributed as dist

            box = [np.random.SeedSequence().entropy]
            dist.broadcast_object_list(box, src=0)
            seed = box[0]
    children = np.random.SeedSequence(seed).spawn(len(p.classes))
    parts = []
    for c in range(len(p.classes)):
        rows = np.flatnonzero(p.cls == c)
        Xc = np.ascontiguousarray(p.X[rows])
        k, rng = int(p.budgets[c]), np.random.default_rng(children[c])
        D = diameter(Xc, threads=threads)
        if engine == "stochastic":
            picks, gains, _, assign = stochastic_greedy(Xc, k, epsilon=float(options["epsilon"]), rng=rng)
            gains[0] += Xc.shape[0] * D  # F({p_0}) = n D - colsum(p_0)
            weights = np.bincount(assign, minlength=k).astype(np.int64)
            objective = float(np.sum(gains))
        else:
            picks, weights, gains, objective = sharded_class(
                Xc, k, D, shard_size=int(options["shard_size"]), merge=bool(options.get("merge", False)),
                rng=rng, method_id=method_id, threads=threads, workers=options.get("workers"),
            )  # fmt: skip
        parts.append((rows[picks], weights, gains, objective))
    return p.selection(
        np.concatenate([q[0] for q in parts]),
        np.concatenate([q[1] for q in parts]),
        np.concatenate([q[2] for q in parts]),
        np.array([q[3] for q in parts]),
    )
