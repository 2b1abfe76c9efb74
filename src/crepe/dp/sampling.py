"""Poisson batches over a training set of m examples, and the rules that fix a set's sample
rate and steps per epoch from public sizes.

`block_batches` (DP-SGD's epochs): position i of the set lies in block i mod BLOCKS,
and each block draws its positions' inclusion from a generator of its own
(`block_names`): position by position independent with probability q, so the union
over the blocks is one Poisson(q) draw over range(m). A rank of a distributed run
draws its own blocks only (dp/distributed.py); one process draws them all, the
same draw. `poisson_batches` (user sampling, private-set generation): Opacus' own
sampler on one generator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sample_rate(batch_size: int, set_size: float) -> float:
    """q = B / |S| (|S| the public size of the set: for a Poisson subset its expected size), at most 1."""
    return min(1.0, batch_size / set_size)


def steps_per_epoch(sample_rate: float) -> int:
    """int(1 / q), Opacus' rule, at least 1."""
    return max(1, int(1.0 / sample_rate))


def block_names() -> tuple[str, ...]:
    """The names of the sampling blocks' generators (one key, independent streams: dp/secret_rng.py)."""
    from crepe.dp.distributed import BLOCKS

    return tuple(f"batches{b:02d}" for b in range(BLOCKS))


def block_batches(m: int, *, sample_rate: float, steps: int, generators: dict[str, torch.Generator],
                  blocks: range) -> Iterator[torch.Tensor]:
    """`steps` sorted index tensors into range(m): the positions of `blocks` (of the BLOCKS) each
    drew, every position included independently with prob. sample_rate by its block's generator.
    A step may draw nothing: it is still a noisy step."""
    import torch

    from crepe.dp.distributed import BLOCKS

    names = block_names()
    own = [(torch.arange(b, max(b, m), BLOCKS), generators[names[b]]) for b in blocks]
    for _ in range(steps):
        drawn = [pos[torch.rand(len(pos), generator=g) < sample_rate] for pos, g in own if len(pos)]
        yield torch.sort(torch.cat(drawn)).values if drawn else torch.zeros(0, dtype=torch.int64)


def poisson_batches(m: int, *, sample_rate: float, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index tensors into range(m): each position included independently with prob. sample_rate.
    An empty set (a Poisson draw can be one) gives `steps` empty batches: each still a noisy step."""
    import torch
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    if m == 0:
        yield from (torch.zeros(0, dtype=torch.int64) for _ in range(steps))
        return
    sampler = UniformWithReplacementSampler(num_samples=m, sample_rate=sample_rate, generator=generator, steps=steps)
    for batch in sampler:
        yield torch.tensor(batch, dtype=torch.int64)
