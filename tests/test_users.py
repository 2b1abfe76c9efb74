"""User partitions: validation, stats (counts only), the synthetic-writer split (reproducible,
one style per user checked against a NumPy oracle, Dirichlet skew, sizes clipped at k), and
QMNIST's writer ids from files written here in QMNIST's exact format."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crepe.config import UsageError
from crepe.data import NORMALISATION, read_idx
from crepe.users import qmnist
from crepe.users.partition import Partition
from crepe.users.synthetic import Style, apply_style, synthetic_writers

# --- Partition ------------------------------------------------------------------------------


def test_from_ids_counts_users_and_takes_k_from_the_data_or_the_caller() -> None:
    p = Partition.from_ids([1, 0, 1, 2, 1], 5)
    assert (p.users, p.n, p.max_per_user, p.k_source) == (3, 5, 3, "data")
    assert p.sizes().tolist() == [1, 3, 1]
    d = Partition.from_ids(np.array([1, 0, 1, 2, 1], dtype=np.uint8), 5, max_per_user=4)
    assert (d.max_per_user, d.k_source) == (4, "declared") and d.user_ids.dtype == np.int64


def test_user_ids_are_a_read_only_copy() -> None:
    ids = np.array([0, 1, 1])
    p = Partition.from_ids(ids, 3)
    ids[0] = 1
    assert p.user_ids[0] == 0
    with pytest.raises(ValueError, match="read-only"):
        p.user_ids[0] = 1


@pytest.mark.parametrize(
    ("ids", "n", "k", "message"),
    [
        ([[0, 1], [1, 0]], 4, None, "1-D array of integers; got shape \\(2, 2\\)"),
        ([0.0, 1.0], 2, None, "1-D array of integers; got shape \\(2,\\) of dtype float64"),
        ([True, False], 2, None, "of dtype bool"),
        ([], 0, None, "non-empty"),
        ([0, 1, 1], 4, None, "3 entries for n = 4 examples: one id per example"),
        ([0, 1, 1], True, None, "n \\(the number of examples\\) must be an integer >= 1"),
        ([0, -1, 1], 3, None, "must be >= 0 \\(users are 0..U-1\\); example 1 has id -1"),
        ([0, 2, 2, 4], 4, None, "2 of 0..4 hold none \\(first: user 1\\); remap"),
        ([0, 0, 0, 1], 4, 2, "user 0 holds 3 examples, more than max_per_user k = 2: every user must hold 1..2"),
        ([0, 1], 2, 0, "max_per_user \\(k\\) must be an integer >= 1; got 0"),
        ([0, 1], 2, 1.5, "max_per_user \\(k\\) must be an integer >= 1; got 1.5"),
    ],
)
def test_bad_user_ids_are_refused_by_name(ids, n, k, message) -> None:
    with pytest.raises(UsageError, match=message):
        Partition.from_ids(ids, n, max_per_user=k)


@pytest.mark.parametrize(
    ("users", "k", "source", "message"),
    [
        (5, 3, "declared", "3 of 0..4 hold none \\(first: user 2\\)"),
        (1, 3, "declared", "must be in 0..0 for U = 1; found id 1"),
        (0, 3, "declared", "users \\(U\\) must be an integer >= 1; got 0"),
        (2, 3, "guessed", "unknown k_source 'guessed'; valid: declared, data"),
    ],
)
def test_a_partition_built_directly_is_validated_too(users, k, source, message) -> None:
    with pytest.raises(UsageError, match=message):
        Partition(np.array([0, 1, 1]), users, k, source)


def test_stats_are_these_counts() -> None:
    p = Partition.from_ids([0, 0, 0, 1, 2, 2], 6, max_per_user=4)
    stats = p.stats(labels=[0, 1, 1, 2, 3, 3])
    assert stats == {
        "users": 3,
        "examples": 6,
        "max_per_user": 4,
        "max_per_user_source": "declared",
        "examples_per_user": {"min": 1, "median": 2.0, "mean": 2.0, "max": 3},
        "user_size_histogram": {"edges": [1, 2, 4, 5], "counts": [1, 2, 0]},  # [1,2) [2,4) [4,5)
        "labels_per_user": {"min": 1, "median": 1.0, "mean": 4 / 3, "max": 2},
    }
    assert "labels_per_user" not in p.stats()
    with pytest.raises(UsageError, match="labels must be 6 integers >= 0, one per example; got 5"):
        p.stats(labels=[0, 1, 1, 2, 3])


def leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    else:
        yield value


def test_stats_hold_counts_only_never_per_user_or_per_example_lists() -> None:
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.arange(500), rng.integers(0, 500, 1500)])
    p = Partition.from_ids(ids, 2000)
    stats = p.stats(labels=rng.integers(0, 10, 2000))
    json.dumps(stats)  # JSON-able
    lists = [v for v in leaves(stats) if isinstance(v, list)]
    assert len(lists) == 2 and all(len(v) <= p.max_per_user.bit_length() + 1 for v in lists)  # the histogram
    assert all(isinstance(v, (int, float, str, list)) for v in leaves(stats))
    assert sum(stats["user_size_histogram"]["counts"]) == 500


# --- synthetic writers: the style map ------------------------------------------------------


def oracle(image: np.ndarray, row: np.ndarray) -> np.ndarray:
    """apply_style's docstring, computed directly: output pixel p samples the input at
    T^-1(p) bilinearly, outside points take the image's minimum; then contrast about the mean."""
    rot, shear, scale, dx, dy, c = row
    a, b = math.radians(rot), math.radians(shear)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1, math.tan(b)], [0, 1]])
    h, w = image.shape
    rows, cols = np.mgrid[0:h, 0:w]
    p = np.stack([cols - (w - 1) / 2 - dx, rows - (h - 1) / 2 - dy]).reshape(2, -1)
    qx, qy = np.linalg.solve(m * scale, p)
    qx, qy = qx + (w - 1) / 2, qy + (h - 1) / 2
    out = np.zeros(h * w)
    for ox in (0, 1):
        for oy in (0, 1):
            xi, yi = np.floor(qx).astype(int) + ox, np.floor(qy).astype(int) + oy
            weight = (1 - np.abs(qx - xi)) * (1 - np.abs(qy - yi))
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += weight * np.where(inside, image[yi.clip(0, h - 1), xi.clip(0, w - 1)], image.min())
    out = out.reshape(h, w)
    return out.mean() + c * (out - out.mean())


