"""DP-SGD over the ranks of a torch.distributed group (torchrun), with the single-process mechanism.

    torchrun --nproc-per-node 2 -m crepe train --out runs/two ...

What each rank does (DESIGN.md section 12; docs/privacy.md section 15):
- Sampling: a training set's positions fall into BLOCKS public blocks (position i in
  block i mod BLOCKS), each block Poisson-sampled by a generator of its own
  (dp/sampling.py). Rank r samples the blocks b with b mod W = r: disjoint shards,
  each rank's own generators, and the union of the local batches is exactly one
  Poisson(q) draw over the whole set -- the same draw as a single process makes, so
  a W-rank run samples what the 1-rank run samples, for any W <= BLOCKS.
- Steps: every rank steps on every step, an empty local batch included (a noisy
  step of pure noise for the ranks that drew nothing); the clipped sums (and under
  adaptive clipping the unclipped counts) are all-reduced, rank 0 alone adds the
  noise, from the run's noise generator, and broadcasts the noisy sum: noise once.
- Randomness: rank 0 draws the run's key and broadcasts it (all ranks derive the
  same generators; each uses its own sampling blocks only); checkpoints gather the
  block generators' states from every rank, so rank 0's checkpoint is the one a
  single process writes.
- Files: rank 0 alone writes the run folder and prints.
- Failure: a rank that fails exits; torchrun stops the others (a collective with a
  peer gone raises), and the folder resumes from its last checkpoint, with any W.

Only the gloo backend: crepe trains on the CPU. The process group is joined from
torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) the first time
`current()` is called; without it, the run is the single process `SINGLE`.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

from crepe.config import UsageError

BLOCKS = 64  # sampling blocks: the most ranks a run can use (dp/sampling.py)
T = TypeVar("T")


class RankFailed(RuntimeError):
    """A collective failed: another rank of the run stopped (or the connection to it broke)."""


def _dist(op: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """torch.distributed's `op`, its failure said as what it means for the run (gloo raises a
    RuntimeError when a peer's connection closes)."""
    try:
        op(*args, **kwargs)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RankFailed(f"another rank of this run stopped ({first[:160]})") from None


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run: rank `rank` of `size`."""

    rank: int = 0
    size: int = 1

    @property
    def writes(self) -> bool:
        """Whether this rank writes the run folder and prints (rank 0)."""
        return self.rank == 0

    def blocks(self) -> range:
        """The sampling blocks this rank draws."""
        return range(self.rank, BLOCKS, self.size)

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place (one collective over their concatenation)."""
        if self.size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        _dist(torch.distributed.all_reduce, flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of the tensors on every rank, in place."""
        if self.size == 1 or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        _dist(torch.distributed.broadcast, flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's `obj` (picklable) on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        _dist(torch.distributed.broadcast_object_list, box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        _dist(torch.distributed.all_gather_object, out, obj)
        return out

    def first(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0, its result on every rank; a UsageError or RuntimeError raised there is raised on
        every rank (the others would otherwise wait for rank 0 in the next collective)."""
        if self.size == 1:
            return fn()
        result: tuple[str, Any] = ("ok", None)
        if self.writes:
            try:
                result = ("ok", fn())
            except (UsageError, RuntimeError) as e:
                self.broadcast_object((type(e).__name__, str(e)))
                raise
        kind, value = self.broadcast_object(result)
        if kind == "UsageError":
            raise UsageError(value)
        if kind == "RuntimeError":
            raise RuntimeError(value)
        return value


SINGLE = World()
_current: World | None = None


def current() -> World:
    """The run's world: joined from torchrun's environment on the first call (gloo), else SINGLE."""
    global _current
    if _current is not None:
        return _current
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _current = World(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return _current
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        _current = SINGLE
        return _current
    if size > BLOCKS:
        raise UsageError(f"a run uses at most {BLOCKS} ranks (its sampling blocks), got WORLD_SIZE={size}")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE={size} but {', '.join(missing)} unset: launch with torchrun "
                         "(torchrun --nproc-per-node N -m crepe train ...)")
    torch.distributed.init_process_group(backend="gloo")
    atexit.register(_leave)  # a process group left alive at exit aborts the process (gloo's threads)
    _current = World(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return _current


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
