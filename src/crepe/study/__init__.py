"""The study: grids of `crepe train` runs, their tables and plots, and the comparison at equal epsilon.

Its modules, each importing only modules to its left (and `command`, below, for the two commands):

    grid -> plan -> runner -> cluster -> sweep
        the options as a sweep sees them; a grid expanded into named runs; running them (here, or a
        task per run on a Dask cluster: cluster, which alone imports Dask); `crepe sweep`
    grid -> results -> tables, plots -> verdict -> user_study -> report
        runs grouped into rows over seeds; results.md and .csv; the figures; the study at equal
        epsilon; the user-level study at equal user-level epsilon (runs on data with users);
        `crepe report` (which also reads a sweep's manifest: plan.load_manifest)
"""

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
