"""random: a uniform subset drawn from a secret generator, independently of the data.

--random-draw poisson (default): each example independently with probability
--fraction; it reads nothing, not even the labels; trained at q = B/(fraction
n), the public expected size; its realised size is never published; a "subset"
marker in the ledger lets the accountant amplify the epochs on it. fixed:
CRAIG's per-class (or global) budgets, which read the labels; q = B/|S|.
"""

from __future__ import annotations

from collections.abc import Sequence

from crepe.config import TrainConfig
from crepe.privacy.ledger import Release, subset
from crepe.smallsets.method import SUBSET, Chosen, Method, Round


class Random(Method):
    name = "random"
    order = 1
    options = (*SUBSET, "random_draw")

    def poisson(self, cfg: TrainConfig) -> bool:
        return cfg.random_draw == "poisson"

    def reads_labels(self, cfg: TrainConfig) -> bool:
        return not self.poisson(cfg) and cfg.selection_scope == "per-class"

    def secret_size(self, cfg: TrainConfig) -> bool:
        return self.poisson(cfg)

    def public_size(self, cfg: TrainConfig, counts: Sequence[int]) -> float:
        from crepe.smallsets.sets import budget_size

        return cfg.fraction * sum(counts) if self.poisson(cfg) else budget_size(cfg, counts)

    def redraws(self, cfg: TrainConfig, epoch: int, *, every: int) -> bool:
        return epoch % every == 0

    def round_releases(self, cfg: TrainConfig, n: int) -> tuple[Release, ...]:
        return (subset(cfg.fraction),) if self.poisson(cfg) else ()

    def choose(self, cfg: TrainConfig, rnd: Round) -> Chosen:
        from crepe.smallsets.sets import poisson_subset, random_coreset

        gen = rnd.generators["select"]
        if not self.poisson(cfg):
            return Chosen(random_coreset(rnd.y.numpy(), fraction=cfg.fraction, scope=cfg.selection_scope, generator=gen))
        chosen = poisson_subset(len(rnd.y), probability=cfg.fraction, generator=gen)
        for r in self.round_releases(cfg, len(rnd.y)):
            rnd.record(r)
        return Chosen(chosen)


METHOD = Random()
