"""Poisson batches over a training set of m examples, through Opacus' own sampler, and the
rules that fix a set's sample rate and steps per epoch from public sizes."""

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
