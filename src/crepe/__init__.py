"""crepe: CRAIG coresets for differentially private training.

`import crepe` needs only numpy; torch and opacus load inside the training
commands that use them.
"""

from __future__ import annotations

from crepe import select  # a module that is also the function: crepe.select(X, y, fraction=0.1)
from crepe.selection import METHODS, Selection

__all__ = ["METHODS", "Selection", "select", "__version__"]
__version__ = "0.1.0"


def __dir__() -> list[str]:
    # Only the public names: not `annotations` or the subpackages imported on the way.
    return sorted(__all__)
