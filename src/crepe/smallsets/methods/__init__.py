"""The registry of small-set methods: every module of this package that defines METHOD.

Adding a method is adding its module here (and its tests): nothing else names it.
`get(name)` raises a UsageError listing the valid names (Opacus' accountant
registry is the model). Torch-free.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import replace
from functools import cache

from crepe import config
from crepe.config import Spec, UsageError
from crepe.smallsets.method import Method


@cache
def registry() -> dict[str, Method]:
    """name -> method, in their declared order."""
    found: list[Method] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if isinstance(method, Method):
            found.append(method)
    names = [m.name for m in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two small-set methods share a name: {sorted(names)}")
    for m in found:
        unknown = set(m.options) - set(config.options())
        if unknown:
            raise RuntimeError(f"method {m.name!r} reads options crepe.config does not declare: {sorted(unknown)}")
    return {m.name: m for m in sorted(found, key=lambda m: (m.order, m.name))}


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> Method:
    if name not in registry():
        raise UsageError(f"unknown method {name!r}; valid: {', '.join(names())}")
    return registry()[name]


def method_options() -> frozenset[str]:
    """The options some method reads: each applies only to the methods that declare it."""
    return frozenset(o for m in registry().values() for o in m.options)


def ignores(method: str, option: str) -> bool:
    """True if runs of `method` do not depend on `option` (another method's option)."""
    return option in method_options() and option not in get(method).options


def check_given(method: str, given: Iterable[str]) -> None:
    """UsageError for a flag given with a method that does not read it."""
    for name in given:
        if ignores(method, name):
            raise UsageError(f"{config.options()[name].flag} does not apply to --method {method}; drop it")


def declared() -> dict[str, Spec]:
    """crepe.config's option declarations, with the choices of the option that names a method
    (`Spec.registry`) filled from this registry: what every parser checks values against."""
    return {name: replace(s, choices=names()) if s.registry else s for name, s in config.options().items()}
