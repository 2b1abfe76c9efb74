"""Image datasets as whole tensors: their files read directly, or torchvision's download.

MNIST, Fashion-MNIST, KMNIST and EMNIST (balanced, byclass) are IDX .gz files; CIFAR-10 is
the pickled batches of cifar-10-batches-py. A --data-dir may hold the files itself, a
<dataset>/ subfolder of them, or be laid out as torchvision lays them (MNIST/raw/,
FashionMNIST/raw/, KMNIST/raw/, EMNIST/raw/, cifar-10-batches-py/), so a torchvision root
works as it is. EMNIST's files store each image transposed; they are turned upright here.

Reading the original IDX files with gzip + numpy and normalising the whole
split once costs ~0.5 s; iterating a torchvision dataset with transforms costs
6-10 s per epoch on two cores, so the training loop indexes these tensors.

Offline MNIST: where a data folder holds only MNIST's t10k files (the 10,000
canonical test digits), the training split does not exist. Then, for
`--dataset mnist` only, the t10k set is split by a fixed permutation
(numpy PCG64 seeded with MNIST_T10K_SPLIT_SEED, independent of --seed):
the first 8,000 permuted examples train, the last 2,000 test. The split is
announced and recorded (`LoadedData.split`).

QMNIST (`--dataset qmnist`): its files and sizes are found here; it is read with its writers as
users by crepe.training.inputs (users/qmnist.py), never by `load`.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crepe.config import UsageError, check_choice, options

DATASETS = options()["dataset"].choices

if TYPE_CHECKING:
    import torch

# Normalisation constants are fixed in advance, never computed from the private training data (that
# would be a release): the customary published ones for MNIST and Fashion-MNIST; ImageNet's for
# CIFAR-10 (another dataset's, as Tramer & Boneh use them); 0.5/0.5 (no statistics at all) for KMNIST
# and EMNIST. x = (pixel / 255 - mean) / std, per channel.
NORMALISATION: dict[str, tuple[Any, Any]] = {
    "mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530), "qmnist": (0.1307, 0.3081),
    "kmnist": (0.5, 0.5), "emnist-balanced": (0.5, 0.5), "emnist-byclass": (0.5, 0.5),
    "cifar10": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST", "qmnist": "QMNIST",
                     "emnist-balanced": "EMNIST", "emnist-byclass": "EMNIST", "cifar10": "CIFAR10"}
CLASSES = {"emnist-balanced": 47, "emnist-byclass": 62}  # every other dataset: 10
SHAPES = {"cifar10": (3, 32, 32)}  # every other dataset: (1, 28, 28)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
QMNIST_FILES = {  # as torchvision.datasets.QMNIST downloads them (facebookresearch/qmnist)
    "train": ("qmnist-train-images-idx3-ubyte.gz", "qmnist-train-labels-idx2-int.gz"),
    "test": ("qmnist-test-images-idx3-ubyte.gz", "qmnist-test-labels-idx2-int.gz"),
}
QMNIST_SPLIT = "qmnist-train/test10k"  # QMNIST's train split; the first 10,000 of its test split (MNIST's test set)
QMNIST_TEST = 10000
MNIST_T10K_SPLIT_SEED = 20240601
MNIST_T10K_TRAIN = 8000
DEFAULT_CACHE = Path.home() / ".cache" / "crepe"



def classes(dataset: str) -> int:
    return CLASSES.get(dataset, 10)


def shape(dataset: str) -> tuple[int, int, int]:
    return SHAPES.get(dataset, (1, 28, 28))


def idx_files(dataset: str) -> dict[str, tuple[str, str]]:
    """The IDX file names (images, labels) of each split of an IDX dataset."""
    if dataset.startswith("emnist-"):
        split = dataset.removeprefix("emnist-")
        return {s: (f"emnist-{split}-{s}-images-idx3-ubyte.gz", f"emnist-{split}-{s}-labels-idx1-ubyte.gz")
                for s in ("train", "test")}
    return FILES


def folders(root: Path, dataset: str) -> tuple[Path, ...]:
    """Where in a --data-dir the files of `dataset` may lie: itself, <dataset>/, torchvision's layout."""
    if dataset == "cifar10":
        return (root, root / CIFAR_FOLDER)
    return (root, root / dataset, root / TORCHVISION_CLASS[dataset] / "raw")


