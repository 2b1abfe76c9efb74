"""Fixed front ends: a transform of every image before the model, with no parameters and no data
statistics, so that training on its output is training on the images (same ledger, same epsilon).

scatternet: the scattering transform of Tramer & Boneh (2021, "Differentially Private Learning
Needs Better Features"), computed by Kymatio (`Scattering2D`, J = 2 scales, L = 8 angles, the
library and settings of their code): for an image of C channels and H x W pixels, 81 C channels
of (H/4) x (W/4) (1 low-pass, 16 first-order, 64 second-order coefficients per channel). Their
images enter in [0, 1] (torchvision's ToTensor); crepe's built-in datasets are normalised, so
`crepe.training.inputs` maps them back to [0, 1] first. Computed once per run, in batches.

Kymatio 0.3.0's package-level `kymatio.torch` also imports its 3-D scattering, which needs
`scipy.special.sph_harm` (removed in SciPy 1.17); the 2-D torch front end is imported directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from crepe.config import UsageError, check_choice, options

FEATURES = options()["features"].choices
J, L = 2, 8
ORDERS = 1 + J * L + L * L * J * (J - 1) // 2  # 81 scattering channels per image channel


def shape_after(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The shape (channels, height, width) of one image's features."""
    check_choice("features", name, FEATURES)
    c, h, w = shape
    if h % 2**J or w % 2**J or h < 2**(J + 1) or w < 2**(J + 1):
        raise UsageError(f"--features {name} needs images whose sides are multiples of {2**J} (at least "
                         f"{2**(J + 1)}); got {h}x{w}")
    return c * ORDERS, h // 2**J, w // 2**J


def _scattering(h: int, w: int) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as e:
        raise UsageError("--features scatternet needs Kymatio: pip install 'kymatio==0.3.0' (or the crepe extra "
                         f"[scatternet]); import failed: {e}") from e
    return ScatteringTorch2D(J=J, shape=(h, w), L=L)


def apply(name: str, x: torch.Tensor, *, batch: int = 1024, say: Callable[[str], None] | None = None) -> torch.Tensor:
    """`x` (n, C, H, W) float32 -> its features (n, 81 C, H/4, W/4) float32, `batch` images at a time."""
    out_shape = shape_after(name, tuple(x.shape[1:]))
    n = len(x)
    out = torch.empty((n, *out_shape), dtype=torch.float32)
    if n == 0:
        return out
    scatter = _scattering(*x.shape[2:])
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, batch):
            out[i:i + batch] = scatter(x[i:i + batch].contiguous()).reshape(-1, *out_shape)
    if say is not None:
        say(f"crepe train: ScatterNet features of {n} images, {out_shape[0]} x {out_shape[1]} x {out_shape[2]} "
            f"each, in {time.perf_counter() - t0:.0f} s")
    return out
