"""craig: a CRAIG coreset chosen from privatised per-example gradient proxies.

Each selection round computes proxies for all n examples from the current
model, clips each to --select-clip and adds N(0, (sigma_sel C_sel)^2) (one
"select" release at sample rate 1), and runs CRAIG (crepe.select) on the
noisy proxies only: nothing computed from the clean proxies reaches the choice
or the weights. Per-class scope reads the labels (treated as public).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from crepe.config import TrainConfig
from crepe.privacy.ledger import Release
from crepe.smallsets.method import SUBSET, Chosen, Method, Round

if TYPE_CHECKING:
    import torch


class Craig(Method):
    name = "craig"
    order = 2
    options = (*SUBSET, "proxy", "weights", "select_clip", "select_sigma", "select_share")
    levers = "fewer --epochs or selection rounds (a larger --select-every), a larger --select-sigma"

    def reads_labels(self, cfg: TrainConfig) -> bool:
        return cfg.selection_scope == "per-class"

    def check_own(self, cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> None:
        import torch

        from crepe.smallsets.proxies import head_input

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                head_input(model, x)  # the proxies' requirement
        finally:
            model.train(was_training)

    def public_size(self, cfg: TrainConfig, counts: Sequence[int]) -> float:
        from crepe.smallsets.sets import budget_size

        return budget_size(cfg, counts)

    def redraws(self, cfg: TrainConfig, epoch: int, *, every: int) -> bool:
        return epoch % every == 0

    def round_releases(self, cfg: TrainConfig, n: int) -> tuple[Release, ...]:
        assert cfg.select_sigma is not None, "resolve the config first"
        return (Release("select", cfg.select_sigma, 1.0),)

    def choose(self, cfg: TrainConfig, rnd: Round) -> Chosen:
        from crepe.smallsets.proxies import compute_proxies, privatise
        from crepe.smallsets.sets import craig_coreset

        clean = compute_proxies(rnd.model, rnd.x, rnd.y, kind=cfg.proxy)  # (n, d)
        noisy = privatise(clean, clip=cfg.select_clip, sigma=cfg.select_sigma, generator=rnd.generators["select"])
        del clean  # nothing below may read the clean proxies
        for r in self.round_releases(cfg, len(rnd.y)):
            rnd.record(r)
        labels = rnd.y.numpy()
        return Chosen(craig_coreset(noisy, labels, fraction=cfg.fraction, scope=cfg.selection_scope, threads=cfg.threads))


METHOD = Craig()
