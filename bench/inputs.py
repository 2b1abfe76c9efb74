"""Benchmark inputs shaped like real gradient proxies (numpy only, seeded).

Features h come from a Gaussian mixture (one component per class); a random
linear model gives softmax probabilities p. The proxies are the per-example
last-layer gradients DESIGN.md section 2 defines:
  logits     p - onehot(y)                     (d = C)
  last-layer (p - onehot(y)) outer [h, 1]      (d = C * (H + 1))
Optionally privatised as crepe train does: clip each row to L2 norm `clip`,
then add N(0, (sigma * clip)^2) noise.
"""

from __future__ import annotations

import numpy as np


def one_class(n: int, *, classes: int = 10, **kw) -> np.ndarray:
    """n proxies of class 0 of a `classes`-class problem (one class alone would be degenerate)."""
    X, y = proxies(n * classes, classes=classes, **kw)
    return np.ascontiguousarray(X[y == 0][:n])


def proxies(
    n: int,
    *,
    classes: int = 10,
    hidden: int = 32,
    kind: str = "logits",
    sigma: float = 0.0,
    clip: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (n, d), y int64 (n,)) for n examples spread evenly over classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    means = rng.normal(0.0, 2.0, size=(classes, hidden))
    h = means[y] + rng.normal(size=(n, hidden))
    W = rng.normal(0.0, 0.3, size=(classes, hidden))
    logits = h @ W.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = p - np.eye(classes)[y]
    if kind == "last-layer":
        g = (g[:, :, None] * np.concatenate([h, np.ones((n, 1))], axis=1)[:, None, :]).reshape(n, -1)
    elif kind != "logits":
        raise ValueError(f"unknown kind {kind!r}; valid: ['last-layer', 'logits']")
    if sigma > 0:
        norms = np.linalg.norm(g, axis=1, keepdims=True)
        g = g * np.minimum(1.0, clip / np.maximum(norms, 1e-12))
        g = g + rng.normal(0.0, sigma * clip, size=g.shape)
    return np.ascontiguousarray(g, dtype=np.float32), y.astype(np.int64)
