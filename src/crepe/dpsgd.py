"""DP-SGD pieces: a weighted Opacus DPOptimizer and a Poisson batch sampler.

clip-then-scale weighting (DESIGN.md section 3): each per-example gradient g_i
is clipped to C, then multiplied by w_i = gamma_i / max gamma <= 1, so one
example's contribution ||w_i clip(g_i)|| stays <= C and the Gaussian noise
sigma C keeps its meaning. The noisy sum is divided by the expected weighted
batch size q * sum_{j in S} w_j.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


class WeightedDPOptimizer(DPOptimizer):
    """DPOptimizer whose per-example clip factors are multiplied by weights in [0, 1].

    Set `sample_weights` (shape (B,), the current batch's w_i, in batch order)
    before each `step()`; None means all ones (plain Opacus DP-SGD).
    `expected_batch_size` (a float here) is the normaliser q * sum(w).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sample_weights: torch.Tensor | None = None

    def contribution_factors(self) -> torch.Tensor:
        """(B,) factor f_i so that example i contributes f_i * g_i to the sum: min(1, C/||g_i||) * w_i."""
        grads = self.grad_samples
        if len(grads[0]) == 0:
            return torch.zeros((0,), device=grads[0].device)
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in grads], dim=1).norm(2, dim=1)
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus' clip factor
        if self.sample_weights is not None:
            w = self.sample_weights.to(factor.device, factor.dtype)
            if w.shape != factor.shape:
                raise ValueError(f"sample_weights has shape {tuple(w.shape)}, batch is {tuple(factor.shape)}")
            if bool((w < 0).any()) or bool((w > 1).any()):
                raise ValueError("sample_weights must lie in [0, 1]: a weight above 1 would raise sensitivity")
            factor = factor * w
        return factor

    def clip_and_accumulate(self) -> None:
        factor = self.contribution_factors()
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            gs = self._get_flat_grad_sample(p).to(p.dtype)  # (B, *p.shape)
            grad = torch.einsum("i,i...", factor.to(gs.device, p.dtype), gs)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)


def poisson_batches(n: int, *, sample_rate: float, steps: int, generator: torch.Generator):
    """Yield `steps` index tensors; each position is included independently with prob. sample_rate
    (Opacus' UniformWithReplacementSampler rule, drawn from `generator`)."""
    for _ in range(steps):
        yield (torch.rand(n, generator=generator) < sample_rate).nonzero(as_tuple=False).reshape(-1)


def steps_per_epoch(sample_rate: float) -> int:
    """int(1 / q), Opacus' rule, at least 1."""
    return max(1, int(1.0 / sample_rate))
