"""Magnitude pruning masks for DP training (DESIGN.md section 13; Watson et al. 2023).

A mask keeps the largest weights by magnitude of every nn.Conv2d and nn.Linear layer (`prunable`;
biases and norms are never pruned): one threshold over all of them (`scope="global"`) or one per
layer. Exactly round(s N) weights of the N in scope go (ties broken by position). The optimizers
(dp/optimizer.py) multiply every per-example gradient by the mask before clipping and the noisy
sum after the noise, so a pruned coordinate gets no gradient and no noise: the noise lives in the
d_eff = (trainable parameters - pruned) coordinates left, and the pruned weights stay exactly zero.

When (`schedule`): once at initialisation (--prune-at init), once after --prune-warmup dense
epochs (warmup), or iteratively (Zhu & Gupta 2017's cubic ramp): at the start of epochs w, w + 1,
..., w + R - 1 (R = max(1, (E - w) // 2) of the E - w epochs after the warm-up), sparsity
s (1 - (1 - i / R)^3) at the i-th (i = 1..R), reaching s half way; each mask keeps no weight an
earlier one pruned.

Where the mask may come from without a privacy cost: the initial weights (drawn from --seed, no
data) or the weights DP-SGD released (post-processing). Anything else computed from the private
data (clean gradients, activations) would be a release to account for: not offered.
"""

from __future__ import annotations

import math

import torch
from torch import nn

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape (True: kept)


def prunable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every conv and linear layer, in module order."""
    return [(f"{name}.weight" if name else "weight", m.weight) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]


def _keep_largest(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A bool mask of `values`' shape dropping round(sparsity * n) of the smallest |values|."""
    flat = values.detach().abs().flatten()
    drop = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if drop:
        keep[torch.argsort(flat, stable=True)[:drop]] = False
    return keep.reshape(values.shape)


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: str = "global") -> Masks:
    """The masks pruning `sparsity` of the prunable weights by magnitude, globally or per layer."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"unknown prune scope {scope!r}; valid: global, layer")
    weights = prunable(model)
    if scope == "layer":
        return {name: _keep_largest(w, sparsity) for name, w in weights}
    keep = _keep_largest(torch.cat([w.detach().flatten() for _, w in weights]), sparsity)
    out, start = {}, 0
    for name, w in weights:
        out[name] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return out


def schedule(prune_at: str, sparsity: float, *, warmup: int, epochs: int) -> dict[int, float]:
    """{epoch (0-based, at its start): the sparsity a mask is taken at then}; init masks are taken
    before the first epoch, apart (empty here)."""
    if prune_at == "init" or sparsity == 0:
        return {}
    if prune_at == "warmup":
        return {warmup: sparsity}
    ramp = max(1, (epochs - warmup) // 2)
    return {warmup + i - 1: sparsity * (1 - (1 - i / ramp) ** 3) for i in range(1, ramp + 1)}


def pairs(model: nn.Module, masks: Masks) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, mask) for the optimizers; a mask naming no parameter of `model` is refused."""
    params = dict(model.named_parameters())
    missing = sorted(set(masks) - set(params))
    if missing:
        raise ValueError(f"masks name parameters the model does not have: {missing}")
    return [(params[name], m.to(params[name].device)) for name, m in masks.items()]


def apply(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights."""
    with torch.no_grad():
        for p, m in pairs(model, masks):
            p.mul_(m)


def realised(model: nn.Module) -> dict[str, object]:
    """The fraction of exact zeros among the prunable weights, overall and per layer."""
    weights = prunable(model)
    zeros = {name: int((w == 0).sum()) for name, w in weights}
    total = sum(w.numel() for _, w in weights)
    return {"overall": sum(zeros.values()) / total if total else 0.0,
            "layers": {name: zeros[name] / w.numel() for name, w in weights}}


def effective_dimension(params: list[torch.Tensor], masked: list[tuple[nn.Parameter, torch.Tensor]]) -> int:
    """d_eff: the coordinates the noise lives in (all `params` minus those the masks prune)."""
    return sum(p.numel() for p in params) - sum(int((~m).sum()) for _, m in masked)


def noise_to_signal(sigma: float, max_grad_norm: float, d_eff: int, signal_norm: float) -> float:
    """sigma C sqrt(d_eff), the noise's expected norm, against the norm of the clipped sum."""
    return math.inf if signal_norm == 0 else sigma * max_grad_norm * math.sqrt(d_eff) / signal_norm
