"""Command line: crepe train | sweep | report (placeholder until the pipeline lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("crepe: no commands yet", file=sys.stderr)
    return 2
