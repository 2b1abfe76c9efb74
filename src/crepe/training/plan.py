"""The run plan: what a run will do and release, written once, before it starts.

A plan is the resolved configuration, its small-set method (the registry in
smallsets/methods), the public sizes (n training examples, the public size
|S| of the set the epochs run on, from the class counts alone), the schedule
(epochs, selection every k) and the releases of every epoch: the method's
selection round at epochs 0, k, 2k, ... (markers included), then int(1/q)
DP-SGD steps at q = B/|S| (none when training reads no private data).
Calibration solves sigma over `Plan.ledger`; the loop follows the plan and
checks after every epoch that the releases it recorded are the plan's
(`check`): "planned = recorded" is an invariant of the run, and a resumed
checkpoint's ledger is held against the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crepe.audit import rules as audit_rules
from crepe.config import USER, TrainConfig, UsageError
from crepe.data import LoadedData
from crepe.dp.clipping import step_noise
from crepe.dp.sampling import sample_rate, steps_per_epoch
from crepe.privacy.ledger import Ledger, Release
from crepe.smallsets import methods
from crepe.smallsets.method import Method
from crepe.users import algorithms


class PlanMismatch(RuntimeError):
    """A run recorded releases that are not its plan's: it stops before printing any epsilon."""


@dataclass(frozen=True)
class Plan:
    cfg: TrainConfig  # resolved: sigma and sigma_sel set
    n: int  # training examples
    set_size: float  # the public |S| the sample rate comes from (a Poisson subset: its expected size)
    max_per_user: int | None = None  # data with users: the public k (--target-unit user calibrates to it)

    @classmethod
    def of(cls, cfg: TrainConfig, *, counts: Sequence[int], users: int | None = None,
           max_per_user: int | None = None) -> Plan:
        """The plan of `cfg` on training data with these class counts (and U `users`, for a
        user-level run: the public size it samples from; `max_per_user`: the public k of data with
        users), solved (`solved`)."""
        method = methods.get(cfg.method)
        method.check(cfg)
        algorithms.check(cfg)
        if cfg.privacy_unit == "user":
            if users is None:
                raise UsageError("--privacy-unit user needs users: --users synthetic, --dataset qmnist, or user_ids with crepe.train")
            plan = cls(cfg, int(sum(counts)), float(users), max_per_user).solved()
        else:
            plan = cls(cfg, int(sum(counts)), method.public_size(cfg, counts), max_per_user).solved()
        audit_rules.check(plan.cfg, method, plan.n)  # solved: a round's releases need sigma_sel (CRAIG)
        return plan

    @classmethod
    def for_data(cls, cfg: TrainConfig, ds: LoadedData) -> Plan:
        """The plan of `cfg` on loaded data: its class counts and, with users, U."""
        return cls.of(cfg, counts=class_counts(ds.y_train), users=ds.users, max_per_user=ds.max_per_user)

    def solved(self) -> Plan:
        """This plan with sigma solved from the target epsilon (and sigma_sel from --select-share)
        if the config has none yet."""
        cfg = self.cfg
        if cfg.sigma is not None:
            return self
        from crepe.privacy.calibration import calibrate

        assert cfg.target_epsilon is not None
        sigma, select_sigma = calibrate(
            lambda s, sel: replace(self, cfg=replace(cfg, sigma=s, select_sigma=sel)).ledger(),
            target=cfg.target_epsilon, delta=cfg.delta, accountant=cfg.accountant,
            select_sigma=cfg.select_sigma, select_share=cfg.select_share, levers=self.method.levers,
            measure=self.per_user_measure(),
        )
        return replace(self, cfg=replace(cfg, sigma=sigma, select_sigma=select_sigma))

    def per_user_measure(self) -> Any:
        """--target-unit user on an example-level run: the ledger's group-privacy epsilon per user of at
        most k examples (privacy/group.py; the pld accountant where the run's has no group conversion)."""
        cfg = self.cfg
        if cfg.target_unit != "user" or self.user_level:
            return None
        if self.max_per_user is None:
            raise UsageError("--target-unit user calibrates to epsilon per user of at most k examples: it needs users "
                             "(--users synthetic, --dataset qmnist, or user_ids with crepe.train)")
        from crepe.privacy.group import group_accountant, user_epsilon

        accountant = group_accountant(cfg.accountant)
        k = self.max_per_user
        return lambda ledger: user_epsilon(ledger, k=k, delta=cfg.delta, accountant=accountant)

    @property
    def method(self) -> Method:
        return methods.get(self.cfg.method)

    @property
    def sample_rate(self) -> float:
        """q = B/|S|; for a user-level run, users per round / U."""
        per_step = self.cfg.users_per_round if self.user_level else self.cfg.batch_size
        return sample_rate(per_step, self.set_size)

    @property
    def user_level(self) -> bool:
        return self.cfg.privacy_unit == "user"

    @property
    def no_test_accuracy(self) -> str | None:
        """Why the run has no test accuracy, if it has none by design."""
        if self.user_level and self.cfg.algorithm == "dp-fedemb":
            return "dp-fedemb trains no global head, each virtual client keeps its own; judged by its embeddings"
        return None

    @property
    def schedule(self) -> tuple[int, int]:
        """(epochs, select_every). --compute steps gives a small set the optimiser steps of
        cfg.epochs passes over all n examples (epochs scaled up, selection rounds kept)."""
        cfg = self.cfg
        if "compute" not in self.method.options or cfg.compute == "epochs":
            return cfg.epochs, cfg.select_every
        steps = cfg.epochs * steps_per_epoch(sample_rate(cfg.batch_size, self.n))
        epochs = -(-steps // steps_per_epoch(self.sample_rate))
        return epochs, max(1, round(cfg.select_every * epochs / cfg.epochs))

    @property
    def epochs(self) -> int:
        return self.schedule[0]

    def redraws(self, epoch: int) -> bool:
        """True if the set is chosen again before `epoch` (0-based)."""
        return self.method.redraws(self.cfg, epoch, every=self.schedule[1])

    def round_releases(self, progress: dict[str, Any] | None = None) -> tuple[Release, ...]:
        """One selection round's releases; with `progress`, those of a round saved part way."""
        m = self.method
        return m.round_releases(self.cfg, self.n) if progress is None else m.partial_releases(self.cfg, self.n, progress)

    def epoch_releases(self, epoch: int) -> tuple[Release, ...]:
        """What epoch `epoch` (0-based) releases: its selection round, if any, then its steps."""
        cfg = self.cfg
        chosen = self.round_releases() if self.redraws(epoch) else ()
        if not self.method.trains_privately:
            return chosen
        assert cfg.sigma is not None
        q = self.sample_rate
        if self.user_level:  # one round per step: the ledger's multiplier is sigma C / sensitivity
            return (*chosen, Release("train", cfg.sigma / algorithms.sensitivity(cfg), q, steps_per_epoch(q), unit="user"))
        noise = step_noise(cfg.sigma, clipping=cfg.clipping, batch_size=cfg.batch_size)
        return (*chosen, Release("train", noise, q, steps_per_epoch(q)))

    def ledger(self, epochs_done: int | None = None, *, progress: dict[str, Any] | None = None) -> Ledger:
        """The releases of the whole run, or of its first `epochs_done` epochs; with `progress`
        (epochs_done 0), of a first selection round saved part way."""
        if progress is not None:
            return Ledger(self.round_releases(progress))
        done = self.epochs if epochs_done is None else epochs_done
        return Ledger(r for epoch in range(done) for r in self.epoch_releases(epoch))

    def check(self, recorded: Ledger, *, epochs_done: int) -> None:
        """PlanMismatch unless `recorded` is, release for release, the plan's first `epochs_done` epochs."""
        planned = self.ledger(epochs_done)
        if recorded != planned:
            raise PlanMismatch(
                f"the releases recorded in the first {epochs_done} epochs differ from the run's plan "
                f"(recorded {_first_difference(recorded, planned)}); the run stops before reporting an epsilon "
                "it did not plan: this is a bug in crepe, please report it"
            )

    def line(self) -> str:
        """sigma and the schedule, said before the first epoch (and by --dry-run)."""
        cfg = self.cfg
        per = (f" per user of at most {self.max_per_user} examples" if cfg.target_unit == "user" and not self.user_level
               else "")
        solved = f" (solved for --target-epsilon {cfg.target_epsilon:g}{per})" if cfg.target_epsilon is not None else ""
        rounds = sum(self.redraws(e) for e in range(self.epochs))
        select = f", select sigma {cfg.select_sigma:.4g}" if any(r.kind == "select" for r in self.round_releases()) else ""
        q = self.sample_rate
        size = f"{self.set_size:g}" if float(self.set_size).is_integer() else f"{self.set_size:.6g}"
        per = (f"users per round {cfg.users_per_round}, U = {size}" if self.user_level
               else f"B = {cfg.batch_size}, |S| = {size}")
        return (f"crepe train: sigma {cfg.sigma:.4g}{solved}{select}; {self.epochs} epochs of {steps_per_epoch(q)} "
                f"{'rounds' if self.user_level else 'steps'} at q = {q:.4g} ({per}), {rounds} selection "
                f"round{'s' * (rounds != 1)}")

    # ---- what the run's outputs say about it
    @property
    def labels_public(self) -> bool:
        """The choice reads the true labels and class sizes without noise: epsilon treats them as public."""
        return self.cfg.dp and self.method.reads_labels(self.cfg)

    @property
    def secret_size(self) -> bool:
        """The realised size of the set is a secret: figures whose denominator gives it back are withheld
        (and the examples of a user-level round: its sampled users' sizes)."""
        return self.method.secret_size(self.cfg) or self.user_level

    @property
    def private_selection(self) -> bool | None:
        """Every selection release is noisy; None for a method whose rounds release nothing."""
        chosen = [r for r in self.round_releases() if not r.marker]
        return all(r.noise_multiplier > 0 for r in chosen) if chosen else None


def _first_difference(recorded: Ledger, planned: Ledger) -> str:
    for i, (a, b) in enumerate(zip(recorded, planned)):
        if a != b:
            return f"{a} where the plan has {b}, entry {i}"
    return f"{len(recorded)} entries where the plan has {len(planned)}"


def class_counts(labels: Any) -> list[int]:
    """Examples per class present, in label order (numpy or torch labels)."""
    import numpy as np

    return [int(c) for c in np.unique(np.asarray(labels), return_counts=True)[1]]


def resolved_threads(cfg: TrainConfig) -> TrainConfig:
    import torch

    return cfg if cfg.threads is not None else replace(cfg, threads=torch.get_num_threads())


def new_run_config(given: dict[str, Any]) -> TrainConfig:
    """The resolved config of a new run (flags over preset over defaults), checked before anything
    heavy loads: the method and the options it reads, the data source and subset sizes. sigma stays
    None under --target-epsilon: `Plan.of` solves it from the class counts."""
    from crepe import data

    method = given.get("method", TrainConfig.method)
    methods.get(method)  # a UsageError naming the valid methods
    methods.check_given(method, given)
    cfg = TrainConfig.from_flags(given).resolve()
    methods.get(cfg.method).check(cfg)
    if cfg.dataset == USER:  # crepe.train: the caller's model and data
        return cfg
    src = data.resolve_source(cfg.dataset, cfg.data_dir)  # fail before anything is written or torch loads
    data.check_subsets(src, train_subset=cfg.train_subset, test_subset=cfg.test_subset)
    if cfg.data_dir is not None:
        cfg = replace(cfg, data_dir=str(Path(cfg.data_dir).resolve()))  # resume works from any folder
    return cfg


def check_reachable(given: dict[str, Any],
                    sizes_of: Callable[[TrainConfig], tuple[Sequence[int], int | None, int | None]]) -> None:
    """Unreachable (with the smallest reachable epsilon) if `crepe train` would refuse this run's
    target; `sizes_of(cfg)` gives its class counts, its users U and their public k (None without users)."""
    cfg = new_run_config(given)
    if cfg.sigma is None:
        counts, users, k = sizes_of(cfg)
        Plan.of(cfg, counts=counts, users=users, max_per_user=k)

