"""crepe.select against the NumPy oracle, golden values, determinism, bad input."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crepe
from crepe import _core
from crepe.selection import reference
from crepe.selection.problem import class_budget
from crepe.selection.reference import BLOCK, select_reference


def assert_same(a: crepe.Selection, b: crepe.Selection) -> None:
    # The engine and the oracle sum in the same fixed order, so even gains are
    # bitwise equal; the issue asks for 1e-6 relative, we hold them to exact.
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.gains, b.gains)
    np.testing.assert_array_equal(a.objective, b.objective)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.class_sizes, b.class_sizes)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | None, dict[str, object]]:
    n = draw(st.integers(1, 200))
    d = draw(st.integers(1, 16))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    style = draw(st.sampled_from(["grid", "normal", "duplicates"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if style == "grid":  # few distinct values: many exact ties in distances and gains
        X = rng.integers(-2, 3, size=(n, d)).astype(dtype)
    elif style == "normal":
        X = (rng.normal(size=(n, d)) * draw(st.sampled_from([1e-3, 1.0, 1e3]))).astype(dtype)
    else:  # rows drawn from a small pool: exact duplicate points
        pool = rng.normal(size=(max(1, n // 4), d))
        X = pool[rng.integers(0, len(pool), size=n)].astype(dtype)
    n_classes = draw(st.integers(1, 4))
    y = None if n_classes == 1 and draw(st.booleans()) else rng.integers(0, n_classes, size=n) * 3 - 1
    sizes = np.unique(y, return_counts=True)[1] if y is not None else np.array([n])
    if draw(st.booleans()):
        budget: dict[str, object] = {"fraction": draw(st.floats(0.01, 1.0))}
    else:
        budget = {"k": draw(st.integers(1, int(sizes.min())))}
    return X, y, budget


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_lazy_naive_reference_agree(problem: tuple[np.ndarray, np.ndarray | None, dict[str, object]]) -> None:
    X, y, budget = problem
    ref = select_reference(X, y, **budget)  # type: ignore[arg-type]
    lazy = crepe.select(X, y, method="lazy", **budget)  # type: ignore[arg-type]
    naive = crepe.select(X, y, method="naive", **budget)  # type: ignore[arg-type]
    assert_same(lazy, ref)
    assert_same(naive, ref)
    # weights count every point of the class exactly once
    starts = np.concatenate([[0], np.cumsum(np.bincount(np.searchsorted(ref.classes, ref.labels)))])
    per_class = [int(lazy.weights[a:b].sum()) for a, b in zip(starts[:-1], starts[1:])]
    assert per_class == lazy.class_sizes.tolist()
    # gains add up to the objective, and picks are distinct rows of their class
    np.testing.assert_allclose(
        [lazy.gains[a:b].sum() for a, b in zip(starts[:-1], starts[1:])], lazy.objective, rtol=1e-9, atol=1e-9
    )
    assert len(np.unique(lazy.indices)) == len(lazy.indices)
    labels = np.zeros(len(X), dtype=np.int64) if y is None else y
    np.testing.assert_array_equal(labels[lazy.indices], lazy.labels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_blocks_and_threads(dtype: type) -> None:
    """Classes larger than the summation block, duplicates, 1 vs 2 threads."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3 * BLOCK + 17, 5)).astype(dtype)
    X[400:] = X[: len(X) - 400]  # exact duplicates across blocks
    ref = select_reference(X, k=25)
    for threads in (1, 2):
        assert_same(crepe.select(X, k=25, threads=threads), ref)


