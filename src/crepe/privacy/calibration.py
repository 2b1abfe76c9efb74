"""Calibration: the noise multiplier that makes a run end at a target epsilon.

A run's releases are known before it starts (DESIGN.md section 4): per epoch,
a selection round at epochs 0, k, 2k, ... (craig), then int(1/q) DP-SGD steps
at q = B/|S| (and, under adaptive clipping, one noisy count per step). The
planned ledger is that list as a function of sigma; `solve_sigma` bisects on
it so that epsilon_total <= target and >= 0.99 target. sigma_sel is tied to
sigma (sigma_sel = sigma) unless the user fixes --select-sigma (docs/privacy.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from crepe.config import TrainConfig, UsageError
from crepe.privacy.accounting import epsilon
from crepe.privacy.ledger import Entry, record

SIGMA_MAX = 200.0  # beyond this the model learns nothing: a target that needs more is "unreachable"
COUNT_NOISE_SHARE = 20.0  # adaptive clipping: the count's noise std is B / 20 (Andrew et al. 2021)


def steps_per_epoch(sample_rate: float) -> int:
    """int(1 / q), Opacus' rule, at least 1."""
    return max(1, int(1.0 / sample_rate))


def count_noise(batch_size: int) -> float:
    """Noise multiplier of adaptive clipping's count of unclipped examples (sensitivity 1)."""
    return batch_size / COUNT_NOISE_SHARE


def planned_ledger(cfg: TrainConfig, *, set_size: int) -> list[Entry]:
    """The releases `cfg` will make, training on a set of `set_size` examples (sigma resolved;
    for private-set, set_size is n: generation samples the whole training set)."""
    assert cfg.sigma is not None and cfg.select_sigma is not None
    ledger: list[Entry] = []
    if cfg.method == "private-set":  # only the noisy real gradients of generation are releases
        from crepe.smallsets.private_set import schedule_of

        steps, q_gen = schedule_of(cfg).releases(set_size)
        record(ledger, kind="generate", noise_multiplier=cfg.sigma, sample_rate=q_gen, steps=steps)
        return ledger
    q = min(1.0, cfg.batch_size / set_size)
    for epoch in range(cfg.epochs):
        if cfg.method == "craig" and epoch % cfg.select_every == 0:
            record(ledger, kind="select", noise_multiplier=cfg.select_sigma, sample_rate=1.0)
        for _ in range(steps_per_epoch(q)):
            record(ledger, kind="train", noise_multiplier=cfg.sigma, sample_rate=q)
            if cfg.clipping == "adaptive":
                record(ledger, kind="clip-count", noise_multiplier=count_noise(cfg.batch_size), sample_rate=q)
    return ledger


def solve_sigma(
    ledger_for: Callable[[float], list[Entry]], *, target: float, delta: float, accountant: str
) -> float:
    """The sigma whose ledger ends at epsilon in [0.99 target, target] (epsilon falls as sigma grows)."""
    eps = lambda s: epsilon(ledger_for(s), delta=delta, accountant=accountant)  # noqa: E731
    floor = eps(SIGMA_MAX)
    if floor > target:
        raise UsageError(
            f"--target-epsilon {target:g} is unreachable with this schedule: the smallest reachable epsilon is "
            f"{floor:.4g} (at sigma = {SIGMA_MAX:g}); raise the target, or shorten the schedule "
            "(fewer epochs or selection rounds, a larger --select-sigma)"
        )
    lo, hi = 1e-2, SIGMA_MAX
    while eps(lo) <= target:  # a target so loose that tiny noise reaches it
        if lo < 1e-4:
            raise UsageError(f"--target-epsilon {target:g} is reached even at sigma < {lo:g}: give --sigma instead")
        lo /= 2
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        e = eps(mid)
        if e > target:
            lo = mid
        else:
            hi = mid
            if e >= 0.99 * target:
                return mid
    return hi


def calibrate(cfg: TrainConfig, *, set_size: int) -> TrainConfig:
    """`cfg` (resolved, target_epsilon given) with sigma, and sigma_sel unless fixed, solved."""
    assert cfg.target_epsilon is not None
    fixed_sel = cfg.select_sigma

    def with_sigma(s: float) -> TrainConfig:
        sel = fixed_sel if fixed_sel is not None else s
        return replace(cfg, sigma=s, select_sigma=sel)

    sigma = solve_sigma(
        lambda s: planned_ledger(with_sigma(s), set_size=set_size),
        target=cfg.target_epsilon,
        delta=cfg.delta,
        accountant=cfg.accountant,
    )
    return with_sigma(sigma)
