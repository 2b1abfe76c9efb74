"""private-set: synthetic images learned by DP gradient matching (smallsets/private_set.py).

Generation is the one selection round (before the first epoch): its noisy real
gradients are "generate" releases on all n training examples (sigma, q = B/n);
training then reads only the synthetic images and releases nothing.
Generation is checkpointed after every iteration (`Round.save_progress`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crepe.config import USER, TrainConfig, UsageError
from crepe.privacy.ledger import Release
from crepe.smallsets.method import Chosen, Method, Round

if TYPE_CHECKING:
    import torch

    from crepe.smallsets.private_set import Schedule

CLASSES = 10


def schedule_of(cfg: TrainConfig) -> Schedule:
    """The generation schedule of a `crepe train --method private-set` run."""
    from crepe.smallsets.private_set import Schedule

    return Schedule(
        spc=cfg.images_per_class, iterations=cfg.gen_iterations, outer_loops=cfg.gen_outer_loops,
        batch_loops=cfg.gen_batch_loops, batch_size=cfg.batch_size, clip=cfg.max_grad_norm, lr_images=cfg.gen_lr_images, inner_steps=10,
        width=cfg.gen_width,
    )


class PrivateSet(Method):
    name = "private-set"
    order = 3
    options = ("images_per_class", "gen_iterations", "gen_outer_loops", "gen_batch_loops", "gen_lr_images", "gen_width")
    levers = "fewer --gen-iterations, --gen-outer-loops or --gen-batch-loops"
    trains_privately = False

    def check(self, cfg: TrainConfig) -> None:
        from crepe import data

        if cfg.dataset != USER and (data.classes(cfg.dataset) != CLASSES or data.shape(cfg.dataset) != (1, 28, 28)):
            raise UsageError(f"--method private-set generates {CLASSES} classes of 28x28 grey images: not {cfg.dataset}")
        if cfg.clipping != "flat" or cfg.diagnostics:
            raise UsageError("--method private-set clips flat in generation and trains on synthetic data: "
                             "--clipping and --diagnostics do not apply")

    def check_own(self, cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> None:
        raise UsageError("--method private-set generates 10 classes of 28x28 grey images normalised as the built-in "
                         "datasets are: it runs on crepe's datasets only (crepe train); with a model and data of "
                         "your own, use method full, random or craig")

    def public_size(self, cfg: TrainConfig, counts: Sequence[int]) -> float:
        return cfg.images_per_class * CLASSES  # the epochs train on the synthetic images

    def redraws(self, cfg: TrainConfig, epoch: int, *, every: int) -> bool:
        return epoch == 0  # generation, once

    def round_releases(self, cfg: TrainConfig, n: int) -> tuple[Release, ...]:
        """The noisy real gradients of generation on all n examples (q = B/n)."""
        return self._releases(cfg, n, schedule_of(cfg).iterations)

    def partial_releases(self, cfg: TrainConfig, n: int, progress: dict[str, Any]) -> tuple[Release, ...]:
        """Those of the iterations a saved generation state has done."""
        return self._releases(cfg, n, int(progress["iteration"]))

    def _releases(self, cfg: TrainConfig, n: int, iterations: int) -> tuple[Release, ...]:
        assert cfg.sigma is not None, "resolve the config first"
        schedule = schedule_of(cfg)
        q = schedule.releases(n)[1]
        steps = iterations * schedule.outer_loops * schedule.batch_loops
        return (Release("generate", cfg.sigma, q, steps),) if steps else ()

    def choose(self, cfg: TrainConfig, rnd: Round) -> Chosen:
        from crepe.data import NORMALISATION
        from crepe.smallsets.private_set import GenerationState, generate, save_synthetic
        from crepe.smallsets.sets import full_set

        schedule = schedule_of(cfg)
        resume = None if rnd.progress is None else GenerationState.from_dict(rnd.progress)
        gens = rnd.generators

        def on_checkpoint(g: GenerationState) -> None:
            rnd.save_progress(g.to_dict())
            rnd.say(f"generation: iteration {g.iteration}/{schedule.iterations}")

        assert cfg.sigma is not None
        try:
            images, labels = generate(
                rnd.x, rnd.y, schedule=schedule, sigma=cfg.sigma, noise_gen=gens["noise"], sample_gen=gens["sampler"],
                init_gen=gens["select"], on_release=lambda sigma, q: rnd.record(Release("generate", sigma, q)),
                classes=CLASSES, state=resume, on_checkpoint=on_checkpoint,
            )
        except ValueError as e:  # generate checks its inputs (spc against the class sizes, B against n) first
            raise UsageError(str(e)) from None
        rnd.save_progress(None)
        mean, std = NORMALISATION[cfg.dataset]
        save_synthetic(rnd.run_dir, images, labels, mean=mean, std=std, dataset=cfg.dataset)
        return Chosen(full_set(len(labels)), synthetic={"images": images, "labels": labels})


METHOD = PrivateSet()
