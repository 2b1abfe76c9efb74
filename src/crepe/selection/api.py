"""crepe.select: CRAIG per-class facility location, maximised by greedy, in C++.

Option checks and the choice of engine; the engines (cpu, cuda; the
stochastic and sharded ones of engines.py) are imported only when a selection
runs, so `import crepe` loads neither the extension nor torch.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

from crepe.selection.engines import Engine, check_options
from crepe.selection.problem import is_torch_tensor, prepare
from crepe.selection.result import Selection

Method = Literal["lazy", "naive"]
METHODS: dict[str, int] = {"naive": 0, "lazy": 1}
Device = Literal["cpu", "cuda"]
DEVICES = ("cpu", "cuda")


class UnverifiedCUDAWarning(UserWarning):
    """The CUDA engine has not yet been run on a GPU by crepe's tests."""


@functools.cache  # once per process (cache_clear() re-arms it, for tests)
def warn_unverified_cuda() -> None:
    warnings.warn(
        "crepe.select's CUDA path has not been verified on hardware yet: its kernels have never run "
        "on a GPU in crepe's tests; check results against device='cpu' before relying on them",
        UnverifiedCUDAWarning,
        stacklevel=3,  # the caller of crepe.select
    )


def select(
    X: Any,
    y: Any = None,
    *,
    fraction: float | None = None,
    k: int | None = None,
    method: Method = "lazy",
    threads: int | None = None,
    device: Device | None = None,
    engine: Engine = "exact",
    epsilon: float | None = None,
    shard_size: int | None = None,
    merge: bool | None = None,
    seed: int | None = None,
    workers: Any = None,
) -> Selection:
    """Select a CRAIG coreset: per-class facility location, greedy.

    Args:
        X: (n, d) float32 or float64 numpy array or CPU torch tensor of
            per-example gradient proxies. A C-contiguous input is read in place;
            other layouts are copied once. NaN/Inf are rejected.
        y: optional (n,) integer labels. Classes are solved independently; None
            means one class.
        fraction: share of each class to pick: k_c = max(1, floor(f * n_c + 0.5)),
            at most n_c. Exactly one of fraction and k.
        k: picks per class (every class must have at least k points).
        method: "lazy" (fast) or "naive" (re-evaluates every candidate at every
            step; for verification). Both return the same picks. The exact
            engine's, also on each shard of engine="sharded".
        threads: OpenMP threads (default: OMP_NUM_THREADS or all cores). Results
            do not depend on it. CPU engine only.
        device: where to compute. None: where X lives (a CUDA tensor runs on
            its GPU, on torch's current stream, without a copy to the host).
            "cpu" copies a CUDA X to the host first; "cuda" moves host X to the
            current GPU (needs torch with CUDA and crepe built with its CUDA
            extension). On a GPU, a torch y must be on X's device. Both engines
            return the same Selection, bitwise. The CUDA path has not been
            verified on hardware yet: it warns once per process
            (`UnverifiedCUDAWarning`).
        engine: "exact" (default): the greedy above. For classes too large for
            it (its cost grows as n^2 d; docs/scale.md), two documented
            approximations, CPU only, each with its own options:
            "stochastic": stochastic greedy (Mirzasoleiman et al. 2015): each
            step takes the best of ceil((n_c/k_c) ln(1/epsilon)) random
            candidates; F >= (1 - 1/e - epsilon) OPT in expectation.
            "sharded": each class split at random (independently of X) into
            shards of at most `shard_size` points, the exact engine (`method`)
            on each with its proportional share of the budget, weights counted
            within the shard; `merge=True` adds a GreeDi merge (the exact
            engine again on the union of the shards' picks, weights counted
            over the whole class). `gains`, `objective` and `weights` keep
            their meaning, up to rounding; for the unmerged sharded engine
            `objective` is the value of the assignment the weights encode (each
            point to its shard's pick), a lower bound on F(S).
        epsilon: engine="stochastic" only (required): in (0, 1).
        shard_size: engine="sharded" only (required): the most points per
            shard; every shard needs a pick, so at least ceil(n_c / k_c).
        merge: engine="sharded" only: the GreeDi merge (default False).
        workers: engine="sharded" only: who solves the shards. None: this
            process, one after the other; "torch.distributed": the ranks of
            the current process group (call select on every rank with the
            same arguments; each solves its share, every rank gets the whole
            selection); a Dask distributed.Client: one task per shard. The
            selection does not depend on it.
        seed: the stochastic and sharded engines' randomness (candidate
            samples, shard splits): an int for a reproducible selection, None
            for fresh OS entropy. It needs no secrecy: selection is
            post-processing of the (noised) proxies.

    Returns:
        A frozen `Selection` of read-only numpy arrays (indices, weights, gains,
        labels, classes, class_sizes, objective; see its docstring). Torch
        inputs, CPU or CUDA, come back as numpy arrays too: the results are
        small, and numpy keeps `import crepe` free of torch.

    Within a class, distances are Euclidean, similarity is s_ij = D_c - d_ij
    with D_c the largest distance in the class, and F(S) = sum_i max_{j in S}
    s_ij. Among equal gains the lowest row index (within the class) is picked;
    a point equally near to two picks counts toward the earlier one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {sorted(METHODS)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if device is not None and device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {list(DEVICES)} or None (where X lives)")
    given = {"epsilon": epsilon, "shard_size": shard_size, "merge": merge, "seed": seed, "workers": workers}
    options = {name: value for name, value in given.items() if value is not None}
    check_options(engine, options)
    if engine == "stochastic" and method != "lazy":
        raise ValueError(f"method={method!r} applies to the exact engine (and the sharded engine's shards), "
                         "not engine='stochastic'")
    if engine != "exact":
        if device == "cuda" or (device is None and is_torch_tensor(X) and X.device.type == "cuda"):
            raise ValueError(f"engine={engine!r} runs on the CPU only; pass host X or device='cpu'")
        from crepe.selection import engines

        Xh = X.detach().cpu() if is_torch_tensor(X) else X
        return engines.run(prepare(Xh, y, fraction, k), engine, options, method_id=METHODS[method], threads=threads)
    on_cuda = is_torch_tensor(X) and X.device.type == "cuda"
    if (device or ("cuda" if on_cuda else "cpu")) == "cuda":
        from crepe.selection import cuda

        p = cuda.prepare(X, y, fraction, k)
        warn_unverified_cuda()  # after the checks: a refused call has nothing to warn about
        return cuda.run(p, method_id=METHODS[method])[0]
    if on_cuda:
        X = X.detach().cpu()  # device="cpu": an explicit copy to the host

    from crepe.selection import cpu

    return cpu.run(prepare(X, y, fraction, k), method_id=METHODS[method], threads=threads)
