"""The stochastic and sharded engines (issue 25) against the exact one and the NumPy oracle.

Bounds held (docs/scale.md): stochastic greedy E[F] >= (1 - 1/e - epsilon) OPT
>= (1 - 1/e - epsilon) F(exact greedy); sharded F >= the sum of the shard
objectives (class D) >= (1 - 1/e) sum_p OPT_p(k_p), with OPT_p by brute force;
the merge never below the unmerged selection.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

import crepe
from crepe.selection import sharded
from crepe.selection.reference import distances, select_reference
from crepe.selection.trace import diameter, trace

BOUND = 1 - 1 / math.e


def blobs(n: int, d: int = 4, seed: int = 0, classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """float64 points around a few centres (clusters make greedy choices matter)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(5, d))
    X = centres[rng.integers(0, 5, size=n)] + rng.normal(size=(n, d))
    return X, rng.integers(0, classes, size=n)


def class_value(X: np.ndarray, picks: np.ndarray) -> float:
    """F(S) of one class by the oracle's distances: sum_i (D - min_{j in S} d_ij)."""
    dist = distances(X)
    return float((dist.max() - dist[:, picks].min(axis=1)).sum())


def brute_optimum(X: np.ndarray, k: int, D: float) -> float:
    """max over all k-subsets of sum_i (D - min_{j in S} d_ij): tiny shards only."""
    dist = distances(X)
    return max(float((D - dist[:, list(S)].min(axis=1)).sum()) for S in itertools.combinations(range(len(X)), k))


# --- stochastic greedy


def test_stochastic_meets_its_bound_on_average() -> None:
    X, y = blobs(600, classes=2)
    exact = select_reference(X, y, k=30)
    for eps in (0.5, 0.2, 0.05):
        ratios = [crepe.select(X, y, k=30, engine="stochastic", epsilon=eps, seed=s).objective / exact.objective
                  for s in range(6)]  # fmt: skip
        mean = np.mean(ratios, axis=0)
        assert (mean >= BOUND - eps).all(), (eps, mean)


def test_stochastic_bound_is_not_vacuous_on_cost() -> None:
    """F is dominated by n D; the part the greedy chooses, sum_i min_j d_ij, must
    stay near exact too (a sampler that ignores the gains fails this)."""
    X, _ = blobs(600)
    exact = select_reference(X, k=30)
    D = diameter(X, threads=1)
    cost_exact = 600 * D - exact.objective[0]
    st = crepe.select(X, k=30, engine="stochastic", epsilon=0.05, seed=0)
    cost = 600 * D - st.objective[0]
    rand = np.random.default_rng(0).choice(600, 30, replace=False)
    cost_random = 600 * D - class_value(X, rand)
    assert cost <= 1.1 * cost_exact < cost_random


def test_stochastic_with_every_candidate_is_exact() -> None:
    """s >= n: every step sees all candidates, so the exact greedy, up to the
    rounding of exact ties (the engine sums float64 blocks, not the canonical order)."""
    X, y = blobs(300, classes=3, seed=1)
    exact = select_reference(X, y, k=20)
    st = crepe.select(X, y, k=20, engine="stochastic", epsilon=1e-12, seed=3)
    np.testing.assert_allclose(st.objective, exact.objective, rtol=1e-12)
    np.testing.assert_allclose(st.gains, exact.gains, rtol=1e-9)
    np.testing.assert_array_equal(st.weights.sum(), 300)


def test_lazy_evaluation_picks_what_a_full_evaluation_picks() -> None:
    """Loose but valid bounds (true gain plus slack): the lazy scan must still
    return the sample's best gain, lowest index on ties, whatever block it is in."""
    from crepe.selection.stochastic import _lazy_best
    from crepe.selection.trace import block_distances, widen

    rng = np.random.default_rng(0)
    X, _ = blobs(500, seed=3)
    X64, sq = widen(X)
    for trial in range(20):
        cur = block_distances(X64, sq, rng.choice(500, 5, replace=False)).min(axis=1)
        sample = rng.choice(500, 300, replace=False)
        gains = np.maximum(cur[:, None] - block_distances(X64, sq, sample), 0.0).sum(axis=0)
        bound = np.full(500, np.inf)
        bound[sample] = gains + rng.exponential(gains.max() * (trial % 4), size=300)
        e, g = _lazy_best(X64, sq, cur, bound, sample)
        top = np.isclose(gains, gains.max(), rtol=1e-13, atol=0)  # block shapes round the sums differently
        assert g == pytest.approx(gains.max(), rel=1e-13) and e == sample[top].min()


def test_stochastic_weights_go_to_the_earliest_of_equally_near_picks() -> None:
    X = np.random.default_rng(4).integers(-2, 3, size=(400, 3)).astype(np.float64)  # many exact ties
    for seed in range(3):
        st = crepe.select(X, k=15, engine="stochastic", epsilon=0.2, seed=seed)
        nearest = distances(X)[:, st.indices].argmin(axis=1)  # argmin: the first (earliest) pick on ties
        np.testing.assert_array_equal(st.weights, np.bincount(nearest, minlength=15))