def proxy_like(n: int, d: int, style: str, dtype: type, seed: int) -> np.ndarray:
    """Rows shaped like the engine's real inputs: softmax minus one-hot (clean),
    the same clipped and noised (noisy), or tie-heavy grids and duplicates."""
    rng = np.random.default_rng(seed)
    if style == "grid":
        return rng.integers(-2, 3, size=(n, d)).astype(dtype)
    if style == "duplicates":
        return rng.normal(size=(n // 5, d))[rng.integers(0, n // 5, size=n)].astype(dtype)
    logits = rng.normal(size=(n, d)) * 2.0 + np.eye(d)[0] * 3.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    g = p / p.sum(axis=1, keepdims=True) - np.eye(d)[0]
    if style == "noisy":
        g = g / np.maximum(1.0, np.linalg.norm(g, axis=1, keepdims=True)) + rng.normal(size=g.shape)
    return g.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("style", ["clean", "noisy", "grid", "duplicates"])
def test_gain_lists_match_naive(style: str, dtype: type) -> None:
    """Long lazy runs on multi-block classes, where most re-evaluations come
    from per-candidate gain lists and only the rest from full tiles: the same
    picks and bitwise the same gains as the naive engine, which never uses lists."""
    X = proxy_like(1500, 3 if style == "grid" else 10, style, dtype, seed=11)
    lazy = crepe.select(X, k=200, method="lazy")
    assert_same(lazy, crepe.select(X, k=200, method="naive"))
    small = X[:600]
    assert_same(crepe.select(small, k=120), select_reference(small, k=120))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_list_budget_changes_nothing(dtype: type) -> None:
    """No lists, a budget that runs out after a few, and the default: the
    engine's outputs are identical (lists only change how gains are summed up,
    never the numbers)."""
    X = proxy_like(2000, 10, "noisy", dtype, seed=5)
    y = np.repeat([0, 1], 1000)
    budgets = np.array([150, 100], dtype=np.int64)
    runs = []
    for list_bytes in (0, 40_000, _core.LIST_BUDGET):
        out = (np.empty(250, np.int64), np.empty(250, np.int64), np.empty(250), np.empty(2))
        _core.select_per_class(X, y, budgets, 1, 1, *out, list_bytes=list_bytes)
        runs.append(out)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="list_bytes must be >= 0"):
        _core.select_per_class(X, y, budgets, 1, 1, *runs[0], list_bytes=-1)


Case = tuple[int, int, str, str, int, dict[str, int]]  # proxy_like's n, d, style, dtype name, seed; select kwargs


def select_elsewhere(env: dict[str, str], cases: list[Case]) -> list[dict[str, np.ndarray]]:
    """For each case (n, d, style, dtype name, seed, select kwargs), run
    crepe.select(proxy_like(n, d, style, dtype, seed), **kwargs) in a fresh
    Python with `env` added (for settings read once, at start-up); returns each
    result's indices, gains and objective."""
    code = (
        "import ast, sys, numpy as np, crepe\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_select import proxy_like\n"
        "out = {}\n"
        "for j, (n, d, style, dtype, seed, kw) in enumerate(ast.literal_eval(sys.argv[3])):\n"
        "    s = crepe.select(proxy_like(n, d, style, getattr(np, dtype), seed), **kw)\n"
        "    out[f'i{j}'], out[f'g{j}'], out[f'o{j}'] = s.indices, s.gains, s.objective\n"
        "np.savez(sys.argv[2], **out)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.npz"
        args = [sys.executable, "-c", code, str(Path(__file__).parent), str(path), repr(cases)]
        subprocess.run(args, env=dict(os.environ, **env), check=True)
        with np.load(path) as f:
            return [{"indices": f[f"i{j}"], "gains": f[f"g{j}"], "objective": f[f"o{j}"]} for j in range(len(cases))]


def assert_same_as(s: crepe.Selection, other: dict[str, np.ndarray]) -> None:
    for name, value in other.items():
        np.testing.assert_array_equal(value, getattr(s, name))


def test_generic_build_matches_avx() -> None:
    """The portable kernels (forced with CREPE_NO_AVX=1, read at start-up) give
    bitwise the same selections as the AVX ones used in this process."""
    cases: list[Case] = [
        (900, 6, style, dtype, j, {"k": 90})
        for j, (style, dtype) in enumerate([("noisy", "float32"), ("clean", "float64"), ("grid", "float32")])
    ]
    for case, generic in zip(cases, select_elsewhere({"CREPE_NO_AVX": "1"}, cases)):
        n, d, style, dtype, seed, kw = case
        assert_same_as(crepe.select(proxy_like(n, d, style, getattr(np, dtype), seed), **kw), generic)  # type: ignore[arg-type]


def test_large_class_split_over_threads() -> None:
    """A class of >= 64 blocks: lazy re-evaluations are split over the threads
    in runs of whole blocks; 1 and 2 threads, and the naive engine, agree bit for bit.
    float64, because float32 distances widened to double often sum exactly in
    any order, which would hide a summation-order slip."""
    X = proxy_like(64 * BLOCK + 300, 4, "noisy", np.float64, seed=3)
    one = crepe.select(X, k=400, threads=1)
    assert_same(crepe.select(X, k=400, threads=2), one)
    naive = crepe.select(X, k=4, method="naive", threads=2)
    np.testing.assert_array_equal(one.indices[:4], naive.indices)
    np.testing.assert_array_equal(one.gains[:4], naive.gains)
    # OpenMP may start fewer threads than asked (here: a limit of 1); every run is still done.
    case: Case = (64 * BLOCK + 300, 4, "noisy", "float64", 3, {"k": 400, "threads": 2})
    assert_same_as(one, select_elsewhere({"OMP_THREAD_LIMIT": "1"}, [case])[0])


def test_threads_do_not_change_results() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4000, 10)).astype(np.float32)
    y = rng.integers(0, 10, size=4000)
    for args in ({"y": y, "fraction": 0.1}, {"y": None, "k": 300}):
        one = crepe.select(X, threads=1, **args)  # type: ignore[arg-type]
        two = crepe.select(X, threads=2, **args)  # type: ignore[arg-type]
        assert_same(one, two)