def expected_files(dataset: str) -> str:
    if dataset == "cifar10":
        return ("CIFAR-10's pickled batches " + ", ".join(CIFAR_BATCHES["train"] + CIFAR_BATCHES["test"])
                + f" (or a torchvision root holding {CIFAR_FOLDER}/)")
    if dataset == "qmnist":
        return "QMNIST's own files " + ", ".join(f for pair in QMNIST_FILES.values() for f in pair) + " (or a qmnist/ subfolder of them)"
    names = ", ".join(f for pair in idx_files(dataset).values() for f in pair)
    return (f"the original IDX files {names} (or a folder with a {dataset}/ subfolder of them, or a torchvision "
            f"root holding {TORCHVISION_CLASS[dataset]}/raw/)")
DEBIAN = {"fashion-mnist": "; Fashion-MNIST is also the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)"}


def how_to_get(dataset: str, *, offline: bool) -> str:
    """The ways out that apply: with --data-dir given, or after torchvision's download failed."""
    files = expected_files(dataset)
    if offline:
        first = "point --data-dir at a folder holding " + files
        second = ", or run without --data-dir on a machine with network access (torchvision downloads into ~/.cache/crepe)"
    else:
        first = "torchvision could not download it: run where the network is reachable"
        second = ", or pass --data-dir with a folder holding " + files
    return first + second + DEBIAN.get(dataset, "")


@dataclass(frozen=True)
class DataSource:
    """Where a dataset comes from, resolved before anything is written."""

    dataset: str
    folder: Path | None  # the folder of the files, or None for torchvision
    split: str  # "standard", "mnist-t10k-8000/2000" or QMNIST_SPLIT


@dataclass(frozen=True)
class LoadedData:
    x_train: torch.Tensor  # (n, C, H, W) float32, normalised (1 x 28 x 28 but for CIFAR-10)
    y_train: torch.Tensor  # (n,) int64
    x_test: torch.Tensor  # (m, C, H, W) float32
    y_test: torch.Tensor  # (m,) int64
    split: str
    source: str  # human-readable origin
    fingerprint: str  # sha256 over the labels and shapes actually used (and the user ids)
    user_ids: torch.Tensor | None = None  # (n,) int64 in 0..U-1: each training example's user
    max_per_user: int | None = None  # k, public: no user holds more than k training examples
    max_per_user_public: bool = True  # False: k was read off the data (the largest user), not declared
    x_held: torch.Tensor | None = None  # --held-out-classes: their test examples, for the embedding metrics
    y_held: torch.Tensor | None = None

    @property
    def users(self) -> int | None:
        return None if self.user_ids is None else int(self.user_ids.max()) + 1


def find(folder: Path, name: str) -> Path | None:
    """`name` (.gz) in `folder`, or the same file uncompressed (torchvision's EMNIST keeps only that)."""
    for path in (folder / name, folder / name.removesuffix(".gz")):
        if path.is_file():
            return path
    return None


def _has(folder: Path, dataset: str, split: str) -> bool:
    if dataset == "cifar10":
        return all((folder / b).is_file() for b in CIFAR_BATCHES[split])
    return all(find(folder, f) is not None for f in idx_files(dataset)[split])


