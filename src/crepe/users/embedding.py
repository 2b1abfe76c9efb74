"""Embedding evaluation on classes never trained on (DESIGN.md section 11, "Evaluation").

Four pure functions; docs/embedding.md holds the same rules with measured times.

- `embed(backbone_fn, x)`: (n, d) float32 embeddings, L2-normalised row by row.
- `pair_recall_at_far(emb, labels, fars)`: exact verification recall over ALL unordered pairs
  i < j of the set (the published DP-FedEmb metric takes pairs only within batches of 256).
  `pair_verification` returns the same numbers with thresholds, achieved FARs and pair counts.
- `nearest_neighbour_accuracy(emb, labels, gallery_per_class=, seed=)`: 1-NN accuracy with a
  per-class gallery/probe split.
- `held_out_split(labels, held_out)`: masks of trained and held-out classes.

Rules a caller can trip on:
- Similarity is cosine: rows are L2-normalised in float64 and the similarity of a pair is the
  float64 dot product of the normalised rows. A zero row stays zero (it is not divided by its
  zero norm), so its similarity to every row, itself and other zero rows included, is 0; no NaN.
  (A row whose float64 norm underflows to 0, all entries below ~1e-154, counts as zero.)
  Non-finite rows are refused.
- Threshold for FAR f over the N_neg negative (different-label) pairs: the smallest t with
  (number of negatives with similarity > t) / N_neg <= f (the division in float64, so f = 0.57
  admits 57 of 100). A pair exactly AT t is rejected, so the achieved FAR never exceeds f. With
  m the largest integer such that m / N_neg <= f, t is the (m+1)-th largest negative similarity;
  negatives tied with it are all rejected, so the achieved FAR can be below f (identical
  embeddings give t = their common similarity, about 1, and recall 0 at every f < 1).
- Recall at f: (number of positive (same-label) pairs with similarity > t) / N_pos.
- 1-NN: per class (classes in increasing order), the gallery is the class's first
  `gallery_per_class` examples by index (`seed=None`) or the first of a permutation of them drawn
  by `np.random.default_rng(seed)` (one permutation per class, classes in increasing order); the
  rest are probes. Each probe's neighbour is its most similar gallery item; equal similarities go
  to the lowest example index. Every class must have at least gallery_per_class + 1 examples.
- Refused (UsageError, naming the problem and the allowed values): empty input, embeddings not
  2-D / not finite, labels not 1-D integers, mismatched lengths, FARs outside (0, 1), no
  positive or no negative pair, a class too small for the 1-NN split, held-out ids absent or
  covering every class.

Exactness. The result is exact for the float64 similarities as computed: every pair i < j is
visited once, and the threshold is the exact order statistic, ties included. Those similarities
are BLAS dot products, so a different `block_rows` (a different matmul shape) can change one in
its last bit (~1e-16); that moves a recall only if a positive pair sits within that of t.
Embeddings whose similarities are exact in float64 (e.g. entries in {+-1/2}) give bit-identical
results for every block size, which is how the tests check the blocked path.

Complexity of `pair_verification` for n rows of dimension d and N = n(n-1)/2 pairs: time
O(n^2 d) for the similarities (row blocks, upper triangle only) plus O(N) for masking and the
running selection; memory O(b n) for a block of b rows (b n <= 2^21 float64 by default,
16 MiB), plus N_pos float64 for the positive similarities, plus a buffer of 2 K negatives,
K = m + 1 for the largest FAR asked, about f_max N_neg (`LargestValues`: it keeps the K largest, dropping anything at or
below its current K-th largest). Measured on 2 CPU cores (OpenBLAS), d = 128, 10 classes:
n = 3,000 (4.5 M pairs) 0.35 s, peak 61 MiB traced; n = 10,000 (50 M pairs) 2.5 s, peak
183 MiB (the full float64 matrix alone would be 763 MiB). 1-NN with one gallery item per
class: 0.02-0.03 s at either size.

Imports nothing of crepe but config; torch only inside `embed`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crepe.config import UsageError

if TYPE_CHECKING:
    import torch

BLOCK_ELEMENTS = 1 << 21  # similarities held at once (float64): 16 MiB


# --- inputs ---------------------------------------------------------------------------------


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_numpy(values: Any) -> np.ndarray:
    """A numpy view of an array or a torch tensor (detached, on the CPU), without importing torch."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def check_labels(labels: Any) -> np.ndarray:
    a = as_numpy(labels)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise UsageError(f"labels must be a 1-D array of integers; got shape {a.shape} of dtype {a.dtype}")
    if a.size == 0:
        raise UsageError("labels are empty: need at least one example")
    return a.astype(np.int64)