def test_block_size_matches_engine() -> None:
    assert _core.BLOCK == BLOCK


def test_golden() -> None:
    """Frozen result of a small seeded case (two classes, labels 3 and 7)."""
    X, y = golden_case()
    s = crepe.select(X, y, fraction=0.2)
    assert s.indices.tolist() == [10, 7, 2, 3, 38, 23, 28, 34]
    assert s.weights.tolist() == [6, 7, 3, 4, 8, 5, 5, 2]
    assert s.labels.tolist() == [3, 3, 3, 3, 7, 7, 7, 7]
    np.testing.assert_allclose(s.objective, [73.51428596587851, 75.22794675157766], rtol=1e-12)
    np.testing.assert_allclose(
        s.gains,
        [62.5305976318635, 5.465496218016002, 2.8552462037111046, 2.662945912287892,
         64.68600385551257, 4.040315450619023, 3.628097765954514, 2.873529679491579],
        rtol=1e-12,
    )


# Budgets worked out by hand: f * n_c rounded half up, at least 1, at most n_c.
HAND_BUDGETS = [
    (0.1, [5, 15, 25, 1], [1, 2, 3, 1]),  # 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, 0.1 -> at least 1
    (0.05, [30, 10, 49], [2, 1, 2]),  # 1.5 -> 2, 0.5 -> 1, 2.45 -> 2
    (0.5, [3, 2, 7], [2, 1, 4]),  # 1.5 -> 2, 1.0 -> 1, 3.5 -> 4
    (1.0, [1, 4, 9], [1, 4, 9]),  # all of each class
]


@pytest.mark.parametrize(("fraction", "sizes", "want"), HAND_BUDGETS)
def test_budgets_match_hand_values(fraction: float, sizes: list[int], want: list[int]) -> None:
    """The engine's rule and the oracle's own count, each against the hand values:
    the oracle does not share the engine's budget code, so this and the oracle
    test catch a fault in either."""
    assert [class_budget(n, fraction) for n in sizes] == want
    assert reference.budgets(np.array(sizes), fraction=fraction, k=None).tolist() == want
    y = np.repeat(np.arange(len(sizes)), sizes)
    X = np.random.default_rng(0).normal(size=(len(y), 2))
    for s in (crepe.select(X, y, fraction=fraction), select_reference(X, y, fraction=fraction)):
        assert np.bincount(np.searchsorted(s.classes, s.labels)).tolist() == want


