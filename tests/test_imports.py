"""crepe's imports, read from the source (every `import`, at module level or inside a function):
no circle, and no dependency pointing against the layer order (DESIGN.md section 10, as built:
the ledger's release types sit low, beside config, because the optimizer and the small-set
methods write releases that the accountants above them read). And the module path that the
design card promises: `import crepe.select`, in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("crepe.config", "crepe._core", "crepe._cuda", "crepe._version"),
    ("crepe.privacy.ledger", "crepe.selection", "crepe.select", "crepe.parser"),
    ("crepe.dp", "crepe.data", "crepe.models", "crepe.features"),
    ("crepe.smallsets", "crepe.users"),
    ("crepe.privacy", "crepe.audit"),
    ("crepe.training",),
    ("crepe.cli", "crepe.study", "crepe.__main__", "crepe"),  # crepe: crepe.train imports the training API
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Python modules, and the compiled extensions by their stubs (crepe._core, crepe._cuda: they import nothing)."""
    return {module_name(p): p for p in sorted((SRC / "crepe").rglob("*.py")) + sorted((SRC / "crepe").rglob("*.pyi"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The crepe modules `name` imports: `import a.b`, `from a.b import c` (c a module if it is one),
    relative imports resolved."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if path.suffix == ".pyi":
        return out
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import crepe.x.y` names module crepe.x.y, or a name in it
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer(name: str) -> int:
    """The layer of the longest prefix that names it."""
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            under = name.startswith(p + ".") and p != "crepe"  # the package itself sits on top, not its modules
            if (name == p or under) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    if best is None:
        raise AssertionError(f"{name} is in no layer of tests/test_imports.py: place it (DESIGN.md section 10)")
    return best[0]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_the_walk_sees_imports_of_every_kind() -> None:
    g = graph()
    assert "crepe.config" in g["crepe.training.plan"]  # from crepe.config import ...
    assert "crepe.smallsets.methods" in g["crepe.training.plan"]  # from crepe.smallsets import methods
    assert "crepe.privacy.calibration" in g["crepe.training.plan"]  # inside a function
    assert "crepe.select" in g["crepe"]  # from crepe import select (a module)


def test_no_dependency_points_up() -> None:
    g = graph()
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                    for a, deps in g.items() for b in deps if layer(b) > layer(a))
    assert upward == []


def test_nothing_imports_the_command_line() -> None:
    g = graph()
    assert sorted(a for a, deps in g.items() if "crepe.cli" in deps and a != "crepe.__main__") == []


def test_no_circle() -> None:
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert circles == []


def test_the_layers_order_the_concerns() -> None:
    """The order the checks above hold the code to (and a module outside it is refused)."""
    assert layer("crepe.training.loop") > layer("crepe.privacy.accounting") > layer("crepe.smallsets.sets")
    assert layer("crepe.privacy.ledger") < layer("crepe.dp.optimizer")
    with pytest.raises(AssertionError, match="in no layer"):
        layer("elsewhere.module")


@pytest.mark.parametrize(
    "code",
    [
        "import crepe.select; import sys; assert callable(crepe.select)",
        "from crepe.select import select, Selection",
        "import numpy as np, crepe; s = crepe.select(np.eye(6, dtype=np.float32), np.array([0, 0, 0, 1, 1, 1]), "
        "fraction=0.34); assert len(s.indices) == 2",
        "import crepe.selection; from crepe.selection import select, Selection, METHODS",
        "import crepe.select, crepe.selection, sys; assert crepe.select.select is crepe.selection.select; "
        "assert 'torch' not in sys.modules",
    ],
)
def test_the_module_path_the_design_card_promises(code: str) -> None:
    # the interpreter and environment of this test session: crepe is found where the tests find it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
