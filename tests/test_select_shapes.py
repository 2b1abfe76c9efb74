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

from crepe.selection.reference import select_reference


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
    through both symmetric passes (n > 256, d >= 64) and the tiled ones."""
    cases = [
        (530, 330, "noisy", "float32", 1, {"fraction": 0.3}),
        (600, 64, "grid", "float64", 2, {"fraction": 0.3}),
        (300, 40, "duplicates", "float64", 3, {"fraction": 0.3}),
        (90, 1024, "clean", "float32", 4, {"fraction": 0.3}),
    ]
    for case, portable in zip(cases, select_elsewhere({"CREPE_NO_AVX": "1"}, cases)):
        n, d, style, dtype, seed, kw = case
        assert_same_as(crepe.select(proxy_like(n, d, style, getattr(np, dtype), seed), **kw), portable)
