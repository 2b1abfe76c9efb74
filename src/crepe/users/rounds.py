"""One epoch of a user-level trainer: int(1/q_u) rounds (users/algorithms.py: what each computes).

A round draws users by Poisson sampling at q_u (user u in sampling block
u mod BLOCKS, each block on its own secret generator, as DP-SGD's examples:
dp/sampling.py; it reads user ids only), forms its units (a user; for
dp-fedemb, virtual clients of K users in the order of a secret permutation of
the sampled ids by the "sampler" generator, never of their data), computes one
update per unit and hands the updates to the DP optimizer as rows of
`grad_sample`: each row is clipped to C, the sum gets N(0, (sigma C)^2), and
the server optimizer (--optimizer, --lr, --momentum) steps with it divided by
the expected number of units. A round that samples nobody is still a noisy
step. Local training (shuffles, a fresh dp-fedemb head) draws from a generator
per unit, keyed by 256 bits of the run's "select" generator, which method full
never uses, so the sampler's streams never depend on the data.

Over torchrun ranks (dp/distributed.py) each rank draws its own blocks' users;
the ranks share the union, form the same units, and rank r trains units r, r +
W, ...; the DP optimizer sums their clipped updates and rank 0 adds the noise.
Every draw is the one-process draw: a W-rank round is the 1-rank round.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from crepe.config import TrainConfig
from crepe.dp.distributed import SINGLE, World
from crepe.dp.optimizer import Optimizer
from crepe.dp.sampling import block_batches
from crepe.dp.secret_rng import KEY_BYTES, keyed_generator


@dataclass(frozen=True)
class Users:
    """Each user's examples: `order` (example indices sorted by user, stable) cut at `starts` (U + 1)."""

    order: torch.Tensor
    starts: torch.Tensor

    @classmethod
    def of(cls, user_ids: torch.Tensor) -> Users:
        counts = torch.bincount(user_ids)
        starts = torch.zeros(len(counts) + 1, dtype=torch.int64)
        starts[1:] = torch.cumsum(counts, 0)
        return cls(torch.argsort(user_ids, stable=True), starts)

    @property
    def count(self) -> int:
        return len(self.starts) - 1

    def examples(self, users: torch.Tensor) -> torch.Tensor:
        """The example indices of `users`, user by user."""
        return torch.cat([self.order[self.starts[u] : self.starts[u + 1]] for u in users.tolist()])


@dataclass
class RoundStats:
    rounds: int = 0
    units: int = 0


def units_per_round(cfg: TrainConfig) -> int:
    """Users per unit: K virtual-client members for dp-fedemb, else 1."""
    return cfg.virtual_client_size if cfg.algorithm == "dp-fedemb" else 1


def unit_parameters(model: nn.Module, cfg: TrainConfig, head: nn.Linear | None) -> list[tuple[str, nn.Parameter]]:
    """The parameters a unit's update covers (and the server optimizer steps): all of them, or for
    dp-fedemb all but the head's (it stays on the virtual client)."""
    skip = {id(p) for p in head.parameters()} if cfg.algorithm == "dp-fedemb" and head is not None else set()
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in skip]


