"""Embedding evaluation (crepe.users.embedding) against brute-force NumPy oracles written here:
all pairs materialised, thresholds found by sorting and scanning every candidate, 1-NN by a
loop over the gallery. Ties come from quantised embeddings whose similarities are exact in
float64 (entries in {0, +-1/2} with d = 4, or integer Pythagorean rows), so the tie rule is
tested without rounding noise; the memory-bounded path (small forced blocks, a small running
top) must equal the oracle exactly there."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crepe.config import UsageError
from crepe.users.embedding import (
    LargestValues,
    embed,
    gallery_split,
    held_out_split,
    nearest_neighbour_accuracy,
    pair_recall_at_far,
    pair_verification,
)

# --- oracles ----------------------------------------------------------------------------------


def oracle_unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0)


def oracle_pairs(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) similarities of every unordered pair, from the full matrix."""
    u = oracle_unit(emb)
    sim = u @ u.T
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    return sim[i, j][same], sim[i, j][~same]


def oracle_threshold(neg: np.ndarray, far: float) -> float:
    """Smallest candidate t (every negative value is one) with mean(neg > t) <= far: the
    definition, scanned over all candidates in increasing order."""
    ordered = np.sort(neg)
    candidates = np.unique(ordered)  # increasing
    above = neg.size - np.searchsorted(ordered, candidates, side="right")  # negatives > t, per candidate
    ok = above / neg.size <= far
    t = float(candidates[np.argmax(ok)])
    assert ok.any() and np.mean(neg > t) <= far
    return t


def oracle_recall(emb: np.ndarray, labels: np.ndarray, fars: tuple[float, ...]) -> dict[float, tuple[float, float]]:
    pos, neg = oracle_pairs(emb, labels)
    out = {}
    for f in fars:
        t = oracle_threshold(neg, f)
        out[f] = (t, float(np.mean(pos > t)))
    return out


def oracle_nn(emb: np.ndarray, labels: np.ndarray, gallery_per_class: int, seed: int | None) -> float:
    labels = np.asarray(labels)
    gallery: list[int] = []
    if seed is None:
        taken: dict[int, int] = {}
        for i, c in enumerate(labels.tolist()):
            if taken.get(c, 0) < gallery_per_class:
                gallery.append(i)
                taken[c] = taken.get(c, 0) + 1
    else:
        rng = np.random.default_rng(seed)
        for c in sorted(set(labels.tolist())):
            gallery += rng.permutation(np.flatnonzero(labels == c))[:gallery_per_class].tolist()
    gallery.sort()
    u = oracle_unit(emb)
    hits = probes = 0
    for p in range(len(labels)):
        if p in gallery:
            continue
        best, best_sim = -1, -np.inf
        for g in gallery:  # increasing index: only a strictly better similarity replaces
            s = float(u[p] @ u[g])
            if s > best_sim:
                best, best_sim = g, s
        probes += 1
        hits += int(labels[best] == labels[p])
    return hits / probes


def quantised(rng: np.random.Generator, n: int, zeros: int = 0) -> np.ndarray:
    """Rows from {-1/2, +1/2}^4 (norm exactly 1, so normalising changes nothing) and `zeros`
    zero rows: every similarity is a multiple of 1/4, exact in float64 in any summation order,
    and heavily tied."""
    x = rng.choice([-0.5, 0.5], size=(n, 4))
    x[rng.choice(n, size=zeros, replace=False)] = 0.0
    return x


FARS = (1e-3, 0.013, 0.1, 0.37, 0.5, 0.9, 0.999)

# --- pair verification: oracle ---------------------------------------------------------------


