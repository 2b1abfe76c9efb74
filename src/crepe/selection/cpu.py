"""The CPU engine: a validated host Problem through crepe._core."""

from __future__ import annotations

from crepe import _core
from crepe.selection.problem import Problem
from crepe.selection.result import Selection


def run(p: Problem, *, method_id: int, threads: int | None) -> Selection:
    """Select on the host; `threads` None means OMP_NUM_THREADS or all cores."""
    out = p.outputs()
    _core.select_per_class(p.X, p.cls, p.budgets, method_id, threads or 0, *out)
    return p.selection(*out)
