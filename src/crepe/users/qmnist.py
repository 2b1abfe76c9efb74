"""QMNIST (Yadav and Bottou 2019) with its NIST writer ids: real users of real handwriting.

QMNIST's training set is MNIST's, example for example, and the first 10,000 of its 60,000
test examples are MNIST's test set; its extended labels trace every digit to its writer in
NIST Special Database 19. The files, as torchvision.datasets.QMNIST downloads them:
- qmnist-{train,test}-images-idx3-ubyte.gz: IDX, magic 0x00000803 (unsigned bytes, 3-D),
  n x 28 x 28;
- qmnist-{train,test}-labels-idx2-int.gz: IDX, magic 0x00000C02 (big-endian int32, 2-D),
  n x 8, columns `COLUMNS`: class 0-9, NIST HSF series, NIST writer id, digit index for this
  writer (0-149), NIST class code, global NIST digit index, duplicate flag, unused
  (facebookresearch/qmnist README, section 2.2).
Verified on the published label files (md5 as torchvision checks them): 539 writers in
train (19 to 131 digits each), 535 in test, no writer in both; a writer id never spans two HSF
series (NIST numbers its writers across series), so the writer id alone names a user.

Users: the sorted unique writer ids of the split, user u = the u-th smallest
(`QMNISTUsers.writers[u]` is its NIST id). k = 150 (`MAX_PER_WRITER`) by default: the digit
index for one writer runs 0..149 by the dataset's documentation, a bound fixed without looking
at the examples, hence public.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crepe.config import UsageError, check_choice
from crepe.data import DEFAULT_CACHE, NORMALISATION, QMNIST_FILES, read_idx
from crepe.users.partition import Partition, renumber

if TYPE_CHECKING:
    import torch

COLUMNS = ("class", "hsf_series", "writer", "writer_digit", "nist_class", "nist_index", "duplicate", "unused")
WRITER = COLUMNS.index("writer")
MAX_PER_WRITER = 150
FILES = QMNIST_FILES
SPLITS = {"train": ("train", slice(None)), "test": ("test", slice(None)),  # torchvision's `what`
          "test10k": ("test", slice(0, 10000)), "test50k": ("test", slice(10000, None))}


@dataclass(frozen=True, eq=False)
class QMNISTUsers:
    x: torch.Tensor  # (n, 1, 28, 28) float32, normalised with MNIST's published constants
    y: torch.Tensor  # (n,) int64, the class (column 0)
    partition: Partition  # user ids: positions of the writer ids among `writers`
    writers: np.ndarray  # (U,) int64: NIST writer id of user u
    source: str  # human-readable origin


def read_idx2_int(path: Path) -> np.ndarray:
    """An IDX file (.gz) of big-endian int32 in 2-D (magic 0x00000C02) as an (n, m) int64 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 12 or raw[:4] != b"\x00\x00\x0c\x02":
        raise UsageError(f"{path} is not an IDX file of 2-D int32 (magic 0x00000C02); starts {raw[:4].hex()}")
    rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8))
    if len(raw) - 12 != 4 * rows * cols:
        raise UsageError(f"{path}: header says {rows} x {cols} int32 but holds {len(raw) - 12} bytes")
    return np.frombuffer(raw, dtype=">i4", offset=12).reshape(rows, cols).astype(np.int64)


def load_qmnist(
    *, split: str = "train", folder: str | Path | None = None, max_per_user: int = MAX_PER_WRITER,
    cache: Path = DEFAULT_CACHE,
) -> QMNISTUsers:
    """QMNIST's `split` (train, test, test10k, test50k: torchvision's `what`) with its writers as users.

    folder: a folder holding `FILES` (read directly); None: torchvision downloads into `cache`.
    max_per_user: the public k (default 150, module docstring); a writer with more is refused."""
    import torch

    check_choice("QMNIST split", split, tuple(SPLITS))
    part, rows = SPLITS[split]
    if folder is None:
        images, extended = _torchvision(part, cache)
        source = f"torchvision QMNIST({part!r}) in {cache}"
    else:
        images, extended = _read_folder(Path(folder), part)
        source = f"QMNIST IDX files in {folder}"
    images, extended = images[rows], extended[rows]
    classes = extended[:, COLUMNS.index("class")].copy()
    if classes.min() < 0 or classes.max() > 9:
        raise UsageError(f"{source}: class column holds {classes.min()}..{classes.max()}, not 0..9")
    writers = np.unique(extended[:, WRITER])
    user_ids = renumber(extended[:, WRITER])
    partition = Partition.from_ids(user_ids, len(user_ids), max_per_user=max_per_user)
    mean, std = NORMALISATION["mnist"]
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0).sub_(mean).div_(std).unsqueeze(1)
    return QMNISTUsers(x, torch.from_numpy(classes), partition, writers, source)


def _read_folder(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [f for f in FILES[part] if not (folder / f).is_file()]
    if missing:
        raise UsageError(
            f"{folder} lacks {', '.join(missing)}: QMNIST's own files, as torchvision.datasets.QMNIST "
            "downloads them (facebookresearch/qmnist); or pass folder=None to download them"
        )
    images = read_idx(folder / FILES[part][0])
    extended = read_idx2_int(folder / FILES[part][1])
    _check_pair(images, extended, str(folder))
    return images, extended


def _check_pair(images: np.ndarray, extended: np.ndarray, where: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UsageError(f"{where}: QMNIST images must be n x 28 x 28; got {images.shape}")
    if extended.shape != (images.shape[0], len(COLUMNS)):
        raise UsageError(f"{where}: QMNIST labels must be {images.shape[0]} x {len(COLUMNS)}; got {extended.shape}")


def _torchvision(part: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    try:
        ds = torchvision.datasets.QMNIST(str(cache), what=part, compat=False, download=True)
    except Exception as e:  # network errors come in many types; re-raise with the way out
        raise RuntimeError(
            f"could not load QMNIST through torchvision into {cache} ({type(e).__name__}: {e}): no network "
            f"here? Put {', '.join(FILES[part])} in a folder and pass folder="
        ) from e
    images, extended = ds.data.numpy(), ds.targets.numpy().astype(np.int64)  # raw uint8, (n, 8) extended labels
    _check_pair(images, extended, f"torchvision QMNIST in {cache}")
    return images, extended