@pytest.mark.parametrize("n,classes,block_rows", [(40, 3, None), (97, 5, 1), (200, 4, 7), (300, 10, 64)])
def test_pairs_with_ties_equal_the_oracle_for_any_block_size(n: int, classes: int, block_rows: int | None) -> None:
    rng = np.random.default_rng(n)
    x, y = quantised(rng, n, zeros=3), rng.integers(0, classes, n)
    r = pair_verification(x, y, FARS, block_rows=block_rows)
    want = oracle_recall(x, y, FARS)
    pos, neg = oracle_pairs(x, y)
    assert (r.positives, r.negatives) == (pos.size, neg.size)
    for f, t, fa, rec in zip(r.fars, r.thresholds, r.false_accept, r.recall):
        assert (t, rec) == want[f], f
        assert fa == np.mean(neg > t) <= f
    assert pair_recall_at_far(x, y, FARS, block_rows=block_rows) == {f: want[f][1] for f in FARS}


@pytest.mark.parametrize("n,d,classes", [(60, 8, 3), (250, 16, 6), (400, 128, 10)])
def test_pairs_without_ties_equal_the_oracle(n: int, d: int, classes: int) -> None:
    rng = np.random.default_rng(d)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, d)) + 0.8 * np.eye(classes, d)[y]  # some signal: recall is not trivial
    r = pair_verification(x.astype(np.float32), y, FARS)
    want = oracle_recall(x.astype(np.float32), y, FARS)
    for f, t, rec in zip(r.fars, r.thresholds, r.recall):
        # the blocked matmul may differ from the full one in the last bit (docstring)
        assert t == pytest.approx(want[f][0], abs=1e-12) and rec == want[f][1], f
    assert 0 < r.recall[0] < r.recall[2] < 1


def test_several_blocks_and_compactions_equal_the_oracle() -> None:
    """n = 600 in blocks of 13 rows, FAR 1e-3 alone: the running top keeps ~180 of ~160k
    negatives, so it compacts hundreds of times and drops values below its floor."""
    rng = np.random.default_rng(7)
    x, y = quantised(rng, 600), rng.integers(0, 4, 600)
    for fars in [(1e-3,), (1e-3, 0.1), (0.25,)]:
        r = pair_verification(x, y, fars, block_rows=13)
        want = oracle_recall(x, y, fars)
        assert {f: (t, rec) for f, t, rec in zip(r.fars, r.thresholds, r.recall)} == want


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 70),
    classes=st.integers(1, 6),
    block_rows=st.integers(1, 80),
    fars=st.lists(st.floats(1e-4, 0.9999), min_size=1, max_size=4),
    zeros=st.integers(0, 2),
)
def test_pairs_equal_the_oracle_on_generated_inputs(
    seed: int, n: int, classes: int, block_rows: int, fars: list[float], zeros: int
) -> None:
    rng = np.random.default_rng(seed)
    x, y = quantised(rng, n, zeros=min(zeros, n)), rng.integers(0, classes, n)
    pos, neg = oracle_pairs(x, y)
    if pos.size == 0 or neg.size == 0:
        with pytest.raises(UsageError, match="no positive pair|no negative pair"):
            pair_verification(x, y, fars, block_rows=block_rows)
        return
    r = pair_verification(x, y, fars, block_rows=block_rows)
    want = oracle_recall(x, y, tuple(fars))
    assert [(t, rec) for t, rec in zip(r.thresholds, r.recall)] == [want[f] for f in r.fars]


def test_largest_values_keeps_the_kth_largest_with_ties() -> None:
    rng = np.random.default_rng(3)
    stream = rng.integers(0, 20, 5000).astype(np.float64)  # heavy ties
    for keep, capacity in [(1, 1), (1, 2), (7, 9), (100, 150), (5000, 5000)]:
        top = LargestValues(keep, capacity)
        for chunk in np.array_split(stream, 37):
            top.add(chunk)
        kept = np.sort(top.values())[::-1]
        assert kept.size == keep
        assert kept[keep - 1] == np.sort(stream)[::-1][keep - 1]
        assert (kept == np.sort(stream)[::-1][:keep]).all()


