"""Poisson batches over a training set of m examples, through Opacus' own sampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler


def poisson_batches(m: int, *, sample_rate: float, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index tensors into range(m): each position included independently with prob. sample_rate."""
    sampler = UniformWithReplacementSampler(num_samples=m, sample_rate=sample_rate, generator=generator, steps=steps)
    for batch in sampler:
        yield torch.tensor(batch, dtype=torch.int64)
