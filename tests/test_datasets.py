"""KMNIST, EMNIST and CIFAR-10 from files in their own formats, laid out as torchvision lays them
(generated here: this machine cannot download them), and damaged files refused."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from crepe import data
from crepe.cli import main
from crepe.config import UsageError
from crepe.models import build_model


def idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    raw = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.with_suffix("").write_bytes(raw)  # torchvision's EMNIST keeps its files uncompressed


def idx_dataset(root: Path, dataset: str, sizes=(40, 12), *, compress: bool = True) -> dict[str, tuple]:
    rng = np.random.default_rng(7)
    folder = root / data.TORCHVISION_CLASS[dataset] / "raw"
    out = {}
    for (split, (images, labels)), n in zip(data.idx_files(dataset).items(), sizes):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % data.classes(dataset)).astype(np.uint8)
        idx(folder / images, x, compress=compress)
        idx(folder / labels, y, compress=compress)
        out[split] = (x, y)
    return out


def cifar(root: Path, per_batch: int = 6, test: int = 8) -> dict[str, tuple]:
    rng = np.random.default_rng(3)
    folder = root / data.CIFAR_FOLDER
    folder.mkdir(parents=True)
    out = {}
    for split, names in data.CIFAR_BATCHES.items():
        xs, ys = [], []
        for name in names:
            n = per_batch if split == "train" else test
            x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            y = list(rng.integers(0, 10, n))
            batch = {b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"f.png"] * n}
            (folder / name).write_bytes(pickle.dumps(batch))
            xs.append(x)
            ys += y
        out[split] = (np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys))
    return out


def test_kmnist_reads_a_torchvision_root(tmp_path: Path) -> None:
    arrays = idx_dataset(tmp_path, "kmnist")
    ds = data.load("kmnist", data_dir=str(tmp_path))
    x, y = arrays["train"]
    torch.testing.assert_close(ds.x_train[:, 0], torch.from_numpy((x / 255.0 - 0.5) / 0.5).float())
    assert ds.y_train.tolist() == y.tolist() and len(ds.y_test) == 12
    assert data.split_sizes(data.resolve_source("kmnist", str(tmp_path))) == {"train": 40, "test": 12}
    assert data.train_labels("kmnist", data_dir=str(tmp_path), train_subset=5).tolist() == y[:5].tolist()


@pytest.mark.parametrize("dataset", ["emnist-balanced", "emnist-byclass"])
def test_emnist_reads_torchvisions_uncompressed_files_and_turns_them_upright(tmp_path: Path, dataset: str) -> None:
    arrays = idx_dataset(tmp_path, dataset, sizes=(70, 9), compress=False)
    ds = data.load(dataset, data_dir=str(tmp_path))
    x, y = arrays["train"]
    upright = torch.from_numpy((x.transpose(0, 2, 1) / 255.0 - 0.5) / 0.5).float()
    torch.testing.assert_close(ds.x_train[:, 0], upright)
    assert ds.y_train.tolist() == y.tolist() and int(ds.y_train.max()) == min(69, data.classes(dataset) - 1)
    assert build_model("cnn", classes=data.classes(dataset))(ds.x_train[:2]).shape == (2, data.classes(dataset))


def test_cifar10_reads_the_pickled_batches(tmp_path: Path) -> None:
    arrays = cifar(tmp_path)
    ds = data.load("cifar10", data_dir=str(tmp_path))
    x, y = arrays["train"]
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.y_train.tolist() == y.tolist()
    mean, std = (torch.tensor(v).reshape(3, 1, 1) for v in data.NORMALISATION["cifar10"])
    torch.testing.assert_close(ds.x_train, (torch.from_numpy(x).float() / 255 - mean) / std)
    assert data.split_sizes(data.resolve_source("cifar10", str(tmp_path))) == {"train": 30, "test": 8}


def test_a_cifar10_run_trains_the_cifar_cnn_on_three_channels(tmp_path: Path) -> None:
    cifar(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                 "--preset", "dp-recipe", "--method", "full", "--epochs", "1", "--sigma", "1.0", "--batch-size", "8"])
    assert code == 0
    card = json.loads((out / "model.json").read_text())
    assert card["input_shape"] == [3, 32, 32] and card["model"] == "cifar-cnn"
    assert "build_model('cifar-cnn', activation='tanh', shape=(3, 32, 32))" in card["how_to_load"]
    assert card["normalisation"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def gz(path: Path, raw: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(raw)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "cannot be read"),  # a truncated gzip stream
    (lambda p: gz(p, bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") * 3 + b"x" * 10), "header says shape"),
    (lambda p: gz(p, b"PK\x03\x04 not idx"), "is not an IDX file of unsigned bytes"),
])
def test_a_damaged_idx_file_is_refused(tmp_path: Path, damage, message) -> None:
    idx_dataset(tmp_path, "kmnist")
    damage(tmp_path / "KMNIST" / "raw" / "train-images-idx3-ubyte.gz")
    with pytest.raises(UsageError, match=message):
        data.load("kmnist", data_dir=str(tmp_path))


def test_labels_outside_the_datasets_classes_are_refused(tmp_path: Path) -> None:
    idx_dataset(tmp_path, "kmnist")
    idx(tmp_path / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", np.full(12, 10, dtype=np.uint8))
    with pytest.raises(UsageError, match=r"kmnist labels are 0..9; the files hold 10..10"):
        data.load("kmnist", data_dir=str(tmp_path))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(b"not a pickle"), "is not a CIFAR-10 batch"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})),
     "a CIFAR-10 batch holds n x 3072 bytes"),
])
def test_a_damaged_cifar10_batch_is_refused(tmp_path: Path, damage, message) -> None:
    cifar(tmp_path)
    damage(tmp_path / data.CIFAR_FOLDER / "data_batch_3")
    with pytest.raises(UsageError, match=message):
        data.load("cifar10", data_dir=str(tmp_path))


def test_a_folder_in_the_wrong_layout_names_where_it_looked(tmp_path: Path, capsys) -> None:
    idx_dataset(tmp_path / "elsewhere" / "deeper", "kmnist")
    code = main(["train", "--dry-run", "--dataset", "kmnist", "--data-dir", str(tmp_path), "--method", "full"])
    err = capsys.readouterr().err
    assert code == 2 and f"no kmnist IDX files in {tmp_path}, {tmp_path / 'kmnist'}, {tmp_path / 'KMNIST' / 'raw'}" in err
    (tmp_path / "KMNIST" / "raw").mkdir(parents=True)
    idx(tmp_path / "KMNIST" / "raw" / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    idx(tmp_path / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    code = main(["train", "--dry-run", "--dataset", "kmnist", "--data-dir", str(tmp_path), "--method", "full"])
    assert code == 2 and "holds only one split of kmnist" in capsys.readouterr().err


def test_private_set_refuses_datasets_it_cannot_generate(capsys) -> None:
    code = main(["train", "--out", "/nonexistent/never", "--dataset", "cifar10", "--method", "private-set"])
    assert code == 2 and "generates 10 classes of 28x28 grey images: not cifar10" in capsys.readouterr().err