def test_far_times_negatives_not_an_integer_admits_its_floor() -> None:
    """10 + 10 points at distinct random angles: 100 distinct negatives, so FAR f admits
    exactly the largest m with m / 100 <= f (0.57 -> 57, 0.015 -> 1, 0.3333 -> 33, 0.005 -> 0)."""
    rng = np.random.default_rng(11)
    angle = rng.uniform(0, 2 * np.pi, 20)
    x, y = np.c_[np.cos(angle), np.sin(angle)], np.repeat([0, 1], 10)
    assert np.unique(oracle_pairs(x, y)[1]).size == 100
    fars = (0.57, 0.015, 0.3333, 0.005)
    r = pair_verification(x, y, fars)
    assert r.false_accept == (0.57, 0.01, 0.33, 0.0)
    want = oracle_recall(x, y, fars)
    assert [(t, rec) for t, rec in zip(r.thresholds, r.recall)] == [want[f] for f in fars]


# --- pair verification: hand-made cases ------------------------------------------------------


def test_hand_case_shows_the_tie_rule() -> None:
    """Unit rows a=(1,0), b=(.6,.8) in class 0 and c=(0,1), d=(-.6,.8) in class 1.
    Positives: ab = .6, cd = .8. Negatives, descending: bc = .8, bd = .28, ac = 0, ad = -.6."""
    x = np.array([[5, 0], [3, 4], [0, 5], [-3, 4]])
    y = np.array([0, 0, 1, 1])
    r = pair_verification(x, y, (0.2, 0.25, 0.6))
    assert (r.positives, r.negatives) == (2, 4)
    assert r.thresholds == pytest.approx((0.8, 0.28, 0.0))
    assert r.thresholds[0] == 0.8  # exactly: 0.8 * 1 and 1 * 0.8
    assert r.false_accept == (0.0, 0.25, 0.5)
    # FAR 0.2 allows no negative above t, so t = .8; the positive cd = .8 sits AT t: rejected
    assert r.recall == (0.0, 1.0, 1.0)


def test_perfectly_separated_classes_have_recall_one_at_any_far() -> None:
    y = np.repeat(np.arange(4), 6)
    x = np.eye(4)[y] * 3.0  # classes on orthogonal axes: positives 1, negatives 0
    for f in (1e-6, 1e-3, 0.1, 0.5, 0.999999):
        assert pair_recall_at_far(x, y, (f,)) == {f: 1.0}
    r = pair_verification(x, y, (1e-3, 0.1))
    assert r.thresholds == (0.0, 0.0) and r.false_accept == (0.0, 0.0)


def test_identical_embeddings_have_recall_zero_below_far_one() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    x = np.tile([[1.0, 2.0, 2.0]], (7, 1))  # every similarity is the same float, about 1
    r = pair_verification(x, y, (1e-3, 0.1, 0.5, 0.999))
    assert len(set(r.thresholds)) == 1 and r.thresholds[0] == pytest.approx(1.0, abs=1e-15)
    assert r.false_accept == (0.0,) * 4 and r.recall == (0.0,) * 4


def test_zero_embeddings_have_similarity_zero_not_nan() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    y = np.array([0, 0, 1, 1])
    r = pair_verification(x, y, (0.1,))  # negatives 0, 0, 0, 0; positives 0 (zeros), 1
    assert r.thresholds == (0.0,) and r.recall == (0.5,)
    assert not any(math.isnan(v) for v in r.thresholds + r.recall)


def test_torch_tensors_are_accepted() -> None:
    rng = np.random.default_rng(0)
    x, y = quantised(rng, 30), rng.integers(0, 3, 30)
    assert pair_recall_at_far(torch.from_numpy(x), torch.from_numpy(y)) == pair_recall_at_far(x, y)