def test_stochastic_outputs_are_consistent_and_seeded() -> None:
    X, y = blobs(500, classes=2, seed=2)
    a = crepe.select(X, y, k=25, engine="stochastic", epsilon=0.3, seed=7)
    assert a == crepe.select(X, y, k=25, engine="stochastic", epsilon=0.3, seed=7)
    assert a != crepe.select(X, y, k=25, engine="stochastic", epsilon=0.3, seed=8)
    for c in range(2):
        rows = np.flatnonzero(y == c)
        picks = np.searchsorted(rows, a.indices[a.labels == c])
        np.testing.assert_array_equal(rows[picks], a.indices[a.labels == c])  # picks are of their class
        g, _, assign, obj = trace(X[rows], picks, diameter(X[rows], threads=1))
        np.testing.assert_allclose(a.gains[a.labels == c], g, rtol=1e-9)
        np.testing.assert_array_equal(a.weights[a.labels == c], np.bincount(assign, minlength=25))
        assert a.objective[c] == pytest.approx(class_value(X[rows], picks), rel=1e-12)
    np.testing.assert_array_equal([a.weights[a.labels == c].sum() for c in range(2)], np.bincount(y))


# --- sharded


def test_one_shard_is_the_exact_engine() -> None:
    X, y = blobs(400, classes=3, seed=4)
    for merge in (False, True):
        got = crepe.select(X, y, fraction=0.1, engine="sharded", shard_size=400, merge=merge, seed=0)
        assert got == crepe.select(X, y, fraction=0.1)


def shard_of_each_pick(n: int, shard_size: int, seed: int, c: int, classes: int) -> list[np.ndarray]:
    """The shards class c's engine run uses (its child of SeedSequence(seed))."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(classes)[c])
    return sharded.split(n, shard_size, rng)


def test_split_does_not_depend_on_the_data() -> None:
    """Two different X with the same class sizes: every pick lies in the shard the
    seed alone decides, each shard holding exactly its budget of picks."""
    n, k, size = 240, 24, 50
    X1, _ = blobs(n, seed=5)
    X2 = np.random.default_rng(6).uniform(-1, 1, size=(n, 4)) ** 3
    for X in (X1, X2):
        got = crepe.select(X, k=k, engine="sharded", shard_size=size, seed=11)
        shards = shard_of_each_pick(n, size, 11, 0, 1)
        want = sharded.budgets([len(s) for s in shards], k)
        counts = [np.isin(got.indices, s).sum() for s in shards]
        np.testing.assert_array_equal(counts, want)
    assert [len(s) for s in shards] == [48] * 5


def test_shard_weights_and_gains_are_counted_within_shards() -> None:
    X, _ = blobs(300, seed=7)
    got = crepe.select(X, k=30, engine="sharded", shard_size=100, seed=2)
    D = distances(X).max()  # the class's D
    lo, want = 0, 0.0
    for rows in shard_of_each_pick(300, 100, 2, 0, 1):
        ref = select_reference(X[rows], k=10)  # the oracle on the shard alone, in the shard's D
        cost = 100 * distances(X[rows]).max() - ref.objective[0]  # sum of distances to the shard's picks
        np.testing.assert_array_equal(got.indices[lo : lo + 10], rows[ref.indices])
        np.testing.assert_array_equal(got.weights[lo : lo + 10], ref.weights)
        np.testing.assert_allclose(got.gains[lo + 1 : lo + 10], ref.gains[1:], rtol=1e-12)
        assert got.gains[lo] == pytest.approx(100 * D - distances(X[rows])[:, ref.indices[0]].sum(), rel=1e-12)
        want += 100 * D - cost
        lo += 10
    assert got.weights.sum() == 300
    assert got.objective[0] == pytest.approx(want, rel=1e-12)
    assert got.objective[0] == pytest.approx(got.gains.sum(), rel=1e-12)
    assert got.objective[0] <= class_value(X, got.indices) * (1 + 1e-12)  # a lower bound on F(S)


def test_sharded_meets_the_per_shard_greedy_bound() -> None:
    """F(S) >= sum_p F_p(S_p) >= (1 - 1/e) sum_p OPT_p(k_p), OPT_p by brute force."""
    for seed in range(4):
        X, _ = blobs(48, d=3, seed=seed)
        got = crepe.select(X, k=9, engine="sharded", shard_size=16, seed=seed)
        D = diameter(X, threads=1)
        opt = sum(brute_optimum(X[rows], 3, D) for rows in shard_of_each_pick(48, 16, seed, 0, 1))
        assert class_value(X, got.indices) >= got.objective[0] * (1 - 1e-12)
        assert got.objective[0] >= BOUND * opt
        assert got.objective[0] <= opt * (1 + 1e-12)  # greedy cannot beat the optimum


def test_merge_is_never_below_no_merge_and_counts_over_the_class() -> None:
    X, y = blobs(600, classes=2, seed=8)
    for seed in range(3):
        plain = crepe.select(X, y, k=20, engine="sharded", shard_size=60, seed=seed)
        merged = crepe.select(X, y, k=20, engine="sharded", shard_size=60, merge=True, seed=seed)
        for c in range(2):
            rows = np.flatnonzero(y == c)
            mine = np.searchsorted(rows, merged.indices[merged.labels == c])  # within-class picks
            theirs = np.searchsorted(rows, plain.indices[plain.labels == c])
            assert merged.objective[c] == pytest.approx(class_value(X[rows], mine), rel=1e-12)
            assert merged.objective[c] >= class_value(X[rows], theirs) * (1 - 1e-12)
            nearest = distances(X[rows])[:, mine].argmin(axis=1)  # weights over the whole class
            np.testing.assert_array_equal(merged.weights[merged.labels == c], np.bincount(nearest, minlength=20))
        np.testing.assert_array_equal([merged.weights[merged.labels == c].sum() for c in range(2)], np.bincount(y))


def test_merge_falls_back_to_the_shard_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge that chooses badly (here: the union's k points farthest out)
    loses to the shards' own picks, which are then returned."""
    real = sharded.select_shard
    calls = []

    def bad_merge(Xs: np.ndarray, budget: int, **kw: object) -> crepe.Selection:
        calls.append(len(Xs))
        if len(calls) < 6:  # 5 shards, then the merge
            return real(Xs, budget, **kw)
        far = np.argsort(-np.linalg.norm(Xs - Xs.mean(axis=0), axis=1))[:budget]
        return dataclasses.replace(real(Xs[far], budget, **kw), indices=far)

    X, _ = blobs(300, seed=9)
    plain = crepe.select(X, k=20, engine="sharded", shard_size=60, seed=1)
    monkeypatch.setattr(sharded, "select_shard", bad_merge)
    merged = crepe.select(X, k=20, engine="sharded", shard_size=60, merge=True, seed=1)
    assert len(calls) == 6
    np.testing.assert_array_equal(np.sort(merged.indices), np.sort(plain.indices))
    assert merged.objective[0] == pytest.approx(class_value(X, plain.indices), rel=1e-12)


