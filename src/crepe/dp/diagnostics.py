"""Clipping diagnostics (DESIGN.md section 7): computed on the side from CLEAN per-example
gradients of a fixed probe of training examples; never used by training and NOT covered
by epsilon (they read private data outside the ledger). Cost: one forward and backward
pass with per-example gradients over the probe per epoch (512 examples by default).

With g_i the per-example gradients and c_i = f_i g_i their clipped versions:
- frac_clipped: share of examples with |g_i| > C;
- clip_bias: |mean c - mean g| / |mean g|;  clip_cos: cos(mean c, mean g), overall and per class;
- snr: |mean c| / (sigma C sqrt(d) / B), the clipped signal against the noise's norm at batch size B;
- grad_norm_q10 / q50 / q90: quantiles of |g_i|.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crepe.dp.clipping import ClipRule

PROBE_SIZE = 512


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def clipping_diagnostics(
    net: nn.Module,  # an Opacus GradSampleModule (loss_reduction="sum")
    params: list[torch.Tensor],
    rule: ClipRule,
    x: torch.Tensor,  # (P, 1, 28, 28) the probe
    y: torch.Tensor,  # (P,)
    *,
    sigma: float,
    batch_size: float,
) -> dict[str, Any]:
    out = net(x)
    nn.functional.cross_entropy(out, y, reduction="sum").backward()
    g = torch.cat([p.grad_sample.reshape(len(y), -1) for p in params], dim=1)  # (P, d)
    for p in params:
        p.grad_sample = None
        p.grad = None
    norms = g.norm(dim=1)  # (P,)
    c = rule.factor(norms)[:, None] * g  # (P, d)
    g_bar, c_bar = g.mean(0), c.mean(0)
    C = rule.max_grad_norm
    q = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9], dtype=norms.dtype))
    per_class = {str(int(k)): _cos(c[y == k].mean(0), g[y == k].mean(0)) for k in torch.unique(y)}
    return {
        "frac_clipped": float((norms > C).float().mean()),
        "clip_bias": float((c_bar - g_bar).norm() / g_bar.norm()),
        "clip_cos": _cos(c_bar, g_bar),
        "clip_cos_per_class": per_class,
        "snr": float(c_bar.norm() / (sigma * C * g.shape[1] ** 0.5 / batch_size)),
        "grad_norm_q10": float(q[0]),
        "grad_norm_q50": float(q[1]),
        "grad_norm_q90": float(q[2]),
        "clip_norm": C,
    }