def test_inputs_torch_and_layouts() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 6))
    y = rng.integers(0, 3, size=300)
    want = crepe.select(X, y, fraction=0.1)
    assert_same(crepe.select(torch.from_numpy(X), torch.from_numpy(y), fraction=0.1), want)
    assert_same(crepe.select(torch.from_numpy(X).requires_grad_(), y, fraction=0.1), want)
    assert_same(crepe.select(np.asfortranarray(X), y, fraction=0.1), want)
    wide = np.zeros((300, 12))
    wide[:, ::2] = X
    assert_same(crepe.select(wide[:, ::2], y, fraction=0.1), want)  # strided view
    assert_same(crepe.select(X, y.astype(np.uint8), fraction=0.1), want)


def test_result_is_read_only() -> None:
    s = crepe.select(np.eye(4), k=2)
    with pytest.raises(ValueError):
        s.indices[0] = 1
    with pytest.raises(AttributeError):
        s.indices = np.arange(2)  # type: ignore[misc]


def golden_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2024)
    return np.round(rng.normal(size=(40, 3)), 1), np.repeat([3, 7], 20)


def test_result_repr_and_equality() -> None:
    X, y = golden_case()
    s = crepe.select(X, y, fraction=0.2)
    assert repr(s) == "Selection(8 picks of 40 points, 2 classes, objective 148.742)"
    assert s == crepe.select(X, y, fraction=0.2, method="naive")
    assert s == select_reference(X, y, fraction=0.2)
    assert s != crepe.select(X, y, fraction=0.3)  # other shapes
    assert s != crepe.select(X, y.astype(np.int32), fraction=0.2)  # same values, labels of another dtype
    assert s != dataclasses.replace(s, gains=s.gains + 1e-12)
    assert (s == "s") is False and s != None  # noqa: E711
    with pytest.raises(TypeError, match="unhashable"):
        hash(s)


def test_result_and_select_are_documented() -> None:
    doc = crepe.Selection.__doc__ or ""
    for f in dataclasses.fields(crepe.Selection):
        assert f"\n        {f.name}: " in doc, f"Selection's docstring does not explain {f.name}"
    returns = " ".join((crepe.select.__doc__ or "").partition("\n    Returns:\n")[2].split())
    assert "Torch inputs, CPU or CUDA, come back as numpy arrays" in returns


def test_torch_input_returns_numpy() -> None:
    torch = pytest.importorskip("torch")
    X, y = golden_case()
    s = crepe.select(torch.from_numpy(X), torch.from_numpy(y), fraction=0.2)
    assert all(isinstance(getattr(s, f.name), np.ndarray) for f in dataclasses.fields(s))
    assert s == crepe.select(X, y, fraction=0.2)


def test_dir_shows_public_names_only() -> None:
    assert sorted(dir(crepe)) == sorted(crepe.__all__)
    assert all(hasattr(crepe, name) for name in crepe.__all__)


X_OK = np.random.default_rng(0).normal(size=(10, 3))


