"""The engine at shapes beyond d = 10 (issue 15): wide proxies through the
panel layout and the FMA-pipe kernels, tails of panels and blocks, ties and
duplicates, gain lists kept from step 1 or not at all. Lazy, naive and the
NumPy oracle must agree bit for bit, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
from test_select import assert_same_as, proxy_like, select_elsewhere

import crepe
from crepe import _core

from crepe.selection.reference import blocked_sum, distances, select_reference


def wide(n: int, d: int, style: str, dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if style == "grid":  # few distinct values: exact ties in distances and gains
        X = rng.integers(0, 3, size=(n, d)).astype(dtype)
    elif style == "duplicates":  # every point twice, in shuffled order
        half = rng.normal(size=((n + 1) // 2, d))
        X = np.concatenate([half, half])[rng.permutation(2 * len(half))][:n]
    else:  # clustered, like noisy last-layer proxies
        X = rng.normal(0.0, 2.0, size=(4, d))[rng.integers(0, 4, size=n)] + rng.normal(size=(n, d))
    return np.ascontiguousarray(X, dtype=dtype)


def assert_same(a: crepe.Selection, b: crepe.Selection) -> None:
    for name in ("indices", "weights", "gains", "objective"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


CASES = [  # (n, d, style): panel tails (n % 8), block tails (n > 256: the symmetric
    # pass over block pairs from d = 32 on), d past one cache line
    (7, 330, "normal"),
    (61, 64, "grid"),
    (130, 33, "duplicates"),
    (300, 130, "normal"),
    (300, 64, "grid"),
    (203, 1024, "normal"),
    (777, 48, "grid"),
    (530, 330, "duplicates"),
    (600, 31, "normal"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("n", "d", "style"), CASES)
def test_wide_lazy_naive_oracle(n: int, d: int, style: str, dtype: type) -> None:
    X = wide(n, d, style, dtype, seed=n + d)
    y = np.arange(n) % 2 if n > 100 else None
    ref = select_reference(X, y, fraction=0.2)
    assert_same(crepe.select(X, y, fraction=0.2), ref)
    assert_same(crepe.select(X, y, fraction=0.2, method="naive"), ref)
    assert_same(crepe.select(X, y, fraction=0.2, threads=1), ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_lists_from_step_one_change_nothing(dtype: type) -> None:
    """Gain lists assembled by step 1's symmetric pass (whole, cut short by
    room, or none at all), or kept from later tiles only, and step 1 reading
    the medoid pass's kept distances (float32 from 3.2 MB, float64 from the
    default budget) or computing them: the same picks and gains bit for bit,
    for any thread count."""
    X = wide(700, 96, "normal", dtype, seed=5)
    cls = np.zeros(len(X), np.int64)
    budgets = np.array([140], np.int64)
    runs = []
    for list_bytes in (0, 30_000, 400_000, 1_500_000, 3_200_000, _core.LIST_BUDGET):
        for threads in (1, 2):
            out = (np.empty(140, np.int64), np.empty(140, np.int64), np.empty(140), np.empty(1))
            _core.select_per_class(X, cls, budgets, 1, threads, *out, list_bytes=list_bytes)
            runs.append(out)
    for out in runs[1:]:
        for a, b in zip(runs[0], out):
            np.testing.assert_array_equal(a, b)
    assert_same(crepe.select(X, k=140, method="naive"), crepe.select(X, k=140))


def test_portable_build_matches_simd_at_wide_d() -> None:
    """CREPE_NO_AVX=1 (read at start-up) runs the portable kernels: same bits,
    through both symmetric passes (n > 256, d >= 64), the tiled ones and the
    medoid from bounds (n >= 1,024)."""
    cases = [
        (1100, 10, "noisy", "float32", 5, {"fraction": 0.1}),
        (530, 330, "noisy", "float32", 1, {"fraction": 0.3}),
        (600, 64, "grid", "float64", 2, {"fraction": 0.3}),
        (300, 40, "duplicates", "float64", 3, {"fraction": 0.3}),
        (90, 1024, "clean", "float32", 4, {"fraction": 0.3}),
    ]
    for case, portable in zip(cases, select_elsewhere({"CREPE_NO_AVX": "1"}, cases)):
        n, d, style, dtype, seed, kw = case
        assert_same_as(crepe.select(proxy_like(n, d, style, getattr(np, dtype), seed), **kw), portable)


BOUNDED = [  # (n, d, style, transform): classes of >= 1,024 points find their medoid
    # and D from moment and norm bounds instead of the n^2 pass
    (1100, 10, "normal", None),
    (1500, 2, "grid", None),  # ties among column sums and distances
    (1024, 1, "normal", None),
    (1200, 40, "duplicates", None),
    (1300, 10, "normal", "offset"),  # far from the origin: cancellation in the moments
    (1100, 10, "normal", "tiny"),  # squared distances below float32's normal range
    (1050, 3, "normal", "same"),  # one point repeated: every distance 0, D = 0
    (1100, 10, "normal", "outlier"),  # one far point: D set by it, centroid pulled
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("n", "d", "style", "transform"), BOUNDED)
def test_bounded_medoid_is_the_full_pass(n: int, d: int, style: str, transform: str | None, dtype: type) -> None:
    """The medoid (with its lowest-index tie-break), its column sum and D
    found by bounds are the full pass's bit for bit: the oracle's first
    gain and objective, for one pick (k = 1) and for many."""
    X = wide(n, d, style, np.float64, seed=n + d).astype(dtype)
    if transform == "offset":
        X = X + dtype(1e4)
    elif transform == "tiny":
        X = X * dtype(1e-21)
    elif transform == "same":
        X = np.repeat(X[:1], n, axis=0)
    elif transform == "outlier":
        X[n // 2] = dtype(1e3)
    X = np.ascontiguousarray(X, dtype=dtype)
    for k in (1, n // 10):
        ref = select_reference(X, k=k)
        assert_same(crepe.select(X, k=k), ref)
        assert_same(crepe.select(X, k=k, method="naive", threads=1), ref)


def test_bounded_medoid_at_wide_d_when_step_one_keeps_nothing() -> None:
    """From d = 64 the medoid pass fills the distances step 1 reads; where
    they do not fit the budget (here: none), the bounds find the medoid
    instead, with the same picks and gains as with the full pass."""
    X = wide(1030, 64, "normal", np.float32, seed=7)
    cls = np.zeros(len(X), np.int64)
    budgets = np.array([100], np.int64)
    outs = []
    for list_bytes in (0, _core.LIST_BUDGET):  # bounds, then the kept full pass
        out = (np.empty(100, np.int64), np.empty(100, np.int64), np.empty(100), np.empty(1))
        _core.select_per_class(X, cls, budgets, 1, 2, *out, list_bytes=list_bytes)
        outs.append(out)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert_same(crepe.select(X, k=100), select_reference(X, k=100))


def _bound_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    two = np.zeros((1024, 2))
    two[::2] = (1.0, 1.0)  # two sites: every distance 0 or sqrt 2, the bound is exact
    return [
        ("two sites", two),
        ("gaussian d=128", rng.normal(size=(1100, 128))),
        ("clustered d=10", wide(1500, 10, "normal", np.float64, seed=4)),
        ("offset d=10", rng.normal(size=(1200, 10)) + 1e4),
        ("grid d=3", wide(1100, 3, "grid", np.float64, seed=5)),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", [c for c, _ in _bound_cases()])
def test_column_sum_bounds_hold_against_the_oracle(case: str, dtype: type) -> None:
    """The medoid search skips a candidate whose lower bound exceeds a column
    sum already found, so every bound must be at most the exact column sum
    as the engine computes it (rounding included): checked against the
    oracle's sums. Where the bound is exact in real arithmetic (two sites)
    it must also come within 1e-5 of the sum: only the rounding margins
    separate them."""
    X = np.ascontiguousarray(dict(_bound_cases())[case], dtype=dtype)
    S = blocked_sum(distances(X))
    lower = _core.column_sum_lower_bounds(X, 2)
    assert np.all(lower <= S), f"{case}: bound above the column sum by {np.max(lower - S)}"
    if case == "two sites":
        assert np.min(lower / S) > 1 - 1e-5


def test_diameter_not_on_the_farthest_points_rows() -> None:
    """D from bounds when the rows of the point farthest from the centroid,
    and of the point farthest from it, miss the largest distance: a Gaussian
    cluster at the origin, A = (0, 12) farthest out, B = (0, -9) its farthest
    point (and A is B's), while C = (-11, 0) and D = (11, 0) are 22 apart.
    The pairs among the far-out points must find it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1100, 2))
    X[[10, 500, 700, 900]] = [(0.0, 12.0), (0.0, -9.0), (-11.0, 0.0), (11.0, 0.0)]
    for dtype in (np.float32, np.float64):
        Xt = np.ascontiguousarray(X, dtype=dtype)
        ref = select_reference(Xt, k=5)
        assert distances(Xt).max() == pytest.approx(22.0)
        assert_same(crepe.select(Xt, k=5), ref)
