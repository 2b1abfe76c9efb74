"""Poisson batches over a training set of m examples, through Opacus' own sampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler


def poisson_batches(m: int, *, sample_rate: float, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index tensors into range(m): each position included independently with prob. sample_rate.
    An empty set (a Poisson draw can be one) gives `steps` empty batches: each still a noisy step."""
    if m == 0:
        yield from (torch.zeros(0, dtype=torch.int64) for _ in range(steps))
        return
    sampler = UniformWithReplacementSampler(num_samples=m, sample_rate=sample_rate, generator=generator, steps=steps)
    for batch in sampler:
        yield torch.tensor(batch, dtype=torch.int64)
