"""Base optimizers by name: sgd (with momentum), adam, and adam-bc (DP-AdamBC, Tang et al. 2024).

DP-AdamBC removes the DP noise's variance from Adam's second moment:
theta <- theta - lr m_hat / sqrt(max(v_hat - s2, gamma')), with s2 the noise
variance per coordinate of the privatised gradient, (sigma C / normaliser)^2,
which the DP optimizer sets (`noise_variance`) before every step. It reads no
data: post-processing, no extra privacy.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

BASE_OPTIMIZERS = ("sgd", "adam", "adam-bc")


class AdamBC(torch.optim.Optimizer):
    """Adam whose second moment is corrected for the known DP noise variance (`noise_variance`)."""

    def __init__(
        self, params: Iterable[torch.Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999), gamma: float = 1e-9
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "gamma": gamma})
        self.noise_variance = 0.0

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float64)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = float(st["step"])
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat = m / (1 - b1**t)
                v_hat = v / (1 - b2**t)
                denom = (v_hat - self.noise_variance).clamp(min=group["gamma"]).sqrt()
                p.addcdiv_(m_hat, denom, value=-group["lr"])
        return None


def make_base_optimizer(name: str, params: Iterable[torch.Tensor], *, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    if name not in BASE_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(BASE_OPTIMIZERS)}")
    if momentum and name != "sgd":
        raise ValueError(f"--momentum applies to sgd only, not {name}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return AdamBC(params, lr=lr)
