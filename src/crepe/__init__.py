"""crepe: CRAIG coresets for differentially private training.

`import crepe` needs only numpy; torch and opacus load inside `crepe.train` and
the training commands that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crepe import select  # a module that is also the function: crepe.select(X, y, fraction=0.1)
from crepe._version import __version__
from crepe.selection import METHODS, Selection

if TYPE_CHECKING:
    from crepe.training.api import Result

__all__ = ["METHODS", "Selection", "select", "train", "__version__"]


def train(model: Any, train_data: Any, **kwargs: Any) -> Result:
    """DP training of a model of one's own on data of one's own: crepe.training.api.train."""
    from crepe.training.api import train as train_

    return train_(model, train_data, **kwargs)


def __dir__() -> list[str]:
    # Only the public names: not `annotations` or the subpackages imported on the way.
    return sorted(__all__)