def resolve_source(dataset: str, data_dir: str | None) -> DataSource:
    """Find the files for `dataset`; raise a clear error if they are missing."""
    check_choice("dataset", dataset, DATASETS)
    if data_dir is None:
        return DataSource(dataset, None, QMNIST_SPLIT if dataset == "qmnist" else "standard")
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"--data-dir {root} is not a directory; {how_to_get(dataset, offline=True)}")
    if dataset == "qmnist":
        for folder in (root, root / dataset):
            if all((folder / f).is_file() for pair in QMNIST_FILES.values() for f in pair):
                return DataSource(dataset, folder, QMNIST_SPLIT)
        raise UsageError(f"no QMNIST files in {root} or {root / dataset}; {how_to_get(dataset, offline=True)}")
    places = folders(root, dataset)
    for folder in places:
        if _has(folder, dataset, "train") and _has(folder, dataset, "test"):
            return DataSource(dataset, folder, "standard")
    if dataset == "mnist":
        for folder in places:
            if _has(folder, dataset, "test") and not any(find(folder, f) for f in FILES["train"]):
                return DataSource(dataset, folder, f"mnist-t10k-{MNIST_T10K_TRAIN}/{10000 - MNIST_T10K_TRAIN}")
    partial = [f for f in places if _has(f, dataset, "test") or _has(f, dataset, "train")]
    if partial:
        raise UsageError(f"{partial[0]} holds only one split of {dataset} (the t10k split fallback exists for mnist "
                         f"only); {how_to_get(dataset, offline=True)}")
    kind = "CIFAR-10 batch" if dataset == "cifar10" else "IDX"
    raise UsageError(f"no {dataset} {kind} files in {', '.join(str(f) for f in places)}; {how_to_get(dataset, offline=True)}")


STANDARD_SIZES = {"train": 60000, "test": 10000}  # as torchvision downloads MNIST, Fashion-MNIST, KMNIST
TORCHVISION_SIZES = {"cifar10": {"train": 50000, "test": 10000}, "emnist-balanced": {"train": 112800, "test": 18800},
                     "emnist-byclass": {"train": 697932, "test": 116323}}


def split_sizes(src: DataSource) -> dict[str, int]:
    """Examples per split, from the IDX headers alone (milliseconds, no torch; CIFAR-10 reads its labels)."""
    if src.folder is None:
        return dict(TORCHVISION_SIZES.get(src.dataset, STANDARD_SIZES))
    if src.split == QMNIST_SPLIT:
        rows = {split: _rows(src.folder / labels) for split, (_, labels) in QMNIST_FILES.items()}
        return {"train": rows["train"], "test": min(rows["test"], QMNIST_TEST)}
    if src.split != "standard":
        return {"train": MNIST_T10K_TRAIN, "test": 10000 - MNIST_T10K_TRAIN}
    if src.dataset == "cifar10":
        return {split: len(read_cifar(src.folder, split)[1]) for split in CIFAR_BATCHES}
    return {split: _rows(find(src.folder, labels)) for split, (_, labels) in idx_files(src.dataset).items()}  # type: ignore[arg-type]


def _rows(path: Path) -> int:
    """The first dimension an IDX file's header gives (its examples)."""
    with _open(path) as f:
        return int.from_bytes(f.read(8)[4:8], "big")


