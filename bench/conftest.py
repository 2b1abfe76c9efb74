"""Benchmarks: `pytest bench/ --benchmark-json=bench.json` (add `--quick` for a
seconds-long smoke size). Each benchmark checks its result before timing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # bench/inputs.py


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true", help="small sizes that finish in seconds")


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--quick"))
