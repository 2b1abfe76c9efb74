"""`import crepe` (and the CLI module) stay numpy-only: torch loads only when a run starts."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import crepe, crepe.cli, crepe.config, crepe.privacy
heavy = sorted(m for m in ("torch", "opacus", "torchvision") if m in sys.modules)
print(",".join(heavy) or "light")
"""


def test_import_crepe_does_not_import_torch() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "light", out.stdout + out.stderr
