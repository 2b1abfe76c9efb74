"""Private set generation by DP gradient matching (DESIGN.md section 8).

Chen, Kerkouche & Fritz, "Private Set Generation with Discriminative
Information" (NeurIPS 2022), written afresh on torch.func. `generate` learns
`spc` synthetic images per class; per iteration:

    net <- fresh ConvNet (from init_gen)
    repeat outer_loops times:
        repeat batch_loops times:                      # one release each
            B_t <- Poisson batch of the WHOLE training set, rate q = B / n
            g   <- (sum_{i in B_t} clip_C(grad_i) + N(0, (sigma C)^2 I)) / B
            images <- SGD step on  D(grad of the synthetic loss, g)
        net <- inner_steps SGD steps on the synthetic set   (not after the last outer loop)

Privacy. The noisy real gradient g is the only access to the real data; each
one is a Poisson-subsampled Gaussian mechanism with noise multiplier sigma and
sample rate q = batch_size / n, under zero-out adjacency: one example enters a
release only through its own clipped gradient (L2 norm <= C over ALL
parameters together), so the noisy SUM has sensitivity C, and dividing by the
public expected batch size B = q n (never the realised one) is
post-processing. `generate` calls `on_release(sigma, q)` once per release;
the caller composes them in its ledger (Schedule.releases gives the count).
The synthetic images start as N(0, 1) noise in the normalised pixel scale from
init_gen (as the paper's code does), never from real images, and everything
after the noisy gradients (image updates, inner training, classifiers trained
on the result) is post-processing. Labels of the synthetic set are fixed and
public (spc of each class). The real labels enter only through the clipped
per-example gradients, so they are covered by epsilon too, except for one
check outside the mechanism: `generate` refuses spc larger than the smallest
class (a go/no-go on the class counts, which crepe's per-class runs treat as
public anyway; DESIGN.md section 4). The refusal says only that some class is
too small, never a count.

Matching is whole-batch, as in the paper's DP code: the real batch holds all
classes together and the synthetic gradient is that of the mean loss over all
synthetic images. Per-class matching (the non-private Dataset Condensation
recipe) would need one Poisson batch per class, i.e. class-conditional sample
rates from the class sizes; it is not offered.

The distance D (Schedule.match):
- "channel" (default, the paper's): for each weight tensor, 1 - cos between
  real and synthetic gradients per output unit (a conv filter, a row of the
  linear layer), summed over units and layers; 1-D parameters (biases, norm
  affine) are left out;
- "layer": 1 - cos per parameter tensor (all of them), summed over tensors.
Cosines use ||a|| ||b|| + 1e-6 in the denominator (an empty, noise-free
release has g = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from crepe.config import UsageError, check_choice  # UsageError is a ValueError: bad input, exit 2
from crepe.models import ConvNet

MATCHES = ("channel", "layer")
IMAGE_SHAPE = (1, 28, 28)
COS_EPS = 1e-6
Params = dict[str, torch.Tensor]


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: object, *, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):  # type: ignore[operator]
        raise UsageError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class Schedule:
    """A generation schedule. Defaults are a CPU-sized one (the paper's: `Schedule.paper(spc)`).

    spc: synthetic images per class; iterations: fresh networks;
    outer_loops x batch_loops: noisy real gradients (releases) per network;
    batch_size: EXPECTED real batch size B (q = B / n); clip: per-example L2
    bound C; lr_images, momentum_images: SGD on the images (the momentum buffer
    persists across iterations, as in the paper); inner_steps, lr_net:
    full-batch SGD steps of the network on the synthetic set after each outer
    loop but the last (one step = one epoch of the paper's when classes x spc
    <= 256, its training batch); width, depth: the ConvNet; match: "channel"
    or "layer" (module docstring).
    """

    spc: int = 10
    iterations: int = 100
    outer_loops: int = 10
    batch_loops: int = 1
    batch_size: int = 256
    clip: float = 0.1
    lr_images: float = 0.1
    momentum_images: float = 0.5
    inner_steps: int = 50
    lr_net: float = 0.01
    width: int = 32
    depth: int = 3
    match: str = "channel"

    def __post_init__(self) -> None:
        for name in ("spc", "iterations", "outer_loops", "batch_loops", "batch_size", "width", "depth"):
            _int_at_least(name, getattr(self, name), 1)
        _int_at_least("inner_steps", self.inner_steps, 0)
        _number("clip", self.clip, positive=True)
        for name in ("lr_images", "momentum_images", "lr_net"):
            _number(name, getattr(self, name), positive=False)
        check_choice("match", self.match, MATCHES)

    def releases(self, n: int) -> tuple[int, float]:
        """(steps, sample_rate): the noisy real gradients on n training examples, each a
        Poisson-subsampled Gaussian at q = batch_size / n (what the accountant composes)."""
        _int_at_least("n (training examples)", n, 1)
        if self.batch_size > n:
            raise UsageError(f"batch_size must be in 1..{n} (the training examples), got {self.batch_size}")
        return self.iterations * self.outer_loops * self.batch_loops, self.batch_size / n

    @classmethod
    def paper(cls, spc: int) -> Schedule:
        """The paper code's defaults (GPU-sized): 1000 iterations x outer x 10 batch loops,
        B = 256, C = 0.1, lr_img 0.1 (momentum 0.5), lr_net 0.01, width 128, depth 3, and its
        (outer, inner) loops per spc. (Its loop runs iterations 0..1000, one more than it accounts.)"""
        loops = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
        if spc not in loops:
            raise UsageError(f"the paper defines loops for spc in {sorted(loops)}, got {spc!r}")
        outer, inner = loops[spc]
        return cls(spc=spc, iterations=1000, outer_loops=outer, batch_loops=10, inner_steps=inner, width=128)


@dataclass
class GenerationState:
    """Where generation stands after `iteration` completed iterations: enough to resume
    bit-identically. Secret (it holds the noise generator's state, i.e. all past and future noise):
    keep it with the raw data. `to_dict()` holds tensors and primitives only, so
    torch.save(...) / torch.load(..., weights_only=True) round-trips it."""

    iteration: int
    images: torch.Tensor  # (classes*spc, 1, 28, 28) float32, normalised scale
    momentum: torch.Tensor  # same shape: the images' SGD momentum buffer
    noise_gen: torch.Tensor  # Generator.get_state() (uint8)
    sample_gen: torch.Tensor
    init_gen: torch.Tensor
    sigma: float
    n: int
    classes: int
    schedule: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationState:
        return cls(**d)


def poisson_batch(n: int, q: float, *, generator: torch.Generator) -> torch.Tensor:
    """Indices (b,) int64 of a Poisson sample: each of n examples independently with prob q
    (b may be 0). Draws exactly n uniforms from `generator`, whatever the outcome."""
    from crepe.dp.sampling import poisson_batches

    return next(poisson_batches(n, sample_rate=q, steps=1, generator=generator))


def per_example_grads(net: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 64) -> Params:
    """{name: (b, *shape)}: the gradient of each example's cross-entropy loss (torch.func)."""

    def loss_one(p: Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk)(params, x, y)


def noisy_real_gradient(
    net: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, *,
    clip: float, sigma: float, expected_batch_size: float, noise_gen: torch.Generator,
) -> Params:
    """One release: (sum_i g_i min(1, C / ||g_i||) + N(0, (sigma C)^2 I)) / expected_batch_size.

    x (b, 1, 28, 28), y (b,), b >= 0: the Poisson batch (empty: pure noise).
    ||g_i|| is the L2 norm over all parameters together. Noise is drawn for every
    parameter in `params` order, sigma = 0 included (generator use is fixed).
    """
    if len(y) > 0:
        g = per_example_grads(net, params, x, y)
        norms = torch.stack([t.flatten(1).pow(2).sum(1) for t in g.values()]).sum(0).sqrt()  # (b,)
        factor = (clip / norms).clamp(max=1.0)  # a zero gradient gives inf -> 1
        sums = {k: torch.einsum("b,b...->...", factor, t) for k, t in g.items()}
    else:
        sums = {k: torch.zeros_like(p) for k, p in params.items()}
    out = {}
    for k, s in sums.items():
        noise = torch.randn(s.shape, generator=noise_gen, device=noise_gen.device).to(s.device)
        out[k] = (s + (sigma * clip) * noise) / expected_batch_size
    return out


def _cos_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over rows of 1 - cos(a_r, b_r); a, b (rows, d)."""
    return (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + COS_EPS)).sum()


def match_distance(g_syn: Params, g_real: Params, *, match: str) -> torch.Tensor:
    """The matching loss D(g_syn, g_real), a scalar (module docstring)."""
    check_choice("match", match, MATCHES)
    total = torch.zeros((), device=next(iter(g_real.values())).device)
    for k, r in g_real.items():
        s = g_syn[k]
        if match == "layer":
            total = total + _cos_distance(s.reshape(1, -1), r.reshape(1, -1))
        elif r.dim() > 1:
            total = total + _cos_distance(s.reshape(s.shape[0], -1), r.reshape(r.shape[0], -1))
    return total


def _sgd_net(net: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float) -> Params:
    """`steps` full-batch SGD steps of the network on the (detached) synthetic set."""
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(net, params, (images,)), labels)
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(params.items(), grads)}
    return {k: v.detach() for k, v in params.items()}


def _check_inputs(x: torch.Tensor, y: torch.Tensor, schedule: Schedule, sigma: float, classes: int) -> None:
    _int_at_least("classes", classes, 1)
    _number("sigma", sigma, positive=False)
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE or y.dim() != 1 or len(y) != len(x):
        raise UsageError(f"x must be (n, 1, 28, 28) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= classes:
        raise UsageError(f"labels must lie in 0..{classes - 1} (classes={classes}) and n >= 1")
    if schedule.spc > int(torch.bincount(y.cpu(), minlength=classes).min()):  # the count itself is never printed
        raise UsageError(
            f"spc (--images-per-class) = {schedule.spc} exceeds the number of training examples of some class; "
            "allowed: spc <= the size of the smallest class (the private class counts are not printed)"
        )
    schedule.releases(len(y))  # batch_size <= n


def generate(
    x: torch.Tensor, y: torch.Tensor, *, schedule: Schedule, sigma: float,
    noise_gen: torch.Generator, sample_gen: torch.Generator, init_gen: torch.Generator,
    on_release: Callable[[float, float], None], classes: int = 10,
    state: GenerationState | None = None, on_checkpoint: Callable[[GenerationState], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learn synthetic images by DP gradient matching (module docstring).

    x (n, 1, 28, 28) float32 normalised, y (n,) int64 in 0..classes-1: the whole
    training set. Returns images (classes*spc, 1, 28, 28) float32 in the
    normalised scale and labels (classes*spc,) int64 = [0]*spc + [1]*spc + ...
    noise_gen: DP noise, sample_gen: Poisson batches (both secret);
    init_gen: the initial images and every fresh network.
    on_release(sigma, q) is called once per noisy real gradient, before it is
    used. on_checkpoint(state) is called after each iteration; pass a state to
    resume after its iteration (the generators are reset to its states, and the
    schedule, sigma, n and classes must match it).
    """
    _check_inputs(x, y, schedule, sigma, classes)
    n = len(y)
    _, q = schedule.releases(n)
    device = x.device
    labels = torch.arange(classes, device=device).repeat_interleave(schedule.spc)  # (classes*spc,)
    if state is None:
        start = 0
        images = torch.randn((classes * schedule.spc, *IMAGE_SHAPE), generator=init_gen, device=init_gen.device).to(device)
        momentum = torch.zeros_like(images)
    else:
        have = (state.schedule, state.sigma, state.n, state.classes)
        want = (asdict(schedule), float(sigma), n, classes)
        if have != want:
            raise UsageError(f"state was made with (schedule, sigma, n, classes) = {have}, not {want}")
        start = state.iteration
        images, momentum = state.images.clone().to(device), state.momentum.clone().to(device)
        for gen, saved in ((noise_gen, state.noise_gen), (sample_gen, state.sample_gen), (init_gen, state.init_gen)):
            gen.set_state(saved)

    for it in range(start, schedule.iterations):
        net = ConvNet(schedule.width, schedule.depth, classes, generator=init_gen).to(device)
        params = {k: v.detach() for k, v in net.named_parameters()}
        for ol in range(schedule.outer_loops):
            for _ in range(schedule.batch_loops):
                idx = poisson_batch(n, q, generator=sample_gen).to(device)
                on_release(float(sigma), q)
                g_real = noisy_real_gradient(
                    net, params, x[idx], y[idx], clip=schedule.clip, sigma=sigma,
                    expected_batch_size=schedule.batch_size, noise_gen=noise_gen,
                )
                img = images.detach().requires_grad_()
                p_syn = {k: v.detach().requires_grad_() for k, v in params.items()}
                loss_syn = F.cross_entropy(functional_call(net, p_syn, (img,)), labels)
                g_syn = dict(zip(p_syn, torch.autograd.grad(loss_syn, list(p_syn.values()), create_graph=True)))
                (g_img,) = torch.autograd.grad(match_distance(g_syn, g_real, match=schedule.match), img)
                momentum = schedule.momentum_images * momentum + g_img  # torch.optim.SGD's rule (dampening 0)
                images = (images - schedule.lr_images * momentum).detach()
            if ol < schedule.outer_loops - 1:
                params = _sgd_net(net, params, images, labels, steps=schedule.inner_steps, lr=schedule.lr_net)
        if on_checkpoint is not None:
            on_checkpoint(GenerationState(
                iteration=it + 1, images=images.clone(), momentum=momentum.clone(),
                noise_gen=noise_gen.get_state(), sample_gen=sample_gen.get_state(), init_gen=init_gen.get_state(),
                sigma=float(sigma), n=n, classes=classes, schedule=asdict(schedule),
            ))
    return images.detach().to(torch.float32), labels.to(torch.int64)


def train_on_synthetic(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
    epochs: int, lr: float, batch_size: int = 256, generator: torch.Generator,
) -> nn.Module:
    """Non-private training of `model` on the synthetic set (post-processing), in place.

    The paper's evaluation recipe: SGD, momentum 0.9, weight decay 5e-4,
    cross-entropy, lr x 0.1 after half the epochs; batches from a shuffle drawn
    from `generator`. images (m, 1, 28, 28) normalised, labels (m,) int64.
    """
    _int_at_least("epochs", epochs, 1)
    _int_at_least("batch_size", batch_size, 1)
    _number("lr", lr, positive=True)
    if len(images) != len(labels) or len(labels) == 0:
        raise UsageError(f"images and labels must be non-empty and of one length, got {len(images)} and {len(labels)}")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for epoch in range(epochs):
        if epoch == epochs // 2 + 1:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(len(labels), generator=generator, device=generator.device).to(images.device)
        for start in range(0, len(labels), batch_size):
            b = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(images[b]), labels[b]).backward()
            opt.step()
    return model


def save_synthetic(folder: str | Path, images: torch.Tensor, labels: torch.Tensor, *, mean: float, std: float,
                   dataset: str | None = None) -> tuple[Path, Path]:
    """Write `synthetic.npz` and `synthetic.png` into `folder`; return their paths.

    The npz (plain numpy: np.load(path)) holds images (m, 1, 28, 28) float32 in
    the NORMALISED scale (what classifiers train on; key scale = "normalised"),
    pixel = images * std + mean, with mean and std as keys, and labels (m,)
    int64. The PNG shows one row per class in pixel scale, clipped to [0, 1],
    under a title; each row is named by its class (`dataset`: "fashion-mnist"
    names its ten classes, "mnist" its digits; otherwise the label number).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    imgs = images.detach().cpu().to(torch.float32).numpy()
    labs = labels.detach().cpu().to(torch.int64).numpy()
    if imgs.ndim != 4 or imgs.shape[1:] != IMAGE_SHAPE or labs.shape != (len(imgs),):
        raise UsageError(f"images must be (m, 1, 28, 28) and labels (m,), got {imgs.shape} and {labs.shape}")
    npz = folder / "synthetic.npz"
    np.savez(npz, images=imgs, labels=labs, scale=np.array("normalised"), mean=np.float32(mean), std=np.float32(std))

    classes = np.unique(labs)
    per = max(int((labs == c).sum()) for c in classes)
    pixels = np.clip(imgs[:, 0] * std + mean, 0.0, 1.0)  # (m, 28, 28)
    grid = np.ones((len(classes) * 29 + 1, per * 29 + 1), dtype=np.float32)  # 1-pixel white gutters
    for r, c in enumerate(classes):
        for j, img in enumerate(pixels[labs == c]):
            grid[1 + 29 * r : 29 * (r + 1), 1 + 29 * j : 29 * (j + 1)] = img
    names = {"fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                               "Ankle boot"),
             "mnist": tuple(f"digit {d}" for d in range(10))}.get(dataset or "", ())
    label_of = [names[int(c)] if int(c) < len(names) else f"class {int(c)}" for c in classes]
    title = (f"Synthetic training set (private-set)\n{dataset + ': ' if dataset else ''}{len(labs)} images, {per} per class"
             "\npixels in [0, 1], one row per class")
    fig, ax = plt.subplots(figsize=(max(3.2, 0.4 * per + 1.2), 0.4 * len(classes) + 0.8), dpi=120)
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([14.5 + 29 * r for r in range(len(classes))], label_of, fontsize=6)
    ax.set_xticks([])
    ax.set_ylabel("class", fontsize=7)
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    png = folder / "synthetic.png"
    fig.savefig(png)
    plt.close(fig)
    return npz, png
