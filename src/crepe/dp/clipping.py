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
  multiplier (sigma^-2 + sigma_b^-2)^(-1/2) (privacy/calibration.py `joint_noise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

AUTO_STABILITY = 0.01  # gamma of AUTO-S


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