def delta(h: int, w: int, row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 1, h, w)
    x[0, 0, row, col] = 1.0
    return x


@pytest.mark.parametrize(
    ("size", "style", "at", "to"),
    [
        (28, [0, 0, 1, 2, -1, 1], (10, 10), (9, 12)),  # shift x +2 (right), y -1 (up)
        (28, [90, 0, 1, 0, 0, 1], (14, 17), (17, 13)),  # 90 deg: (u, v) = (3.5, 0.5) -> (-0.5, 3.5), clockwise
        (27, [0, 45, 1, 0, 0, 1], (16, 14), (16, 17)),  # shear 45 deg: (1, 3) -> (1 + 3, 3)
    ],
)
def test_a_delta_moves_where_the_stated_map_sends_it(size, style, at, to) -> None:
    out = apply_style(delta(size, size, *at), np.array([style], dtype=np.float64))[0, 0]
    assert torch.allclose(out, delta(size, size, *to)[0, 0], atol=1e-5)


def test_apply_style_matches_the_numpy_oracle_and_fills_with_the_background() -> None:
    rng = np.random.default_rng(1)
    images = rng.uniform(0.2, 1.0, size=(6, 1, 20, 20))
    rows = np.column_stack([rng.uniform(-15, 15, 6), rng.uniform(-10, 10, 6), rng.uniform(0.9, 1.1, 6),
                            rng.uniform(-2, 2, 6), rng.uniform(-2, 2, 6), rng.uniform(0.7, 1.3, 6)])
    out = apply_style(torch.from_numpy(images).float(), rows).double().numpy()
    for i in range(6):
        np.testing.assert_allclose(out[i, 0], oracle(images[i, 0], rows[i]), atol=2e-5)
    shifted = apply_style(torch.from_numpy(images[:1]).float(), np.array([[0, 0, 1, 2, 0, 1.0]]))
    assert torch.allclose(shifted[0, 0, :, :2], torch.tensor(images[0, 0].min(), dtype=torch.float32))


