"""full: every training example, weight 1 (no selection, nothing released)."""

from __future__ import annotations

from crepe.config import TrainConfig
from crepe.smallsets.method import Chosen, Method, Round


class Full(Method):
    name = "full"
    order = 0

    def choose(self, cfg: TrainConfig, rnd: Round) -> Chosen:
        from crepe.smallsets.sets import full_set

        return Chosen(full_set(len(rnd.y)))


METHOD = Full()
