"""CRAIG selection: `select` (api) on a validated `Problem` (problem), by the CPU
or CUDA engine (cpu, cuda), into a frozen `Selection` (result); `reference` is
the slow NumPy oracle. Beside the exact engine, for very large classes:
engines (options, per-class loop) -> stochastic, sharded (-> cpu) -> trace.
Imports point one way: api -> engines, cpu, cuda -> problem -> result, and
reference -> problem, result; result imports nothing of crepe.
"""

from __future__ import annotations

from crepe.selection.api import METHODS, UnverifiedCUDAWarning, select
from crepe.selection.result import Selection

__all__ = ["METHODS", "Selection", "UnverifiedCUDAWarning", "select"]