def test_styling_commutes_with_normalisation() -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.uniform(0, 1, size=(4, 1, 16, 16))).float()
    rows = np.tile([7.0, -4.0, 1.08, 1.3, -0.7, 1.2], (4, 1))
    mean, std = NORMALISATION["fashion-mnist"]
    assert torch.allclose(apply_style((x - mean) / std, rows), (apply_style(x, rows) - mean) / std, atol=1e-5)


# --- synthetic writers: the split ----------------------------------------------------------


def random_set(n: int = 3000, classes: int = 10, side: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, side, side)).astype(np.float32), np.arange(n) % classes


def test_same_seed_same_split_other_seed_another() -> None:
    x, y = random_set()
    a, b = (synthetic_writers(x, y, users=40, seed=5) for _ in range(2))
    c = synthetic_writers(x, y, users=40, seed=6)
    assert np.array_equal(a.partition.user_ids, b.partition.user_ids) and np.array_equal(a.index, b.index)
    assert np.array_equal(a.styles, b.styles) and torch.equal(a.x, b.x) and a.stats == b.stats
    assert not np.array_equal(a.partition.user_ids, c.partition.user_ids)
    assert not np.allclose(a.styles, c.styles)
    other_alpha = synthetic_writers(x, y, users=40, seed=5, alpha=0.3)  # styles have their own stream
    assert np.array_equal(other_alpha.styles, a.styles)


def test_every_image_of_a_user_carries_that_users_one_style() -> None:
    x, y = random_set(n=600, side=12)
    w = synthetic_writers(x, y, users=12, seed=3)
    assert w.styles.shape == (12, 6) and np.array_equal(w.y.numpy(), y[w.index])
    for u in (0, 7):
        for i in np.flatnonzero(w.partition.user_ids == u):
            np.testing.assert_allclose(w.x[i, 0].numpy(), oracle(x[w.index[i]].astype(np.float64), w.styles[u]),
                                       atol=2e-5)
    half = np.abs(w.styles - [0, 0, 1, 0, 0, 1]).max(axis=0)
    assert np.all(half <= [15, 10, 0.1, 2, 2, 0.3]) and np.all(half > [10, 5, 0.05, 1, 1, 0.15])


def mean_total_variation(w) -> float:
    ids, y = w.partition.user_ids, w.y.numpy()
    per_user = np.zeros((w.partition.users, 10))
    np.add.at(per_user, (ids, y), 1)
    per_user /= per_user.sum(1, keepdims=True)
    return float(np.abs(per_user - np.bincount(y, minlength=10) / len(y)).sum(1).mean() / 2)


def test_label_skew_grows_as_alpha_falls() -> None:
    x, y = random_set()
    splits = [synthetic_writers(x, y, users=60, alpha=a, seed=1) for a in (1000.0, 10.0, 1.0, 0.05)]
    distinct = [w.stats["labels_per_user"]["mean"] for w in splits]
    tv = [mean_total_variation(w) for w in splits]
    assert distinct == sorted(distinct, reverse=True) and distinct[0] > 9 and distinct[-1] < 2.5
    assert tv == sorted(tv) and tv[0] < 0.2 and tv[-1] > 0.7


def test_sizes_are_clipped_at_k_and_the_dropped_are_counted() -> None:
    x, y = random_set()
    w = synthetic_writers(x, y, users=100, size_sigma=1.5, max_per_user=20, seed=2)
    sizes = w.partition.sizes()
    assert sizes.max() == 20 and sizes.min() >= 1 and (sizes == 20).sum() > 5
    assert w.stats["dropped"] == 3000 - sizes.sum() > 0 and w.stats["examples"] + w.stats["dropped"] == 3000
    assert w.partition.k_source == "declared" and w.stats["settings"]["max_per_user"] == 20


def test_sizes_never_total_more_than_n_and_every_user_holds_one() -> None:
    x, y = random_set(n=100)
    for users in (90, 100):
        w = synthetic_writers(x, y, users=users, size_sigma=1.0, max_per_user=5)
        assert w.partition.users == users and w.partition.n <= 100 and w.partition.sizes().min() >= 1
    default_k = synthetic_writers(x, y, users=30)
    assert default_k.partition.max_per_user == 2 * math.ceil(100 / 30)


