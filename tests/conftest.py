"""Shared fixtures. Real data lives in ../shared/data beside the repo (CI has the
same layout); CREPE_TEST_DATA overrides the location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Import the extension before pytest captures output: an editable install
# rebuilds it on first import and that build writes to the real stdout.
import crepe._core  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("CREPE_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if not (root / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"test data not found under {root}: expected the IDX .gz files of "
            "fashion-mnist/ and mnist/ (see ../shared/data/README.md); set CREPE_TEST_DATA"
        )
    return root
