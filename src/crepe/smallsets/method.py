"""The protocol every small-set method implements, and what one selection round hands it.

A method (one module in smallsets/methods/, found by the registry there)
declares, before any data is read:
- `name`, and `order` (its place in tables and plots);
- `options`: the TrainConfig options it reads beyond the common ones (declared
  once in crepe.config; a method inherits a shared group, e.g. SUBSET, and adds
  its own); an option another method reads and this one does not is refused
  with this method;
- `check(cfg)`: combinations of common options it cannot run;
  `check_own(cfg, model, x)`: what it cannot do with a model and data of one's
  own (crepe.train), tried on a few examples before anything is written;
- `reads_labels(cfg)`: whether its choice reads the true labels (per-class
  budgets): epsilon then treats the labels and class sizes as public;
- `secret_size(cfg)`: whether the realised size of its set is a secret (a
  Poisson subset): figures whose denominator would give it back are withheld;
- `public_size(cfg, counts)`: the size |S| the sample rate q = B/|S| is fixed
  from, a function of the class counts only;
- `redraws(cfg, epoch, every)`: whether the set is chosen again before `epoch`;
- `round_releases(cfg, n)`: what one selection round releases (typed
  releases, markers included), known in advance; `partial_releases(cfg, n,
  progress)`: what a round saved part way (`Round.save_progress`) has released;
- `trains_privately`: False when training reads no private data (synthetic
  images): its steps release nothing; `levers`: what shortens its schedule;
- `choose(cfg, rnd)`: the set, from what `Round` gives it; it records exactly
  `round_releases` into `rnd.record` (the loop checks it against the plan).

Torch-free: methods import torch inside `choose`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from crepe.privacy.ledger import Release

if TYPE_CHECKING:
    import torch

    from crepe.config import TrainConfig
    from crepe.smallsets.sets import Coreset

# The options shared by the methods that choose a fraction of the data (craig, random).
SUBSET = ("fraction", "selection_scope", "select_every", "compute")


@dataclass
class Round:
    """What a method's `choose` may read and call in one selection round."""

    model: torch.nn.Module  # the current model (CRAIG's proxies come from it)
    x: torch.Tensor  # (n, 1, 28, 28) the training split
    y: torch.Tensor  # (n,)
    generators: dict[str, torch.Generator]  # the run's secret generators, by name
    record: Callable[[Release], None]  # enters a release into the run's ledger
    say: Callable[[str], None]  # a progress line
    run_dir: Path
    progress: dict[str, Any] | None = None  # the method's saved progress within a round (resume)
    save_progress: Callable[[dict[str, Any] | None], None] = lambda progress: None  # checkpoint it


@dataclass(frozen=True)
class Chosen:
    """A round's result: indices and CRAIG weights into the training data the epochs run on;
    `synthetic` ({"images", "labels"}) replaces that training data (private-set)."""

    coreset: Coreset
    synthetic: dict[str, torch.Tensor] | None = None


class Method:
    """Defaults of the protocol: a method that reads no labels, trains on its set privately, never
    redraws and releases nothing when it chooses."""

    name: ClassVar[str]
    order: ClassVar[int]
    options: ClassVar[tuple[str, ...]] = ()
    trains_privately: ClassVar[bool] = True
    levers: ClassVar[str] = "fewer --epochs"  # what shortens its schedule (said when a target is unreachable)

    def check(self, cfg: TrainConfig) -> None:
        """UsageError for a combination of options this method cannot run."""

    def check_own(self, cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> None:
        """UsageError for a model of one's own, or its data (a few examples `x`), this method cannot use."""

    def reads_labels(self, cfg: TrainConfig) -> bool:
        return False

    def secret_size(self, cfg: TrainConfig) -> bool:
        return False

    def public_size(self, cfg: TrainConfig, counts: Sequence[int]) -> float:
        return sum(counts)

    def redraws(self, cfg: TrainConfig, epoch: int, *, every: int) -> bool:
        return False

    def round_releases(self, cfg: TrainConfig, n: int) -> tuple[Release, ...]:
        return ()

    def partial_releases(self, cfg: TrainConfig, n: int, progress: dict[str, Any]) -> tuple[Release, ...]:
        raise NotImplementedError(f"method {self.name!r} saves no progress within a round")

    def choose(self, cfg: TrainConfig, rnd: Round) -> Chosen:
        raise NotImplementedError