def test_no_style_leaves_real_fashion_mnist_images_unchanged(data_root: Path) -> None:
    folder = data_root / "fashion-mnist"
    x, y = read_idx(folder / "train-images-idx3-ubyte.gz")[:3000], read_idx(folder / "train-labels-idx1-ubyte.gz")[:3000]
    plain = synthetic_writers(x, y, users=30, style=Style(0, 0, 0, 0, 0), seed=4)
    assert torch.allclose(plain.x[:, 0], torch.from_numpy(x[plain.index]).float(), atol=1e-3)  # on 0..255
    styled = synthetic_writers(x, y, users=30, seed=4)
    assert np.array_equal(styled.index, plain.index) and not torch.allclose(styled.x, plain.x, atol=1.0)
    assert styled.stats["labels_per_user"]["max"] <= 10 and styled.stats["users"] == 30


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"users": 0}, "users \\(U\\) must be an integer in 1..n = 50; got 0"),
        ({"users": 51}, "users \\(U\\) must be an integer in 1..n = 50; got 51"),
        ({"users": 2.0}, "users \\(U\\) must be an integer"),
        ({"size_sigma": -0.1}, "size_sigma must be a finite number >= 0"),
        ({"max_per_user": 0}, "max_per_user \\(k\\) must be an integer >= 1, or None for 2 \\* ceil\\(n/U\\); got 0"),
        ({"alpha": 0.0}, "alpha \\(the Dirichlet concentration\\) must be a finite number > 0; got 0.0"),
        ({"alpha": math.inf}, "alpha \\(the Dirichlet concentration\\) must be a finite number > 0"),
        ({"style": {"rotation_deg": 5}}, "style must be a crepe.users.synthetic.Style"),
        ({"seed": -1}, "seed must be an integer >= 0; got -1"),
    ],
)
def test_bad_knobs_are_refused_by_name(knobs, message) -> None:
    x, y = random_set(n=50)
    with pytest.raises(UsageError, match=message):
        synthetic_writers(x, y, **{"users": 5, **knobs})


@pytest.mark.parametrize(
    ("style", "message"),
    [
        ({"rotation_deg": -1.0}, "Style rotation_deg must be a number >= 0 and < 180"),
        ({"contrast": 1.0}, "Style contrast must be a number >= 0 and < 1"),
        ({"shift_px": math.inf}, "Style shift_px must be a number >= 0 and finite"),
    ],
)
def test_bad_style_ranges_are_refused_by_name(style, message) -> None:
    with pytest.raises(UsageError, match=message):
        Style(**style)


def test_bad_images_or_labels_are_refused() -> None:
    x, y = random_set(n=50)
    with pytest.raises(UsageError, match="x must be images \\(n, H, W\\) or \\(n, 1, H, W\\); got shape \\(50, 64\\)"):
        synthetic_writers(x.reshape(50, -1), y, users=5)
    with pytest.raises(UsageError, match="one label >= 0 per image: 49 labels for 50 images"):
        synthetic_writers(x, y[:49], users=5)


# --- QMNIST --------------------------------------------------------------------------------


def write_idx(path: Path, magic: bytes, array: np.ndarray, dtype: str) -> None:
    header = magic + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(dtype).tobytes())


WRITERS = np.array([2154, 7, 2154, 330, 7, 7, 2599])


def write_qmnist(folder: Path, part: str, writers: np.ndarray = WRITERS) -> tuple[np.ndarray, np.ndarray]:
    """QMNIST's two files for `part`: idx3 ubyte images, idx2 big-endian int32 n x 8 labels."""
    n = len(writers)
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.zeros((n, 8), dtype=np.int64)
    labels[:, 0] = rng.integers(0, 10, n)
    labels[:, 1] = np.where(writers >= 2100, 4, 0)
    labels[:, 2] = writers
    labels[:, 3] = np.arange(n) % 150
    labels[:, 4] = labels[:, 0] + 30
    labels[:, 5] = 200000 + np.arange(n)
    images_file, labels_file = qmnist.FILES[part]
    write_idx(folder / images_file, b"\x00\x00\x08\x03", images, "u1")
    write_idx(folder / labels_file, b"\x00\x00\x0c\x02", labels, ">i4")
    return images, labels