# --- 1-NN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gallery_per_class,seed", [(1, None), (3, None), (1, 0), (2, 12345)])
@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_nearest_neighbour_equals_the_oracle(gallery_per_class: int, seed: int | None, kind: str) -> None:
    rng = np.random.default_rng(gallery_per_class * 10 + (seed or 1))
    n = 120
    y = rng.permutation(np.repeat(np.arange(5), n // 5))
    x = quantised(rng, n, zeros=2) if kind == "ties" else rng.standard_normal((n, 6)) + np.eye(5, 6)[y]
    got = nearest_neighbour_accuracy(x, y, gallery_per_class=gallery_per_class, seed=seed, block_rows=7)
    assert got == oracle_nn(x, y, gallery_per_class, seed)
    assert got == nearest_neighbour_accuracy(x, y, gallery_per_class=gallery_per_class, seed=seed)


def test_nearest_neighbour_split_and_tie_break_by_hand() -> None:
    # gallery (seed None): index 0 (class 0) and index 1 (class 1); probes 2, 3, 4
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.1], [1.0, 1.0]])
    y = np.array([1, 0, 0, 1, 1])
    # probe 2 (class 0) and probe 4 (class 1) tie between both gallery items: lowest index 0
    # (class 1) wins, so probe 2 misses and probe 4 hits; probe 3 is nearest to 0 (class 1): hit
    assert nearest_neighbour_accuracy(x, y) == pytest.approx(2 / 3)
    g, p = gallery_split(y)
    assert g.tolist() == [0, 1] and p.tolist() == [2, 3, 4]


def test_seeded_gallery_is_reproducible_and_differs_from_the_first_examples() -> None:
    y = np.repeat(np.arange(3), 20)
    a, b = gallery_split(y, gallery_per_class=2, seed=5), gallery_split(y, gallery_per_class=2, seed=5)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    first = gallery_split(y, gallery_per_class=2)[0]
    assert first.tolist() == [0, 1, 20, 21, 40, 41] and a[0].tolist() != first.tolist()
    assert np.bincount(y[a[0]]).tolist() == [2, 2, 2] and a[0].size + a[1].size == 60


# --- held-out split ---------------------------------------------------------------------------


def test_held_out_split_masks() -> None:
    y = np.array([0, 7, 8, 9, 3, 7])
    trained, held = held_out_split(y, (7, 8, 9))
    assert held.tolist() == [False, True, True, True, False, True]
    assert (trained == ~held).all()
    assert held_out_split(y, [np.int64(3)])[1].tolist() == [False, False, False, False, True, False]


# --- embed -----------------------------------------------------------------------------------


def test_embed_normalises_batches_in_eval_without_grad() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Dropout(0.5))
    net.train()
    x = torch.randn(10, 3, 4)
    z = embed(net, x, batch_size=3)
    assert z.shape == (10, 5) and z.dtype == torch.float32 and not z.requires_grad
    assert net.training  # restored
    assert torch.allclose(z.norm(dim=1), torch.ones(10))
    net.eval()
    with torch.no_grad():
        want = torch.nn.functional.normalize(net(x).double(), dim=1).float()
    assert torch.allclose(z, want, atol=1e-6)  # eval: dropout off, so deterministic
    assert torch.allclose(z, embed(net, x.numpy(), batch_size=2048), atol=1e-6)  # numpy in, one batch


def test_embed_zero_and_tiny_rows_do_not_become_nan() -> None:
    rows = torch.tensor([[0.0, 0.0, 0.0], [1e-30, 0.0, 0.0], [3.0, 4.0, 0.0]])
    z = embed(lambda b: b, rows, batch_size=2)
    assert torch.equal(z, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.8, 0.0]]))


def test_embed_refuses_bad_input_and_output() -> None:
    with pytest.raises(UsageError, match="batch_size must be an integer >= 1"):
        embed(lambda b: b, torch.ones(2, 2), batch_size=0)
    with pytest.raises(UsageError, match="x is empty"):
        embed(lambda b: b, torch.ones(0, 2))
    with pytest.raises(UsageError, match=r"must return a \(batch, d\) tensor"):
        embed(lambda b: b, torch.ones(2, 2, 2))
    with pytest.raises(UsageError, match="NaN or inf for input 1"):
        embed(lambda b: b, torch.tensor([[1.0], [float("nan")]]))


# --- bad input --------------------------------------------------------------------------------