@pytest.mark.parametrize(
    ("X", "y", "kw", "exc", "msg"),
    [
        (np.where(np.eye(10, 3) > 0, np.nan, X_OK), None, {"k": 1}, ValueError, "NaN or Inf"),
        (np.where(np.eye(10, 3) > 0, np.inf, X_OK), None, {"k": 1}, ValueError, "NaN or Inf"),
        ((X_OK * 1e19).astype(np.float32), None, {"k": 1}, ValueError, "would overflow float32"),
        (X_OK * 1e155, None, {"k": 1}, ValueError, "would overflow float64"),
        (X_OK * 1e307, None, {"k": 1}, ValueError, "would overflow float64"),
        (X_OK[:, 0], None, {"k": 1}, ValueError, "must be 2-D"),
        (X_OK[None], None, {"k": 1}, ValueError, "must be 2-D"),
        (np.zeros((0, 3)), None, {"k": 1}, ValueError, "empty"),
        (np.zeros((4, 0)), None, {"k": 1}, ValueError, "empty"),
        (X_OK, np.zeros(9, dtype=int), {"k": 1}, ValueError, r"shape \(10,\)"),
        (X_OK, np.zeros((10, 1), dtype=int), {"k": 1}, ValueError, r"shape \(10,\)"),
        (X_OK, np.zeros(10), {"k": 1}, TypeError, "integer class labels"),
        (X_OK, np.repeat([0, 1], [8, 2]), {"k": 3}, ValueError, "larger than class 1, which has 2 points"),
        (X_OK, None, {"k": 11}, ValueError, "larger than class"),
        (X_OK, None, {"k": 1, "fraction": 0.5}, ValueError, "exactly one of"),
        (X_OK, None, {}, ValueError, "exactly one of"),
        (X_OK, None, {"fraction": 0.0}, ValueError, r"in \(0, 1\]"),
        (X_OK, None, {"fraction": 1.5}, ValueError, r"in \(0, 1\]"),
        (X_OK, None, {"fraction": float("nan")}, ValueError, r"in \(0, 1\]"),
        (X_OK, None, {"fraction": True}, TypeError, "real number"),
        (X_OK, None, {"k": 0}, ValueError, "k must be >= 1"),
        (X_OK, None, {"k": 2.0}, TypeError, "k must be an integer"),
        (X_OK.astype(np.int32), None, {"k": 1}, TypeError, "supported: float32, float64"),
        (X_OK.astype(np.float16), None, {"k": 1}, TypeError, "supported: float32, float64"),
        (X_OK.astype(np.complex128), None, {"k": 1}, TypeError, "supported: float32, float64"),
        (X_OK.tolist(), None, {"k": 1}, TypeError, "numpy array or a torch tensor"),
        (X_OK, None, {"k": 1, "method": "lazzy"}, ValueError, r"valid: \['lazy', 'naive'\]"),
        (X_OK, None, {"k": 1, "threads": 0}, ValueError, "threads must be"),
    ],
)
def test_bad_input(X: object, y: object, kw: dict[str, object], exc: type[Exception], msg: str) -> None:
    with pytest.raises(exc, match=msg):
        crepe.select(X, y, **kw)  # type: ignore[arg-type]


def test_bad_torch_dtype() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch.float16"):
        crepe.select(torch.zeros(4, 2, dtype=torch.float16), k=1)


def test_binding_rejects_silent_conversion() -> None:
    """The binding never casts or copies: a wrong dtype or layout is refused."""
    X = np.zeros((4, 2), dtype=np.float64)
    out = [np.empty(1, np.int64), np.empty(1, np.int64), np.empty(1), np.empty(1)]
    cls = np.zeros(4, np.int64)
    budgets = np.ones(1, np.int64)
    with pytest.raises(TypeError):
        _core.select_per_class(X.astype(np.float16), cls, budgets, 1, 1, *out)
    with pytest.raises(TypeError):
        _core.select_per_class(np.asfortranarray(np.zeros((4, 2))), cls, budgets, 1, 1, *out)
    out5 = [np.empty(5, np.int64), np.empty(5, np.int64), np.empty(5), np.empty(1)]
    with pytest.raises(ValueError, match="has 4 points and budget 5"):
        _core.select_per_class(X, cls, np.array([5]), 1, 1, *out5)
    with pytest.raises(ValueError, match="out_idx has 1 entries, expected 2"):
        _core.select_per_class(X, cls, np.array([2]), 1, 1, *out)


def test_far_from_the_origin_but_narrow_is_fine() -> None:
    """The overflow check is on the spread of X, not its size: points near
    1e19 in float32 whose differences are small select like any others."""
    X = (np.float32(1e19) + np.random.default_rng(1).normal(size=(40, 3)) * np.float32(1e13)).astype(np.float32)
    assert crepe.select(X, k=4) == select_reference(X, k=4)
    assert np.isfinite(crepe.select(X, k=4).gains).all()
