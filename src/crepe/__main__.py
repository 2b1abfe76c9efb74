"""`python -m crepe ...` runs the command line (crepe train | sweep | report)."""

from __future__ import annotations

import sys

from crepe.cli import main

sys.exit(main())