def test_qmnist_files_load_with_writers_as_users(tmp_path: Path) -> None:
    images, labels = write_qmnist(tmp_path, "train")
    q = qmnist.load_qmnist(folder=tmp_path)
    mean, std = NORMALISATION["mnist"]
    assert q.x.shape == (7, 1, 28, 28) and q.x.dtype == torch.float32
    np.testing.assert_allclose(q.x[:, 0].numpy(), (images / 255.0 - mean) / std, rtol=1e-6, atol=1e-6)
    assert q.y.tolist() == labels[:, 0].tolist() and q.y.dtype == torch.int64
    assert q.writers.tolist() == [7, 330, 2154, 2599]  # user u = the u-th smallest writer id
    assert q.partition.user_ids.tolist() == [2, 0, 2, 1, 0, 0, 3]
    assert (q.partition.max_per_user, q.partition.k_source) == (150, "declared")


def test_qmnist_test_splits_are_torchvisions_slices(tmp_path: Path) -> None:
    writers = np.concatenate([np.full(10000, 2100), [2200, 2200, 2300]])
    write_qmnist(tmp_path, "test", writers)
    sizes = {s: qmnist.load_qmnist(split=s, folder=tmp_path, max_per_user=10000).partition.n
             for s in ("test", "test10k", "test50k")}
    assert sizes == {"test": 10003, "test10k": 10000, "test50k": 3}
    assert qmnist.load_qmnist(split="test50k", folder=tmp_path).writers.tolist() == [2200, 2300]
    with pytest.raises(UsageError, match="unknown QMNIST split 'nist'; valid: train, test, test10k, test50k"):
        qmnist.load_qmnist(split="nist", folder=tmp_path)


def test_a_writer_above_k_is_refused(tmp_path: Path) -> None:
    write_qmnist(tmp_path, "train")
    with pytest.raises(UsageError, match="user 0 holds 3 examples, more than max_per_user k = 2"):
        qmnist.load_qmnist(folder=tmp_path, max_per_user=2)


def rewrite(path: Path, edit) -> None:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(edit(raw))


@pytest.mark.parametrize(
    ("which", "edit", "message"),
    [
        (1, lambda r: b"\x00\x00\x08\x02" + r[4:], "not an IDX file of 2-D int32 \\(magic 0x00000C02\\); starts 00000802"),
        (1, lambda r: b"\x00\x00\x0c\x01" + r[4:], "not an IDX file of 2-D int32"),
        (1, lambda r: r[:-4], "header says 7 x 8 int32 but holds 220 bytes"),
        (1, lambda r: r[:4] + (6).to_bytes(4, "big") + r[8:-32], "QMNIST labels must be 7 x 8; got \\(6, 8\\)"),
        (0, lambda r: b"\x00\x00\x0c\x03" + r[4:], "is not an IDX file of unsigned bytes"),
        (0, lambda r: r[:-1], "header says shape \\(7, 28, 28\\)"),
    ],
)
def test_malformed_qmnist_files_are_refused(tmp_path: Path, which, edit, message) -> None:
    write_qmnist(tmp_path, "train")
    rewrite(tmp_path / qmnist.FILES["train"][which], edit)
    with pytest.raises(UsageError, match=message):
        qmnist.load_qmnist(folder=tmp_path)


def test_a_folder_without_the_files_names_them(tmp_path: Path) -> None:
    write_qmnist(tmp_path, "train")
    with pytest.raises(UsageError, match="lacks qmnist-test-images-idx3-ubyte.gz, qmnist-test-labels-idx2-int.gz"):
        qmnist.load_qmnist(split="test", folder=tmp_path)


def test_without_a_folder_torchvision_loads_it_or_the_error_says_no_network(tmp_path, monkeypatch) -> None:
    import torchvision

    images, labels = write_qmnist(tmp_path, "train")
    calls = []

    class Downloaded:
        def __init__(self, root, **kwargs):
            calls.append((root, kwargs))
            self.data, self.targets = torch.from_numpy(images), torch.from_numpy(labels)

    monkeypatch.setattr(torchvision.datasets, "QMNIST", Downloaded)
    q = qmnist.load_qmnist(split="test10k", cache=tmp_path)
    assert calls == [(str(tmp_path), {"what": "test", "compat": False, "download": True})]
    assert q.partition.user_ids.tolist() == [2, 0, 2, 1, 0, 0, 3]

    class Offline:
        def __init__(self, root, **kwargs):
            raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "QMNIST", Offline)
    with pytest.raises(RuntimeError, match="could not load QMNIST through torchvision .*OSError.*no network"):
        qmnist.load_qmnist(cache=tmp_path)
