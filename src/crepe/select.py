"""`crepe.select`: CRAIG selection, a module that is also the function it is named after.

    import crepe.select                       # the module path users import elsewhere
    from crepe.select import select, Selection
    crepe.select(X, y, fraction=0.1)          # the module is callable: crepe.selection.select

The implementation lives in crepe.selection (api, problem, result, cpu, cuda,
reference); this module only hands its public names on. numpy only.
"""

from __future__ import annotations

import inspect
import sys
import types
from crepe.selection import METHODS, Selection, UnverifiedCUDAWarning, select

__all__ = ["METHODS", "Selection", "UnverifiedCUDAWarning", "select"]


class _CallableModule(types.ModuleType):
    """`crepe.select(...)` calls `select(...)`: the name is both the module and the function."""

    __call__ = staticmethod(select)  # no frame of its own: warnings still point at the caller


__doc__ = f"{__doc__}\n{select.__doc__}"  # help(crepe.select) and crepe.select.__doc__ explain the function
__signature__ = inspect.signature(select)  # inspect.signature(crepe.select) is the function's
sys.modules[__name__].__class__ = _CallableModule