def unit_rows(emb: Any, n: int) -> np.ndarray:
    """(n, d) float64, each row divided by its L2 norm; a zero row stays zero."""
    e = as_numpy(emb)
    if e.ndim != 2 or e.dtype.kind not in "fiu":
        raise UsageError(f"embeddings must be a 2-D (n, d) array of numbers; got shape {e.shape} of dtype {e.dtype}")
    if e.shape[0] != n:
        raise UsageError(f"embeddings and labels differ in length: {e.shape[0]} rows vs {n} labels")
    if e.shape[1] == 0:
        raise UsageError("embeddings have d = 0 columns: need d >= 1")
    e = e.astype(np.float64)
    if not np.isfinite(e).all():
        row = int(np.flatnonzero(~np.isfinite(e).all(axis=1))[0])
        raise UsageError(f"embeddings must be finite; row {row} holds NaN or inf")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)


def check_fars(fars: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(f) for f in fars)
    except (TypeError, ValueError):
        raise UsageError(f"fars must be a sequence of numbers in (0, 1); got {fars!r}") from None
    if not out:
        raise UsageError("fars is empty: give at least one false accept rate in (0, 1), e.g. (1e-3, 0.1)")
    for f in out:
        if not 0.0 < f < 1.0:  # NaN fails too
            raise UsageError(f"every FAR must be in the open interval (0, 1); got {f}")
    return out


def allowed_above(f: float, negatives: int) -> int:
    """m: the largest integer with m / negatives <= f (float64 division), 0 <= m < negatives."""
    m = min(math.floor(f * negatives), negatives - 1)
    while m + 1 < negatives and (m + 1) / negatives <= f:
        m += 1
    while m > 0 and m / negatives > f:
        m -= 1
    return m


# --- embeddings -----------------------------------------------------------------------------


def embed(backbone_fn: Callable[[torch.Tensor], torch.Tensor], x: Any, batch_size: int = 2048) -> torch.Tensor:
    """(n, d) float32 CPU embeddings of the n inputs `x` (a tensor or array, first axis n),
    computed by `backbone_fn` in batches of `batch_size` under torch.no_grad(); each row is
    divided by its L2 norm (computed in float64, so tiny rows do not underflow). A zero row
    stays zero rather than becoming NaN: its similarity to everything is 0.

    If `backbone_fn` is an nn.Module it runs in eval mode (its training flag is restored after)
    and each batch is moved to the device of its first parameter or buffer; otherwise batches
    are passed as they are. The backbone must return (batch, d) finite values."""
    import torch

    if not is_int(batch_size) or batch_size < 1:
        raise UsageError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    xs = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if xs.ndim == 0 or xs.shape[0] == 0:
        raise UsageError(f"x is empty: need at least one input along the first axis; got shape {tuple(xs.shape)}")
    module = backbone_fn if isinstance(backbone_fn, torch.nn.Module) else None
    device = None
    if module is not None:
        first = next(iter(module.parameters()), None)
        if first is None:
            first = next(iter(module.buffers()), None)
        device = first.device if first is not None else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, xs.shape[0], int(batch_size)):
                batch = xs[start : start + int(batch_size)]
                z = backbone_fn(batch.to(device) if device is not None else batch)
                if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] != batch.shape[0]:
                    got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                    size = batch.shape[0]
                    raise UsageError(f"the backbone must return a (batch, d) tensor; {size} inputs gave {got}")
                z64 = z.detach().to("cpu", torch.float64)
                if not torch.isfinite(z64).all():
                    row = start + int(torch.nonzero(~torch.isfinite(z64).all(dim=1))[0])
                    raise UsageError(f"the backbone returned NaN or inf for input {row}")
                norms = torch.linalg.vector_norm(z64, dim=1, keepdim=True)
                unit = torch.where(norms > 0, z64 / norms.clamp_min(1e-300), torch.zeros_like(z64))
                out.append(unit.to(torch.float32))
    finally:
        if module is not None:
            module.train(was_training)
    return torch.cat(out)


# --- pairwise verification ------------------------------------------------------------------


