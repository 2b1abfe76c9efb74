"""Calibration: the noise multiplier that makes a run end at a target epsilon.

A run's releases are known before it starts (DESIGN.md section 4): per epoch,
a selection round at epochs 0, k, 2k, ... (craig; a random run redraws its
Poisson subset there, a marker in the ledger), then int(1/q) DP-SGD steps at
q = B/|S| with |S| the public size of the set (under adaptive clipping each
step releases its gradient and its noisy count as one mechanism, at the joint
multiplier of `joint_noise`). The planned ledger is that list as a function of
sigma; `solve_sigma` bisects on it so that epsilon_total <= target and
>= 0.99 target. sigma_sel is tied to sigma (sigma_sel = sigma) unless the user
fixes --select-sigma, or --select-share gives selection its own share of the
target, solved first (docs/privacy.md).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

from crepe.config import TrainConfig, UsageError
from crepe.privacy.accounting import epsilon
from crepe.privacy.ledger import Entry, record, record_subset

SIGMA_MAX = 200.0  # beyond this the model learns nothing: a target that needs more is "unreachable"
# The smallest sigma solve_sigma lets each accountant evaluate. Below it an accountant's domain can
# explode: Opacus' PRV discretises the privacy loss over a range that grows with epsilon and needs
# gigabytes (measured: sigma 0.3, q 0.0043, 50k steps: MemoryError at 5 GB; sigma 0.5 stays below
# 1.3 GB there and at q 0.001, 100k steps). RDP is closed form. dp-accounting's PLD grid grows as
# 1/sigma^2 (0.1: ~1e5 atoms a step, under a second). Others get the cautious default.
SIGMA_FLOOR = {"rdp": 1e-2, "prv": 0.5, "pld": 0.1}
DEFAULT_SIGMA_FLOOR = 0.5
COUNT_NOISE_SHARE = 20.0  # adaptive clipping: the count's noise std is B / 20 (Andrew et al. 2021)


class Unreachable(UsageError):
    """A target epsilon below what the schedule can reach; `floor` is the smallest reachable epsilon."""

    def __init__(self, message: str, *, floor: float):
        super().__init__(message)
        self.floor = floor


def steps_per_epoch(sample_rate: float) -> int:
    """int(1 / q), Opacus' rule, at least 1."""
    return max(1, int(1.0 / sample_rate))


def count_noise(batch_size: int) -> float:
    """Noise std sigma_b of adaptive clipping's count of unclipped examples (sensitivity 1)."""
    return batch_size / COUNT_NOISE_SHARE


def joint_noise(sigma: float, count_sigma: float) -> float:
    """The noise multiplier of one adaptive-clipping step, gradient and count released together.

    Both come from the SAME Poisson batch, so they are one subsampled Gaussian, not two: in noise units
    the vector (sum / (sigma C), count / sigma_b) moves by at most sqrt(sigma^-2 + sigma_b^-2) when one
    example is zeroed out (its gradient by <= C, the count by <= 1), i.e. a Gaussian of noise multiplier
    (sigma^-2 + sigma_b^-2)^(-1/2) at the step's q (docs/privacy.md, "Clip rules"). 0 (epsilon
    infinite) if either part has no noise.
    """
    if sigma == 0 or count_sigma == 0:
        return 0.0
    return (sigma**-2 + count_sigma**-2) ** -0.5


def sample_rate(batch_size: int, set_size: float) -> float:
    """q = B / |S| (|S| the public size of the set: for a Poisson subset its expected size), at most 1."""
    return min(1.0, batch_size / set_size)


