"""Per-example last-layer gradient proxies in closed form and their privatisation (DESIGN.md section 2).

For cross-entropy with softmax p = softmax(W h + b) and one-hot label e_y:
  d loss / d logits = p - e_y                      ("logits" proxy, d = C)
  d loss / d [W, b] = (p - e_y) outer [h, 1]       ("last-layer" proxy, d = C (H + 1))
Both come from one batched forward pass in eval mode; no per-sample autograd.
"""

from __future__ import annotations

import torch
from torch import nn

from crepe.config import UsageError, check_choice, options

PROXIES = options()["proxy"].choices


@torch.no_grad()
def compute_proxies(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kind: str = "logits", batch_size: int = 2048
) -> torch.Tensor:
    """(n, d) float32 clean proxies of `model`, whose output must be the logits of an nn.Linear
    applied last (HEAD_REQUIRED): h is that layer's input, read by a forward hook.

    The model is put in eval mode and restored to its previous mode afterwards.
    """
    check_choice("proxy", kind, PROXIES)
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(y), batch_size):
            h, logits = head_input(model, x[s : s + batch_size])  # (b, H), (b, C)
            p = torch.softmax(logits, dim=1)
            g = p - nn.functional.one_hot(y[s : s + batch_size], p.shape[1]).to(p.dtype)  # (b, C)
            if kind == "last-layer":
                h1 = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)  # (b, H+1)
                g = (g[:, :, None] * h1[:, None, :]).reshape(len(g), -1)  # (b, C*(H+1))
            out.append(g)
    finally:
        model.train(was_training)
    return torch.cat(out).to(torch.float32).contiguous()


HEAD_REQUIRED = (
    "CRAIG's proxies (and dp-fedemb's local head) need a model whose output (n, C) is the output of an nn.Linear "
    "applied last (the logits, before any softmax), with a 2-D input (n, H)"
)


def head_input(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, logits): the model's output and the input of the nn.Linear that produced it; UsageError
    (HEAD_REQUIRED) when no nn.Linear's output is the model's output."""
    _, h, logits = head_call(model, x)
    return h, logits


def head_call(model: nn.Module, x: torch.Tensor) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """(the head: the nn.Linear whose output is the model's output, its input h (n, H), the logits)."""
    seen: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    for m, h, out in seen:
        if out is logits and h.ndim == 2 and logits.ndim == 2:
            return m, h, logits
    why = "its output is not the output of an nn.Linear" if seen else "it has no nn.Linear"
    raise UsageError(f"{HEAD_REQUIRED}; {type(model).__name__}: {why} of 2-D input")


def privatise(
    proxies: torch.Tensor, *, clip: float, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Clip each row to L2 norm <= clip, then add N(0, (sigma * clip)^2) to every coordinate.

    Under zero-out adjacency this release is a Gaussian mechanism with
    sensitivity `clip` and noise multiplier `sigma` (sigma = 0: no privacy).
    """
    norms = proxies.norm(dim=1, keepdim=True)  # (n, 1)
    clipped = proxies * (clip / norms.clamp(min=1e-12)).clamp(max=1.0)
    if sigma == 0:
        return clipped
    noise = torch.randn(proxies.shape, generator=generator, dtype=proxies.dtype)
    return clipped + noise * (sigma * clip)
