"""`import crepe` (and the CLI module) stay numpy-only: torch loads only when a run starts."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import crepe, crepe.cli, crepe.config, crepe.privacy, crepe.training.rundir, crepe.study
heavy = sorted(m for m in ("torch", "opacus", "torchvision") if m in sys.modules)
print(",".join(heavy) or "light")
"""


def test_import_crepe_does_not_import_torch() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "light", out.stdout + out.stderr


def test_selection_imports_point_one_way() -> None:
    """crepe.selection's modules import each other without a cycle, and result
    imports nothing else of crepe (read from the source, so lazy imports count)."""
    import ast
    from pathlib import Path

    import crepe.selection

    pkg = Path(crepe.selection.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in pkg.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        graph[path.stem] = {n.split(".")[2] for n in names if n.startswith("crepe.selection.")} - {path.stem}
        if path.stem == "result":
            assert not {n for n in names if n.split(".")[0] == "crepe"}, names
    graph.pop("__init__")

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m, set())], graph