def check_subsets(src: DataSource, *, train_subset: int | None, test_subset: int | None) -> None:
    """Refuse a subset larger than its split before anything heavy loads."""
    sizes = split_sizes(src)
    for split, subset in (("train", train_subset), ("test", test_subset)):
        if subset is not None and subset > sizes[split]:
            raise UsageError(f"--{split}-subset {subset} exceeds the {sizes[split]} {split} examples of {src.dataset}")


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (.gz, or uncompressed) as a uint8 array: images (n, H, W) or labels (n,)."""
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a damaged gzip stream
        raise UsageError(f"{path} cannot be read ({type(e).__name__}: {e})") from e
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(raw) - offset != count:
        raise UsageError(f"{path}: header says shape {shape} but holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def read_cifar(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's pickled batches of `split` as (n, 3, 32, 32) uint8 images and (n,) labels. The
    batches are Python pickles, as CIFAR-10 publishes them: read only files you trust."""
    import pickle

    images, labels = [], []
    for name in CIFAR_BATCHES[split]:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            x, y = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as e:  # unpickling errors come in many types
            raise UsageError(f"{path} is not a CIFAR-10 batch (a pickled dict of b'data' and b'labels'): "
                             f"{type(e).__name__}: {e}") from e
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
            raise UsageError(f"{path}: a CIFAR-10 batch holds n x 3072 bytes and n labels; got {x.shape} and {y.shape}")
        images.append(x.reshape(-1, 3, 32, 32))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _read_pair(folder: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, H, W) uint8 images and (n,) labels of one split."""
    if dataset == "cifar10":
        images, labels = read_cifar(folder, split)
    else:
        images, labels = (read_idx(find(folder, f)) for f in idx_files(dataset)[split])  # type: ignore[arg-type]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise UsageError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
        images = _grey(dataset, images)
    if images.shape[1:] != shape(dataset):
        raise UsageError(f"{folder}: {dataset} images are {shape(dataset)}; the files hold {images.shape[1:]}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes(dataset)):
        raise UsageError(f"{folder}: {dataset} labels are 0..{classes(dataset) - 1}; the files hold "
                         f"{int(labels.min())}..{int(labels.max())}")
    return images, labels


def _grey(dataset: str, images: np.ndarray) -> np.ndarray:
    """(n, H, W) grey images as (n, 1, H, W), upright (EMNIST's files hold each image transposed)."""
    if dataset.startswith("emnist-"):
        images = images.transpose(0, 2, 1)
    return images[:, None]


def _torchvision_arrays(dataset: str, cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION_CLASS[dataset])
    extra = {"split": dataset.removeprefix("emnist-")} if dataset.startswith("emnist-") else {}
    out = {}
    for split in ("train", "test"):
        try:
            ds = cls(root=str(cache), train=split == "train", download=True, **extra)
        except Exception as e:  # network errors come in many types; re-raise with the way out
            raise RuntimeError(
                f"could not load {dataset} through torchvision into {cache} ({type(e).__name__}: {e}); "
                f"{how_to_get(dataset, offline=False)}"
            ) from e
        # The raw uint8 arrays: no per-item transform loop.
        images, labels = np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)
        # torchvision holds CIFAR-10 as (n, 32, 32, 3)
        images = images.transpose(0, 3, 1, 2) if dataset == "cifar10" else _grey(dataset, images)
        out[split] = (images, labels)
    return out


def t10k_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of MNIST's t10k set under its fixed permutation (module docstring)."""
    perm = np.random.Generator(np.random.PCG64(MNIST_T10K_SPLIT_SEED)).permutation(n)
    return perm[:MNIST_T10K_TRAIN], perm[MNIST_T10K_TRAIN:]


def train_labels(dataset: str, *, data_dir: str | None = None, train_subset: int | None = None) -> np.ndarray:
    """The training labels alone (n,), exactly those `load` trains on, without reading an image
    (IDX folders; CIFAR-10 and torchvision's download read the whole dataset)."""
    src = resolve_source(dataset, data_dir)
    if src.folder is None or dataset == "cifar10":
        return load(dataset, data_dir=data_dir, train_subset=train_subset).y_train.numpy()
    if src.split == "standard":
        labels = read_idx(find(src.folder, idx_files(dataset)["train"][1]))  # type: ignore[arg-type]
    else:  # the t10k split: the same fixed permutation as `load`
        test = read_idx(find(src.folder, FILES["test"][1]))  # type: ignore[arg-type]
        labels = test[t10k_split(len(test))[0]]
    if train_subset is not None:
        if train_subset > len(labels):
            raise UsageError(f"--train-subset {train_subset} exceeds the {len(labels)} train examples")
        labels = labels[:train_subset]
    return labels