class LargestValues:
    """The `keep` largest of a stream of float64 values, in a buffer of max(capacity, keep + 1).

    When the buffer fills, an in-place np.partition moves the `keep` largest to its front and
    `floor` becomes the smallest of them; later values <= floor are dropped. The keep-th
    largest stays exact (with ties): the buffer always holds every value > floor and at least
    `keep` values >= floor, and floor never exceeds the final keep-th largest. Each compaction
    handles >= capacity - keep new values, so the cost is O(total · capacity / (capacity - keep))."""

    def __init__(self, keep: int, capacity: int) -> None:
        self.keep = keep
        self.buffer = np.empty(max(capacity, keep + 1))  # > keep: a full buffer can always compact
        self.used = 0
        self.floor = -np.inf

    def add(self, values: np.ndarray) -> None:
        values = values[values > self.floor]
        i = 0
        while i < values.size:
            take = min(self.buffer.size - self.used, values.size - i)
            self.buffer[self.used : self.used + take] = values[i : i + take]
            self.used += take
            i += take
            if self.used == self.buffer.size:
                self.compact()
                values = values[i:][values[i:] > self.floor]
                i = 0

    def compact(self) -> None:
        live = self.buffer[: self.used]
        live.partition(self.used - self.keep)  # the keep largest now sit last, their minimum first
        self.buffer[: self.keep] = live[self.used - self.keep :].copy()
        self.used = self.keep
        self.floor = float(self.buffer[0])

    def values(self) -> np.ndarray:
        """The kept values (the `keep` largest, or all of them if fewer came), a copy."""
        if self.used > self.keep:
            self.compact()
        return self.buffer[: self.used].copy()


@dataclass(frozen=True)
class PairVerification:
    """Exact verification over all unordered pairs i < j, one entry per FAR (in the order given)."""

    fars: tuple[float, ...]  # the FARs asked for
    thresholds: tuple[float, ...]  # t: a pair is accepted iff its similarity > t
    false_accept: tuple[float, ...]  # achieved FAR: negatives > t / N_neg, always <= the FAR asked
    recall: tuple[float, ...]  # positives > t / N_pos
    positives: int  # N_pos: same-label pairs
    negatives: int  # N_neg: different-label pairs


