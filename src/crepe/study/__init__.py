"""The study: grids of `crepe train` runs (sweep), their tables and plots (report), and the
comparison at equal epsilon (verdict)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from crepe.config import UsageError


def command(prog: str, body: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a command's body; bad input (UsageError) is one line on stderr and exit status 2."""
    try:
        return body(argv)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