def load(
    dataset: str,
    *,
    data_dir: str | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    cache: Path = DEFAULT_CACHE,
) -> LoadedData:
    """Load a dataset as normalised float tensors (subsets are the first N examples)."""
    import torch

    src = resolve_source(dataset, data_dir)
    if dataset == "qmnist":
        raise UsageError("qmnist's writers are its users: load it with crepe.training.inputs.load_data")
    if src.folder is None:
        arrays = _torchvision_arrays(dataset, cache)
        origin = f"torchvision {TORCHVISION_CLASS[dataset]} in {cache}"
    elif src.split == "standard":
        arrays = {s: _read_pair(src.folder, dataset, s) for s in ("train", "test")}
        origin = f"{'CIFAR-10 batches' if dataset == 'cifar10' else 'IDX files'} in {src.folder}"
    else:
        images, labels = _read_pair(src.folder, dataset, "test")
        tr, te = t10k_split(len(labels))
        arrays = {"train": (images[tr], labels[tr]), "test": (images[te], labels[te])}
        origin = (
            f"IDX t10k files in {src.folder}, split by a fixed permutation "
            f"(seed {MNIST_T10K_SPLIT_SEED}) into {len(tr)} train / {len(te)} test"
        )
    mean, std = channel_stats(dataset)
    tensors = []
    for split, subset in (("train", train_subset), ("test", test_subset)):
        images, labels = arrays[split]
        if subset is not None:
            if subset > len(labels):
                raise UsageError(f"--{split}-subset {subset} exceeds the {len(labels)} {split} examples")
            images, labels = images[:subset], labels[:subset]
        x = torch.from_numpy(np.array(images, dtype=np.uint8)).to(torch.float32).div_(255.0)  # a writable copy
        x = x.sub_(mean).div_(std)  # (n, C, H, W)
        y = torch.from_numpy(labels.astype(np.int64))
        tensors += [x, y]
    x_tr, y_tr, x_te, y_te = tensors
    return LoadedData(x_tr, y_tr, x_te, y_te, split=src.split, source=origin, fingerprint=fingerprint(*tensors))


def channel_stats(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """NORMALISATION[dataset] as (C, 1, 1) tensors (mean, std), to broadcast over (n, C, H, W) images;
    data of one's own (not a crepe dataset): 0 and 1, as given."""
    import torch

    mean, std = NORMALISATION.get(dataset, (0.0, 1.0))
    return (torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1))


def fingerprint(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                user_ids: torch.Tensor | None = None) -> str:
    """A checkpoint's check that a run resumes on the same data: the labels, every shape, the users."""
    h = hashlib.sha256()
    for t in (y_train, y_test) if user_ids is None else (y_train, y_test, user_ids):
        h.update(t.numpy().tobytes())
    h.update(repr([tuple(t.shape) for t in (x_train, y_train, x_test, y_test)]).encode())
    return h.hexdigest()[:16]


def as_tensors(data: object, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32, y int64) from a pair (x, y) of tensors or arrays, or a map-style dataset (len and
    [i] -> (x, y)) stacked once into memory (the loop indexes whole tensors); UsageError otherwise."""
    import torch

    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in data)
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        raise UsageError(f"{what} is one {type(data).__name__} of shape {tuple(data.shape)}: pass the pair (x, y)")
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        if len(data) == 0:  # type: ignore[arg-type]
            raise UsageError(f"{what} is empty")
        pairs = [data[i] for i in range(len(data))]  # type: ignore[index, arg-type]
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise UsageError(f"{what}: a dataset must give (x, y) pairs for every index")
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    else:
        raise UsageError(f"{what} must be a pair (x, y) of tensors or a map-style dataset of (x, y), "
                         f"got {type(data).__name__}")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise UsageError(f"{what}: the labels must be a 1-D integer tensor, got {y.dtype} of shape {tuple(y.shape)}")
    if x.ndim < 2 or len(x) != len(y):
        raise UsageError(f"{what}: x must be (n, ...) with one row per label; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise UsageError(f"{what}: labels must be class indices 0..C-1, got {int(y.min())}")
    if not x.dtype.is_floating_point:
        raise UsageError(f"{what}: x must be floating point (normalised as the model expects), got {x.dtype}")
    return x.to(torch.float32).contiguous(), y.to(torch.int64).contiguous()