GOOD_X, GOOD_Y = np.eye(4)[[0, 0, 1, 1]], np.array([0, 0, 1, 1])


@pytest.mark.parametrize(
    "x,y,fars,message",
    [
        (GOOD_X, np.array([0.0, 0, 1, 1]), (0.1,), "labels must be a 1-D array of integers"),
        (GOOD_X, np.array([[0, 0, 1, 1]]), (0.1,), "labels must be a 1-D array of integers"),
        (GOOD_X, np.array([True, False, True, False]), (0.1,), "labels must be a 1-D array of integers"),
        (np.zeros((0, 4)), np.zeros(0, int), (0.1,), "labels are empty"),
        (GOOD_X, np.array([0, 0, 1]), (0.1,), "differ in length: 4 rows vs 3 labels"),
        (GOOD_X[:, 0], GOOD_Y, (0.1,), r"must be a 2-D \(n, d\) array"),
        (np.where(GOOD_X == 1, np.nan, 0), GOOD_Y, (0.1,), "must be finite; row 0"),
        (GOOD_X, GOOD_Y, (0.0,), r"open interval \(0, 1\); got 0.0"),
        (GOOD_X, GOOD_Y, (0.1, 1.0), r"open interval \(0, 1\); got 1.0"),
        (GOOD_X, GOOD_Y, (float("nan"),), r"open interval \(0, 1\)"),
        (GOOD_X, GOOD_Y, (), "fars is empty"),
        (GOOD_X, GOOD_Y, ("x",), r"sequence of numbers in \(0, 1\)"),
        (GOOD_X, np.array([0, 1, 2, 3]), (0.1,), "no positive pair"),
        (GOOD_X, np.zeros(4, int), (0.1,), "no negative pair"),
    ],
)
def test_pair_verification_refuses(x: np.ndarray, y: np.ndarray, fars: tuple, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        pair_recall_at_far(x, y, fars)


def test_block_rows_is_checked() -> None:
    with pytest.raises(UsageError, match="block_rows must be an integer >= 1"):
        pair_verification(GOOD_X, GOOD_Y, block_rows=0)


@pytest.mark.parametrize(
    "y,kwargs,message",
    [
        (np.array([0, 0, 1]), {}, "class 1 has 1 examples; with gallery_per_class = 1 every class needs at least 2"),
        (np.array([0, 0, 0, 1, 1]), {"gallery_per_class": 2}, "class 1 has 2 examples.*at least 3"),
        (np.array([0, 0, 1, 1]), {"gallery_per_class": 0}, "gallery_per_class must be an integer >= 1"),
        (np.array([0, 0, 1, 1]), {"seed": 1.5}, "seed must be an integer or None"),
        (np.zeros(0, int), {}, "labels are empty"),
        (np.array([0.5, 0, 1, 1]), {}, "labels must be a 1-D array of integers"),
    ],
)
def test_nearest_neighbour_refuses(y: np.ndarray, kwargs: dict, message: str) -> None:
    x = np.ones((len(y), 2))
    with pytest.raises(UsageError, match=message):
        nearest_neighbour_accuracy(x, y, **kwargs)


def test_nearest_neighbour_refuses_mismatched_lengths() -> None:
    with pytest.raises(UsageError, match="differ in length: 3 rows vs 4 labels"):
        nearest_neighbour_accuracy(np.ones((3, 2)), np.array([0, 0, 1, 1]))


@pytest.mark.parametrize(
    "held,message",
    [
        ((), "held_out is empty"),
        ((7, 7), "must be distinct"),
        ((7.0,), "must be integers"),
        ((5,), r"class 5 does not occur in the labels; classes present: \[0, 7, 8\]"),
        ((0, 7, 8), "covers every class"),
        (7, "must be a sequence of class ids"),
    ],
)
def test_held_out_split_refuses(held: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        held_out_split(np.array([0, 7, 8, 7]), held)  # type: ignore[arg-type]


def test_importing_the_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, crepe.users.embedding; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