def schedule(cfg: TrainConfig, *, n: int, set_size: float) -> tuple[int, int]:
    """(epochs, select_every) of the run. --compute steps gives a small set the optimiser steps of
    cfg.epochs passes over all n examples (epochs scaled up, selection rounds kept)."""
    if cfg.compute == "epochs" or cfg.method in ("full", "private-set"):
        return cfg.epochs, cfg.select_every
    steps = cfg.epochs * steps_per_epoch(sample_rate(cfg.batch_size, n))
    epochs = -(-steps // steps_per_epoch(sample_rate(cfg.batch_size, set_size)))
    return epochs, max(1, round(cfg.select_every * epochs / cfg.epochs))


def redraws(cfg: TrainConfig, epoch: int, *, every: int) -> bool:
    """True if the set is (re)chosen before `epoch` (0-based): craig and random at 0, k, 2k, ..."""
    return cfg.method in ("craig", "random") and epoch % every == 0


def planned_ledger(
    cfg: TrainConfig, *, n: int, set_size: float, epochs_done: int | None = None, generated: int | None = None
) -> list[Entry]:
    """The releases `cfg` will make on n training examples, training on a set of public size `set_size`
    (sigma resolved; for private-set the set is all n: generation samples the whole training set).
    With `epochs_done` (private-set: `generated`, the generation iterations done; None for all of
    them), only the releases made by then: what the checkpoint written at that point must hold."""
    assert cfg.sigma is not None and cfg.select_sigma is not None
    ledger: list[Entry] = []
    if cfg.method == "private-set":  # only the noisy real gradients of generation are releases
        from crepe.smallsets.private_set import schedule_of

        gen = schedule_of(cfg)
        steps, q_gen = gen.releases(n)
        if generated is not None:
            steps = generated * gen.outer_loops * gen.batch_loops
        if steps:
            record(ledger, kind="generate", noise_multiplier=cfg.sigma, sample_rate=q_gen, steps=steps)
        return ledger
    q = sample_rate(cfg.batch_size, set_size)
    step_noise = joint_noise(cfg.sigma, count_noise(cfg.batch_size)) if cfg.clipping == "adaptive" else cfg.sigma
    epochs, every = schedule(cfg, n=n, set_size=set_size)
    for epoch in range(epochs if epochs_done is None else epochs_done):
        if redraws(cfg, epoch, every=every):
            if cfg.method == "craig":
                record(ledger, kind="select", noise_multiplier=cfg.select_sigma, sample_rate=1.0)
            elif cfg.poisson_draw:
                record_subset(ledger, inclusion_probability=cfg.fraction)
        for _ in range(steps_per_epoch(q)):
            record(ledger, kind="train", noise_multiplier=step_noise, sample_rate=q)
    return ledger


def solve_sigma(
    ledger_for: Callable[[float], list[Entry]], *, target: float, delta: float, accountant: str
) -> float:
    """The sigma whose ledger ends at epsilon in [0.99 target, target] (epsilon falls as sigma grows).

    First a bracket: sigma halved from SIGMA_MAX until epsilon exceeds the target, never below the
    accountant's SIGMA_FLOOR; then bisection in log sigma on [1e-2, SIGMA_MAX], where a sigma at or
    below the bracket's is known to exceed the target (epsilon is monotone) and is not evaluated. So
    no accountant sees a sigma much below the answer (the bisection is the one crepe always ran: the
    same sigma for every target it could solve). A sigma at which the accountant fails counts as
    above every target. A target that needs less noise than the accountant can evaluate is a
    UsageError naming --sigma.
    """

    def eps(s: float) -> float:
        try:
            return epsilon(ledger_for(s), delta=delta, accountant=accountant)
        except (MemoryError, OverflowError, ValueError):  # the accountant's domain exploded: far above any target
            return math.inf

    floor = eps(SIGMA_MAX)
    if floor > target:
        raise Unreachable(
            f"--target-epsilon {target:g} is unreachable with this schedule: the smallest reachable epsilon is "
            f"{floor:.4g} (at sigma = {SIGMA_MAX:g}); raise the target, or shorten the schedule "
            "(fewer epochs or selection rounds, a larger --select-sigma)",
            floor=floor,
        )
    smallest = SIGMA_FLOOR.get(accountant, DEFAULT_SIGMA_FLOOR)
    above = SIGMA_MAX / 2  # halved until epsilon exceeds the target there, hence at every smaller sigma
    while eps(above) <= target:
        if above <= smallest:  # a target so loose that the least noise evaluated reaches it
            raise UsageError(
                f"--target-epsilon {target:g} is reached even at sigma = {smallest:g}, the smallest sigma crepe "
                f"evaluates with the {accountant} accountant: give --sigma instead"
            )
        above = max(above / 2, smallest)
    lo, hi = min(1e-2, above), SIGMA_MAX
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        e = math.inf if mid <= above else eps(mid)
        if e > target:
            lo = mid
        else:
            hi = mid
            if e >= 0.99 * target:
                return mid
    raise UsageError(  # only where the accountant failed below hi: epsilon jumps from < 0.99 target to "unreachable"
        f"--target-epsilon {target:g} needs a sigma below {hi:.4g}, where the {accountant} accountant cannot "
        "evaluate this schedule: give --sigma instead"
    )


def calibrate(cfg: TrainConfig, *, n: int, set_size: float) -> TrainConfig:
    """`cfg` (resolved, target_epsilon given) with sigma, and sigma_sel unless fixed, solved.
    --select-share first solves sigma_sel so that selection alone spends that share of the target."""
    assert cfg.target_epsilon is not None
    fixed_sel = cfg.select_sigma
    if cfg.select_share is not None:
        fixed_sel = solve_sigma(
            lambda s: [e for e in planned_ledger(replace(cfg, sigma=1.0, select_sigma=s), n=n, set_size=set_size)
                       if e["kind"] == "select"],
            target=cfg.select_share * cfg.target_epsilon,
            delta=cfg.delta,
            accountant=cfg.accountant,
        )

    def with_sigma(s: float) -> TrainConfig:
        sel = fixed_sel if fixed_sel is not None else s
        return replace(cfg, sigma=s, select_sigma=sel)

    sigma = solve_sigma(
        lambda s: planned_ledger(with_sigma(s), n=n, set_size=set_size),
        target=cfg.target_epsilon,
        delta=cfg.delta,
        accountant=cfg.accountant,
    )
    return with_sigma(sigma)