def test_budgets_are_proportional_and_sum_to_k() -> None:
    np.testing.assert_array_equal(sharded.budgets([4, 3, 3], 3), [1, 1, 1])
    np.testing.assert_array_equal(sharded.budgets([34, 33, 33], 10), [4, 3, 3])
    np.testing.assert_array_equal(sharded.budgets([50, 50], 7), [4, 3])  # equal remainders: the earlier shard


# --- bad input


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"engine": "greedi"}, r"unknown engine 'greedi'; valid: \['exact', 'sharded', 'stochastic'\]"),
        ({"engine": "stochastic"}, "needs epsilon="),
        ({"engine": "stochastic", "epsilon": 0.0}, r"epsilon must be a real number in \(0, 1\)"),
        ({"engine": "stochastic", "epsilon": 1.0}, r"epsilon must be a real number in \(0, 1\)"),
        ({"engine": "stochastic", "epsilon": float("nan")}, r"epsilon must be a real number in \(0, 1\)"),
        ({"engine": "stochastic", "epsilon": 0.1, "shard_size": 10}, "shard_size= applies to engine='sharded' only"),
        ({"engine": "sharded"}, "needs shard_size="),
        ({"engine": "sharded", "shard_size": 0}, "shard_size must be an int >= 1"),
        ({"engine": "sharded", "shard_size": 2.5}, "shard_size must be an int >= 1"),
        ({"engine": "sharded", "shard_size": 10, "merge": 1}, "merge must be True or False"),
        ({"engine": "sharded", "shard_size": 10, "epsilon": 0.1}, "epsilon= applies to engine='stochastic' only"),
        ({"engine": "sharded", "shard_size": 10, "seed": -1}, "seed must be an int >= 0"),
        ({"engine": "stochastic", "epsilon": 0.1, "method": "naive"}, "method='naive' applies to the exact engine"),
        ({"shard_size": 10}, "shard_size= applies to engine='sharded' only, not 'exact'"),
        ({"seed": 1}, "seed= applies to engine='sharded' or 'stochastic' only, not 'exact'"),
        # 100 points, 5 picks: 10 shards of 10 would leave five without a pick
        ({"engine": "sharded", "shard_size": 10}, r"into 10 shards, more than its budget of 5 picks.*shard_size >= 20"),
    ],
)
def test_bad_options(kw: dict[str, object], msg: str) -> None:
    X = np.random.default_rng(0).normal(size=(100, 3))
    with pytest.raises(ValueError, match=msg):
        crepe.select(X, k=5, **kw)


def test_shard_size_at_the_limit_is_fine() -> None:
    X = np.random.default_rng(0).normal(size=(100, 3))
    assert crepe.select(X, k=5, engine="sharded", shard_size=20, seed=0).weights.sum() == 100