def pair_verification(
    emb: Any, labels: Any, fars: Sequence[float] = (1e-3, 0.1), *, block_rows: int | None = None
) -> PairVerification:
    """Thresholds, achieved FARs and recalls over all pairs (rules in the module docstring).
    `block_rows` (default: as many rows as keep a block at 2^21 similarities) changes memory
    and speed, and the similarities only by BLAS last-bit rounding (module docstring)."""
    y = check_labels(labels)
    e = unit_rows(emb, y.size)
    fs = check_fars(fars)
    n = y.size
    counts = np.unique(y, return_counts=True)[1].astype(np.int64)
    n_pos = int((counts * (counts - 1) // 2).sum())
    n_neg = n * (n - 1) // 2 - n_pos
    if n_pos == 0:
        raise UsageError("no positive pair: every class has one example; need a class with at least 2 examples")
    if n_neg == 0:
        raise UsageError("no negative pair: all examples share one label; need at least 2 classes")
    if block_rows is None:
        block_rows = max(1, BLOCK_ELEMENTS // n)
    elif not is_int(block_rows) or block_rows < 1:
        raise UsageError(f"block_rows must be an integer >= 1; got {block_rows!r}")

    ms = [allowed_above(f, n_neg) for f in fs]
    keep = max(ms) + 1  # the threshold of f is the (m_f + 1)-th largest negative
    largest = LargestValues(keep, capacity=min(2 * keep, n_neg))
    pos = np.empty(n_pos)  # every positive similarity, filled block by block
    filled = 0
    for start in range(0, n, int(block_rows)):
        stop = min(n, start + int(block_rows))
        sim = e[start:stop] @ e[start:].T  # (b, n - start): rows i against columns j >= start
        upper = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]  # j > i
        same = y[start:stop, None] == y[None, start:]
        block_pos = sim[upper & same]
        pos[filled : filled + block_pos.size] = block_pos
        filled += block_pos.size
        largest.add(sim[upper & ~same])
        del sim, upper, same, block_pos

    top = largest.values()
    top.sort()
    top = top[::-1]  # descending: top[m] is the (m+1)-th largest negative
    pos.sort()
    thresholds, false_accept, recall = [], [], []
    for m in ms:
        t = float(top[m])
        thresholds.append(t)
        # negatives above t all sit in top (t is among the kept values and nothing dropped exceeds it)
        false_accept.append(int(np.count_nonzero(top > t)) / n_neg)
        recall.append(int(pos.size - np.searchsorted(pos, t, side="right")) / n_pos)
    return PairVerification(fs, tuple(thresholds), tuple(false_accept), tuple(recall), n_pos, n_neg)


def pair_recall_at_far(
    emb: Any, labels: Any, fars: Sequence[float] = (1e-3, 0.1), *, block_rows: int | None = None
) -> dict[float, float]:
    """{FAR: recall} over all unordered pairs i < j (rules in the module docstring)."""
    r = pair_verification(emb, labels, fars, block_rows=block_rows)
    return dict(zip(r.fars, r.recall))


# --- nearest neighbour ----------------------------------------------------------------------


def gallery_split(labels: Any, *, gallery_per_class: int = 1, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, probes): sorted example indices. Per class, the first `gallery_per_class`
    examples by index (seed None) or of a seeded permutation of the class (one
    np.random.default_rng(seed) for all classes, drawn in increasing class order)."""
    y = check_labels(labels)
    if not is_int(gallery_per_class) or gallery_per_class < 1:
        raise UsageError(f"gallery_per_class must be an integer >= 1; got {gallery_per_class!r}")
    if seed is not None and not is_int(seed):
        raise UsageError(f"seed must be an integer or None (first examples by index); got {seed!r}")
    classes, counts = np.unique(y, return_counts=True)
    small = np.flatnonzero(counts < gallery_per_class + 1)
    if small.size:
        c = small[0]
        raise UsageError(
            f"class {classes[c]} has {counts[c]} examples; with gallery_per_class = {gallery_per_class} every "
            f"class needs at least {gallery_per_class + 1} (its gallery and one probe)"
        )
    rng = np.random.default_rng(seed) if seed is not None else None
    gallery = []
    for c in classes:
        members = np.flatnonzero(y == c)  # increasing index
        if rng is not None:
            members = rng.permutation(members)
        gallery.append(members[:gallery_per_class])
    g = np.sort(np.concatenate(gallery))
    is_gallery = np.zeros(y.size, dtype=bool)
    is_gallery[g] = True
    return g, np.flatnonzero(~is_gallery)


def nearest_neighbour_accuracy(
    emb: Any, labels: Any, *, gallery_per_class: int = 1, seed: int | None = None, block_rows: int | None = None
) -> float:
    """Share of probes whose most similar gallery item (cosine; ties to the lowest example
    index) has their label. Split and rules in the module docstring and `gallery_split`."""
    y = check_labels(labels)
    e = unit_rows(emb, y.size)
    g, p = gallery_split(y, gallery_per_class=gallery_per_class, seed=seed)
    if block_rows is None:
        block_rows = max(1, BLOCK_ELEMENTS // g.size)
    eg = e[g]
    hits = 0
    for start in range(0, p.size, int(block_rows)):
        probes = p[start : start + int(block_rows)]
        sim = e[probes] @ eg.T  # (b, G); g is sorted, so argmax's first maximum is the lowest index
        hits += int(np.count_nonzero(y[g[np.argmax(sim, axis=1)]] == y[probes]))
    return hits / p.size


# --- class split ----------------------------------------------------------------------------


def held_out_split(labels: Any, held_out: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(trained, held): boolean masks of the examples whose class is not / is in `held_out`
    (e.g. (7, 8, 9) for Fashion-MNIST). Every held-out id must occur in `labels`, ids must be
    distinct integers, and at least one class must remain for training."""
    y = check_labels(labels)
    try:
        ids = list(held_out)
    except TypeError:
        raise UsageError(f"held_out must be a sequence of class ids, e.g. (7, 8, 9); got {held_out!r}") from None
    if not ids:
        raise UsageError("held_out is empty: give at least one class id, e.g. (7, 8, 9)")
    bad = [c for c in ids if not is_int(c)]
    if bad:
        raise UsageError(f"held-out class ids must be integers; got {bad[0]!r}")
    if len(set(int(c) for c in ids)) != len(ids):
        raise UsageError(f"held-out class ids must be distinct; got {tuple(int(c) for c in ids)}")
    present = np.unique(y).tolist()
    missing = [int(c) for c in ids if int(c) not in set(present)]
    if missing:
        raise UsageError(f"held-out class {missing[0]} does not occur in the labels; classes present: {present}")
    held = np.isin(y, np.array(ids, dtype=np.int64))
    if held.all():
        raise UsageError(
            f"held_out {tuple(int(c) for c in ids)} covers every class; at least one class must remain for training"
        )
    return ~held, held
