"""Synthetic writers: a seeded user split of an image set whose users look like writers (DESIGN §11).

No user-partitioned image set is available offline, so users are simulated from n labelled
images (Fashion-MNIST, MNIST) in three seeded steps:
1. sizes: s_u = clip(round(exp(N(log(n/U) - size_sigma^2/2, size_sigma^2))), 1, k), i.e.
   log-normal with mean n/U before rounding and clipping at the public maximum k. If the sizes
   total more than n, the largest users (ties: lowest id) give up one example each, repeatedly,
   until the total is n; no user falls below 1 or rises above k. The n - sum(s_u) examples left
   over (at least n - kU) are dropped, and counted in stats["dropped"];
2. label skew (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"):
   user u's class proportions are q_u ~ Dirichlet(alpha * p), p the input's class frequencies,
   so the concentrations sum to alpha (papers that write Dirichlet(alpha) with alpha on every
   class mean Hsu's alpha * C for C balanced classes). Small alpha: few classes per user. Users
   are filled in a random order: counts ~ Multinomial(s_u, q_u), drawn without replacement from
   shuffled per-class pools; where a pool runs dry the shortfall is redrawn from q_u over the
   classes left (or from the pools' own proportions when none of u's classes is left);
3. style: every user draws one affine warp and one contrast (`Style` gives the uniform ranges)
   and ALL its images get that same style, so a user's examples are correlated as one writer's
   are. `apply_style` states the exact map.

Seeded simulation, not DP noise: the split is reproducible from `seed` through numpy's
Generator(PCG64) (three streams spawned from SeedSequence(seed): sizes, labels, styles, so the
styles of a seed do not change with alpha or k). A seeded generator is right here: the split
is the data set being simulated, and it is as public as the data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crepe.config import UsageError
from crepe.users.partition import Partition, int_array, is_int

if TYPE_CHECKING:
    import torch

STYLE_COLUMNS = ("rotation_deg", "shear_deg", "scale", "shift_x_px", "shift_y_px", "contrast")
CHUNK = 2048  # images warped at once: bounds the sampling grid's memory


@dataclass(frozen=True)
class Style:
    """Half-widths of the uniform ranges a user's style is drawn from (each user, independently):
    rotation U(-15, 15) degrees, shear U(-10, 10) degrees, scale U(0.9, 1.1), shifts U(-2, 2) px
    in x and in y, contrast U(0.7, 1.3) by default. All zero: images unchanged."""

    rotation_deg: float = 15.0
    shear_deg: float = 10.0
    scale: float = 0.1
    shift_px: float = 2.0
    contrast: float = 0.3

    def __post_init__(self) -> None:
        limits = {"rotation_deg": 180.0, "shear_deg": 90.0, "scale": 1.0, "shift_px": math.inf, "contrast": 1.0}
        for name, limit in limits.items():
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v < limit or math.isnan(v):
                bound = "finite" if limit == math.inf else f"< {limit:g}"
                raise UsageError(f"Style {name} must be a number >= 0 and {bound}; got {v!r}")


@dataclass(frozen=True, eq=False)
class Writers:
    """A synthetic-writer split: the kept examples, styled, with their users."""

    x: torch.Tensor  # (m, 1, H, W) float32, styled, in the input's intensity scale
    y: torch.Tensor  # (m,) int64
    partition: Partition  # the users of the m kept examples
    styles: np.ndarray  # (U, 6) float64, one row per user, columns STYLE_COLUMNS
    index: np.ndarray  # (m,) int64, ascending: each kept example's position in the input
    stats: dict[str, Any]  # partition.stats(y) | input_examples, dropped, settings (counts, knobs)


def synthetic_writers(
    x: Any,
    y: Any,
    *,
    users: int = 1000,
    size_sigma: float = 0.5,
    max_per_user: int | None = None,
    alpha: float = 10.0,
    style: Style = Style(),
    seed: int = 0,
) -> Writers:
    """Split images x (n, H, W) or (n, 1, H, W) with labels y (n,) into `users` synthetic writers.

    users: U, 1..n (default 1,000). size_sigma: the log-normal sigma of user sizes, >= 0
    (default 0.5; 0: every size round(n/U) before clipping). max_per_user: the public maximum k,
    >= 1 (default None: 2 * ceil(n/U), a function of the public n and U only). alpha: the
    Dirichlet concentration of label skew, > 0 (default 10: for 10 balanced classes, 1 per
    class). style: the style ranges (default `Style()`). seed: >= 0 (default 0).
    """
    import torch

    images = x if isinstance(x, torch.Tensor) else np.asarray(x)  # indexed before any copy
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise UsageError(f"x must be images (n, H, W) or (n, 1, H, W); got shape {tuple(images.shape)}")
    labels = int_array("labels y", y)
    n = len(labels)
    if images.shape[0] != n or labels.min() < 0:
        raise UsageError(f"y must hold one label >= 0 per image: {n} labels for {images.shape[0]} images")
    if not is_int(users) or not 1 <= users <= n:
        raise UsageError(f"users (U) must be an integer in 1..n = {n}; got {users!r}")
    if not _is_number(size_sigma) or not 0 <= size_sigma < math.inf:
        raise UsageError(f"size_sigma must be a finite number >= 0; got {size_sigma!r}")
    k = 2 * math.ceil(n / users) if max_per_user is None else max_per_user
    if not is_int(k) or k < 1:
        raise UsageError(f"max_per_user (k) must be an integer >= 1, or None for 2 * ceil(n/U); got {k!r}")
    if not _is_number(alpha) or not 0 < alpha < math.inf:
        raise UsageError(f"alpha (the Dirichlet concentration) must be a finite number > 0; got {alpha!r}")
    if not isinstance(style, Style):
        raise UsageError(f"style must be a crepe.users.synthetic.Style; got {type(style).__name__}")
    if not is_int(seed) or seed < 0:
        raise UsageError(f"seed must be an integer >= 0; got {seed!r}")

    streams = np.random.SeedSequence(seed).spawn(3)
    g_sizes, g_labels, g_styles = (np.random.Generator(np.random.PCG64(s)) for s in streams)
    mu = math.log(n / users) - size_sigma**2 / 2  # the log-normal's mean is then n/U
    sizes = np.clip(np.rint(g_sizes.lognormal(mu, size_sigma, size=users)), 1, k).astype(np.int64)
    sizes = _fit_total(sizes, n)
    owner = _assign(labels, sizes, alpha, g_labels)
    index = np.flatnonzero(owner >= 0)
    partition = Partition(owner[index], users, k, "declared")

    half = np.array([style.rotation_deg, style.shear_deg, style.scale, style.shift_px, style.shift_px, style.contrast])
    styles = g_styles.uniform(-1.0, 1.0, size=(users, 6)) * half + np.array([0, 0, 1, 0, 0, 1])
    kept = torch.as_tensor(images[index]).to(torch.float32).unsqueeze(1)  # (m, 1, H, W), a copy
    per_image = styles[partition.user_ids]  # (m, 6): every image takes its user's style
    xs = torch.cat([apply_style(kept[i : i + CHUNK], per_image[i : i + CHUNK]) for i in range(0, len(index), CHUNK)])
    y_kept = labels[index]
    stats = partition.stats(y_kept) | {
        "input_examples": n,
        "dropped": n - len(index),
        "settings": {
            "users": int(users), "size_sigma": float(size_sigma), "max_per_user": int(k), "alpha": float(alpha),
            "style": asdict(style), "seed": int(seed),
        },
    }
    return Writers(xs, torch.from_numpy(y_kept), partition, styles, index, stats)


def apply_style(x: torch.Tensor, styles: np.ndarray) -> torch.Tensor:
    """Images x (m, 1, H, W) float, each warped and contrast-scaled by its row of styles (m, 6).

    In pixel coordinates about the image centre (x right, y down; u = column - (W-1)/2,
    v = row - (H-1)/2), the content moves by T(p) = M p + t with M = R(rotation) Sh(shear) * scale,
    R(a) = [[cos a, -sin a], [sin a, cos a]] (positive a turns the content clockwise as
    displayed), Sh(b) = [[1, tan b], [0, 1]], t = (shift_x, shift_y): output pixel p samples the
    input bilinearly at T^-1(p) (torch affine_grid / grid_sample, align_corners=False), and a
    point outside the input takes the image's minimum, its background. Then contrast c scales
    about the warped image's mean: m + c (v - m). Both steps commute with any increasing affine
    map of intensities, so styling normalised or raw images gives the same (normalised) result.
    """
    import torch
    import torch.nn.functional as F

    if x.ndim != 4 or styles.shape != (x.shape[0], 6):
        raise UsageError(f"apply_style needs x (m, C, H, W) and styles (m, 6); got {tuple(x.shape)} and {styles.shape}")
    h, w = x.shape[-2:]
    rot, shear = np.deg2rad(styles[:, 0]), np.deg2rad(styles[:, 1])
    cos, sin, tan, s = np.cos(rot), np.sin(rot), np.tan(shear), styles[:, 2]
    m = np.stack([np.stack([cos, cos * tan - sin], -1), np.stack([sin, sin * tan + cos], -1)], -2) * s[:, None, None]
    m_inv = np.linalg.inv(m)  # (m, 2, 2)
    d = np.diag([2.0 / w, 2.0 / h])  # pixel offsets from the centre -> grid_sample's [-1, 1] coordinates
    a = d @ m_inv @ np.linalg.inv(d)
    b = -(d @ m_inv @ styles[:, 3:5, None])
    theta = torch.from_numpy(np.concatenate([a, b], -1)).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    low = x.amin(dim=(-2, -1), keepdim=True)
    out = F.grid_sample(x - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low
    mean = out.mean(dim=(-2, -1), keepdim=True)
    c = torch.from_numpy(styles[:, 5]).to(x.dtype).view(-1, 1, 1, 1)
    return mean + c * (out - mean)


def _fit_total(sizes: np.ndarray, n: int) -> np.ndarray:
    """Cut the largest sizes by one each (ties: lowest id) until they total at most n (>= U, so it ends)."""
    sizes = sizes.copy()
    while (excess := int(sizes.sum()) - n) > 0:
        largest = np.argsort(-sizes, kind="stable")[:excess]
        sizes[largest[sizes[largest] > 1]] -= 1
    return sizes


def _assign(labels: np.ndarray, sizes: np.ndarray, alpha: float, g: np.random.Generator) -> np.ndarray:
    """(n,) the user of each example, -1 where dropped: module docstring, step 2."""
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)  # classes absent from the input get no Dirichlet weight
    left = counts[present].copy()
    pools = [g.permutation(np.flatnonzero(labels == c)) for c in present]
    taken = np.zeros(len(present), dtype=np.int64)
    q = g.dirichlet(alpha * counts[present] / len(labels), size=len(sizes))  # (U, classes)
    owner = np.full(len(labels), -1, dtype=np.int64)
    for u in g.permutation(len(sizes)):
        need = int(sizes[u])
        while need:
            weights = q[u] * (left > 0)
            if weights.sum() == 0:
                weights = left.astype(np.float64)
            draw = np.minimum(g.multinomial(need, weights / weights.sum()), left)
            for c in np.flatnonzero(draw):
                owner[pools[c][taken[c] : taken[c] + draw[c]]] = u
            taken += draw
            left -= draw
            need -= int(draw.sum())
    return owner


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