def user_epoch(
    model: nn.Module,
    opt: Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    users: Users,
    *,
    cfg: TrainConfig,
    head: nn.Linear | None,
    sample_rate: float,
    steps: int,
    generators: dict[str, torch.Generator],
    dp: bool,
    world: World = SINGLE,
    progress: Callable[[int, int], None] = lambda i, total: None,
) -> RoundStats:
    """`generators`: the run's ("sampler", "select" and the sampling blocks')."""
    named = unit_parameters(model, cfg, head)
    k = units_per_round(cfg)
    expected_units = sample_rate * users.count / k  # public: the noisy sum is divided by it
    opt.start_set(sample_rate=sample_rate, normaliser=expected_units, expected_examples=expected_units)
    st = RoundStats()
    sampler, local = generators["sampler"], generators["select"]
    draws = block_batches(users.count, sample_rate=sample_rate, steps=steps, generators=generators, blocks=world.blocks())
    for i, own in enumerate(draws, 1):
        sampled = torch.sort(torch.cat(world.all_gather_object(own))).values  # the round's users, on every rank
        if k > 1:  # virtual clients: a secret permutation of the sampled ids, cut into groups of K
            sampled = sampled[torch.randperm(len(sampled), generator=sampler)]
        units = [sampled[j : j + k] for j in range(0, len(sampled), k)]
        keys = [torch.randint(0, 2**32, (KEY_BYTES // 4,), generator=local, dtype=torch.int64) for _ in units]
        mine = range(world.rank, len(units), world.size)
        if not mine:
            opt.empty_batch()
        else:
            rows = [update(model, named, x[idx], y[idx], cfg=cfg, head=head, generator=unit_generator(keys[j]))
                    for j, idx in ((j, users.examples(units[j])) for j in mine)]
            for j, (_, p) in enumerate(named):
                column = torch.stack([row[j] for row in rows])  # (units, *p.shape)
                if dp:
                    p.grad_sample = column
                else:
                    p.grad = column.sum(0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        st.rounds += 1
        st.units += len(units)
        progress(i, steps)
    return st


def unit_generator(words: torch.Tensor) -> torch.Generator:
    """A unit's local-training generator, keyed by 256 bits of the run's "select" generator."""
    return keyed_generator(b"".join(int(w).to_bytes(4, "little") for w in words), "local")


def update(model: nn.Module, named: list[tuple[str, nn.Parameter]], x: torch.Tensor, y: torch.Tensor, *,
           cfg: TrainConfig, head: nn.Linear | None, generator: torch.Generator) -> list[torch.Tensor]:
    """One unit's update, per parameter of `named` (what the server treats as a gradient); a unit
    without examples (a null user) updates nothing."""
    if len(y) == 0:
        return [torch.zeros_like(p) for _, p in named]
    if cfg.algorithm == "dp-sgd":  # the gradient of the user's mean loss
        loss = nn.functional.cross_entropy(model(x), y)
        return [g.detach() for g in torch.autograd.grad(loss, [p for _, p in named])]
    local = local_training(model, x, y, cfg=cfg, head=head if cfg.algorithm == "dp-fedemb" else None,
                           generator=generator)
    return [(p - local[n]).detach() for n, p in named]  # minus the local delta


def local_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                   head: nn.Linear | None, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The parameters after local_epochs of SGD (minibatches of local_batch_size, at most
    max_local_steps; heavy-ball momentum local_momentum, from zero, as torch.optim.SGD) from the global
    model; with `head`, that layer starts afresh and steps at head_lr_scale x local_lr, alone (the rest
    frozen) for the first head_warm_steps steps."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    head_names = set()
    if head is not None:
        head_names = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
        fresh_head(params, head_names, generator)
    lrs = {n: cfg.local_lr * (cfg.head_lr_scale if n in head_names else 1.0) for n in params}
    velocity: dict[str, torch.Tensor] = {}
    steps, b = 0, cfg.local_batch_size
    for _ in range(cfg.local_epochs):
        perm = torch.randperm(len(y), generator=generator)
        for s in range(0, len(y), b):
            if cfg.max_local_steps is not None and steps >= cfg.max_local_steps:
                return params
            idx = perm[s : s + b]
            loss = nn.functional.cross_entropy(functional_call(model, {**params, **buffers}, (x[idx],)), y[idx])
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            warm = steps < cfg.head_warm_steps
            with torch.no_grad():
                for (n, t), g in zip(params.items(), grads):
                    if g is None or (warm and n not in head_names):
                        continue
                    if cfg.local_momentum:
                        g = velocity[n].mul_(cfg.local_momentum).add_(g) if n in velocity else g.clone()
                        velocity[n] = g
                    t -= lrs[n] * g
            steps += 1
    return params


def fresh_head(params: dict[str, torch.Tensor], names: set[str], generator: torch.Generator) -> None:
    """PyTorch's default nn.Linear initialisation of the head's weight and bias, drawn from `generator`."""
    weight = next(params[n] for n in names if params[n].ndim == 2)
    bound = 1.0 / math.sqrt(weight.shape[1])  # kaiming_uniform(a = sqrt 5) and the bias both give 1/sqrt(fan_in)
    with torch.no_grad():
        for n in sorted(names):
            params[n].uniform_(-bound, bound, generator=generator)
