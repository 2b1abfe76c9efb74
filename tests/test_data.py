"""Data loading from the IDX files, the offline MNIST split, and missing data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from crepe import data


def test_fashion_mnist_full_split(data_root) -> None:
    d = data.load("fashion-mnist", data_dir=str(data_root / "fashion-mnist"))
    assert d.x_train.shape == (60000, 1, 28, 28) and d.y_train.shape == (60000,)
    assert d.x_test.shape == (10000, 1, 28, 28) and d.split == "standard"
    assert sorted(np.unique(d.y_train.numpy())) == list(range(10))
    # Normalised with the published constants: roughly zero mean, unit spread.
    assert abs(float(d.x_train.mean())) < 0.05 and abs(float(d.x_train.std()) - 1) < 0.05


def test_parent_folder_with_dataset_subfolder(data_root) -> None:
    a = data.load("fashion-mnist", data_dir=str(data_root), train_subset=50, test_subset=20)
    b = data.load("fashion-mnist", data_dir=str(data_root / "fashion-mnist"), train_subset=50, test_subset=20)
    assert a.fingerprint == b.fingerprint and len(a.y_train) == 50 and len(a.y_test) == 20


def test_offline_mnist_is_a_fixed_disjoint_split_of_t10k(data_root) -> None:
    d = data.load("mnist", data_dir=str(data_root / "mnist"))
    assert d.split == "mnist-t10k-8000/2000"
    assert len(d.y_train) == 8000 and len(d.y_test) == 2000
    raw = data.read_idx(data_root / "mnist" / "t10k-images-idx3-ubyte.gz").reshape(10000, -1)
    mean, std = data.NORMALISATION["mnist"]
    back = lambda x: np.rint((x.numpy().reshape(len(x), -1) * std + mean) * 255).astype(np.uint8)  # noqa: E731
    rows = {r.tobytes(): i for i, r in enumerate(raw)}
    tr = {rows[r.tobytes()] for r in back(d.x_train)}
    te = {rows[r.tobytes()] for r in back(d.x_test)}
    assert len(tr) == 8000 and len(te) == 2000 and not (tr & te)  # real digits, disjoint
    again = data.load("mnist", data_dir=str(data_root / "mnist"))
    assert again.fingerprint == d.fingerprint  # seed-independent, fixed


def test_fashion_with_only_t10k_is_refused(tmp_path, data_root) -> None:
    for f in data.FILES["test"]:
        (tmp_path / f).write_bytes((data_root / "fashion-mnist" / f).read_bytes())
    with pytest.raises(ValueError, match="mnist only"):
        data.resolve_source("fashion-mnist", str(tmp_path))


def test_missing_files_say_how_to_get_data(tmp_path) -> None:
    with pytest.raises(ValueError, match="no mnist IDX files.*--data-dir"):
        data.resolve_source("mnist", str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        data.resolve_source("mnist", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="valid: mnist, fashion-mnist"):
        data.resolve_source("imagenet", None)


def test_corrupt_idx_file(tmp_path) -> None:
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="header says shape"):
        data.read_idx(p)


def test_subset_larger_than_split(data_root) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        data.load("mnist", data_dir=str(data_root / "mnist"), train_subset=9000)
