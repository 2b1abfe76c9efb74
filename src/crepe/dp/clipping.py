"""Clip rules: the per-example factor f(|g_i|) with |f(|g|) g| <= C, so one example moves the sum by at most C.

The DP optimizer multiplies the factor by the coreset weight w_i in [0, 1]
(DESIGN.md section 7), which keeps the bound. Each rule has a NumPy oracle
test (tests/test_dp_optimizer.py).
- flat (Abadi et al. 2016): min(1, C / |g|)   (Opacus' form: C / (|g| + 1e-6), at most 1);
- automatic (AUTO-S, Bu et al. 2023): C / (|g| + 0.01);
- adaptive (Andrew et al. 2021): flat, with C moved after each step towards the
  `quantile` of gradient norms: C <- C exp(-lr (b - quantile)), b the noisy share
  of unclipped examples (count + N(0, sigma_b^2), sigma_b = B/20, divided by the
  public expected batch size q m). The count comes from the step's own batch, so
  it is released WITH the step's gradient: one "train" entry at the joint noise
  multiplier (sigma^-2 + sigma_b^-2)^(-1/2) (`joint_noise`).
Torch-free at import (the run plan reads `step_noise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO_STABILITY = 0.01  # gamma of AUTO-S
COUNT_NOISE_SHARE = 20.0  # adaptive clipping: the count's noise std is B / 20 (Andrew et al. 2021)


@dataclass
class ClipRule:
    """A clip rule and its (possibly changing) bound C."""

    name: str
    max_grad_norm: float  # C (the current one, for adaptive)
    quantile: float = 0.5  # adaptive only
    lr: float = 0.2  # adaptive only

    def factor(self, norms: torch.Tensor) -> torch.Tensor:
        """(B,) factors for per-example gradient norms (B,)."""
        c = self.max_grad_norm
        if self.name == "automatic":
            return c / (norms + AUTO_STABILITY)
        return (c / (norms + 1e-6)).clamp(max=1.0)

    @property
    def adaptive(self) -> bool:
        return self.name == "adaptive"

    def update(self, noisy_unclipped_share: float) -> None:
        """Adaptive clipping's geometric step (Andrew et al. 2021, eq. 3), after a step."""
        if self.adaptive:
            self.max_grad_norm *= math.exp(-self.lr * (noisy_unclipped_share - self.quantile))


CLIP_RULES = ("flat", "automatic", "adaptive")


def make_clip_rule(name: str, *, max_grad_norm: float, quantile: float = 0.5, lr: float = 0.2) -> ClipRule:
    if name not in CLIP_RULES:
        raise ValueError(f"unknown clip rule {name!r}; valid: {', '.join(CLIP_RULES)}")
    return ClipRule(name, float(max_grad_norm), float(quantile), float(lr))


def count_noise(batch_size: int) -> float:
    """Noise std sigma_b of adaptive clipping's count of unclipped examples (sensitivity 1)."""
    return batch_size / COUNT_NOISE_SHARE


def joint_noise(sigma: float, count_sigma: float) -> float:
    """The noise multiplier of one adaptive-clipping step, gradient and count released together.

    Both come from the SAME Poisson batch, so they are one subsampled Gaussian, not two: in noise units
    the vector (sum / (sigma C), count / sigma_b) moves by at most sqrt(sigma^-2 + sigma_b^-2) when one
    example is zeroed out (its gradient by <= C, the count by <= 1), i.e. a Gaussian of noise multiplier
    (sigma^-2 + sigma_b^-2)^(-1/2) at the step's q (docs/privacy.md, "Clip rules"). 0 (epsilon
    infinite) if either part has no noise.
    """
    if sigma == 0 or count_sigma == 0:
        return 0.0
    return (sigma**-2 + count_sigma**-2) ** -0.5


def step_noise(sigma: float, *, clipping: str, batch_size: int) -> float:
    """The noise multiplier one DP-SGD step releases at: sigma, or under adaptive clipping the joint
    multiplier of its gradient and its count (sigma_b = count_noise(B))."""
    return joint_noise(sigma, count_noise(batch_size)) if clipping == "adaptive" else sigma
