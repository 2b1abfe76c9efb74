"""One DP optimizer for every clip rule and weighting, and its non-private twin.

Per step (DESIGN.md sections 3 and 7), for the examples i of a Poisson batch:
  f_i = clip_rule(|g_i|) * w_i            (w_i in [0, 1]: coreset weight, 1 otherwise)
  g   = (sum_i f_i g_i + N(0, (sigma C)^2 I)) / normaliser
with normaliser q * sum_{j in S} w_j (the expected weighted batch size), a
public quantity. An empty batch is still a noisy step. Every step reports its
release (a typed `Release`) through `on_release` from Opacus' step hook, so
no step can run without entering the ledger. Under
adaptive clipping the step also counts its unclipped examples, plus
N(0, sigma_b^2), divided by the expected batch size q m (public); gradient and
count share the batch, so the step is ONE release at the joint multiplier
(dp/clipping.py `joint_noise`), while the noise applied stays sigma C_t
on the sum and sigma_b on the count.

A user-level run (users/rounds.py) hands it one row per user (or virtual
client) in `grad_sample`: the same clip, noise and normaliser, released per
`unit` "user" at noise multiplier sigma / sensitivity (sensitivity 2 in units
of C for a user of a virtual client of K > 1 users).

Over the ranks of a distributed run (`world`, dp/distributed.py) each rank clips
its own local batch; the clipped sums and the unclipped counts are summed over the
ranks; rank 0 alone draws the noise (and the count's) and its noisy sum is the one
every rank steps with: noise added once, one release per step, as one process.
Canaries live on rank 0 only (added to its sum before the ranks' are summed).

`PlainOptimizer` gives non-private training the same interface (`Optimizer`:
weights are applied to the loss by the caller; no clipping, no noise;
releases recorded with noise 0, which makes epsilon infinite). Coreset
weights reach a step as `step(sample_weights=w)`, (b,) in [0, 1].

Audit canaries (crepe/audit, `--audit-canaries`): when `canaries` is set, each
step adds the sampled canaries' contributions C e_j to the clipped sum before
the noise (`Canaries.inject`: one more example of the mechanism each, drawn at
the same q) and hands the noisy sum to them after it (`Canaries.observe`).

Pruning masks (dp/pruning.py, `--sparsity`; `set_masks`): every per-example
gradient is multiplied by its parameter's mask before the norms are taken, the
noisy sum after the noise (a pruned coordinate gets neither), and the weights
after the step, so pruned weights stay exactly zero. Each DP step also keeps
the norm of its clipped sum for the epoch's noise-to-signal ratio
sigma C sqrt(d_eff) / |sum| (`take_noise_to_signal`: computed from the clipped
private gradients, not covered by epsilon).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from opacus.optimizers import DPOptimizer as OpacusDPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed

from crepe.dp import pruning
from crepe.dp.clipping import ClipRule, joint_noise
from crepe.dp.distributed import SINGLE, World
from crepe.privacy.ledger import Release

OnRelease = Callable[[Release], None]


class Canaries(Protocol):
    """What the DP optimizer calls of audit canaries (crepe.audit.canaries.WhiteBox)."""

    def inject(self, params: list[torch.Tensor], *, max_grad_norm: float, sample_rate: float,
               sensitivity: float = 1.0) -> int:
        """Add the canaries sampled this step (sensitivity x C e_j each) to each p.summed_grad; how many."""
        ...

    def observe(self, params: list[torch.Tensor]) -> None:
        """Read the released noisy sums (p.grad before scaling) at the canaries' coordinates."""
        ...


class Optimizer(Protocol):
    """What one epoch (training/epoch.py) needs of an optimizer, DP or not."""

    clip_rule: ClipRule | None

    def start_set(self, *, sample_rate: float, normaliser: float, expected_examples: float) -> None: ...
    def empty_batch(self) -> None: ...
    def step(self, sample_weights: torch.Tensor | None = None) -> Any: ...
    def zero_grad(self, set_to_none: bool = True) -> None: ...
    def set_masks(self, masks: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None: ...
    def take_noise_to_signal(self) -> float | None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DPOptimizer(OpacusDPOptimizer):
    """Opacus' DPOptimizer with factor = clip_rule x weight and releases reported per step."""

    def __init__(
        self,
        base: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        clip_rule: ClipRule,
        generator: torch.Generator | None,
        on_release: OnRelease,
        count_noise: float = 0.0,
        unit: str = "example",
        sensitivity: float = 1.0,
        world: World = SINGLE,
    ) -> None:
        super().__init__(
            base,
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip_rule.max_grad_norm,
            expected_batch_size=1,  # set by start_set()
            loss_reduction="mean",
            generator=generator,
        )
        self.clip_rule = clip_rule
        self.on_release = on_release
        self.count_noise = count_noise  # adaptive clipping: noise std sigma_b of the unclipped count
        self.unit = unit  # what one row of grad_sample belongs to: an example, or a user's (a virtual client's) update
        self.sensitivity = sensitivity  # one unit's sensitivity in units of C (2: a user of a virtual client of K > 1)
        self.world = world
        self.sample_weights: torch.Tensor | None = None
        self.sample_rate = 1.0
        self.expected_examples = 1.0
        self._unclipped = 0.0
        self.canaries: Canaries | None = None  # audit canaries (crepe/audit), set by the training loop
        self.masks: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # pruning (set_masks)
        self._d_eff = pruning.effective_dimension(self.params, [])  # the coordinates the noise lives in
        self._ratios: list[float] = []  # noise-to-signal of this epoch's steps
        self.attach_step_hook(lambda opt: self._after_noise())

    def set_masks(self, masks: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        """Prune: (parameter, bool mask) pairs over the parameters this optimizer steps."""
        ids = {id(p) for p in self.params}
        if any(id(p) not in ids for p, _ in masks):
            raise ValueError("a mask names a parameter this optimizer does not step")
        self.masks = masks
        self._d_eff = pruning.effective_dimension(self.params, masks)

    def take_noise_to_signal(self) -> float | None:
        """The mean noise-to-signal ratio of the steps since the last call (None if none stepped)."""
        ratios, self._ratios = self._ratios, []
        finite = [r for r in ratios if r != float("inf")]
        return sum(finite) / len(finite) if finite else None

    def start_set(self, *, sample_rate: float, normaliser: float, expected_examples: float) -> None:
        """Before the steps over a (new) training set: q, q * sum(w), and q * m."""
        self.sample_rate = sample_rate
        self.expected_batch_size = normaliser  # Opacus divides the noisy sum by it
        self.expected_examples = expected_examples

    def empty_batch(self) -> None:
        """Prepare a step for a batch that drew no example: pure noise, still a release."""
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)

    def step(self, sample_weights: torch.Tensor | None = None, closure: Callable[[], float] | None = None) -> Any:
        """One noisy step; `sample_weights` (b,) in [0, 1] multiply the batch's clip factors."""
        self.sample_weights = sample_weights
        try:
            return super().step(closure)
        finally:
            self.sample_weights = None
            _mask_weights(self.masks)

    def per_example_norms(self) -> torch.Tensor:
        grads = self.grad_samples
        return torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in grads], dim=1).norm(2, dim=1)

    def contribution_factors(self) -> torch.Tensor:
        """(B,) f_i such that example i adds f_i g_i to the sum; |f_i g_i| <= C."""
        if len(self.grad_samples[0]) == 0:
            return torch.zeros((0,), device=self.grad_samples[0].device)
        norms = self.per_example_norms()
        factor = self.clip_rule.factor(norms)
        self._unclipped = float((norms <= self.clip_rule.max_grad_norm).sum())
        if self.sample_weights is not None:
            w = self.sample_weights.to(factor.device, factor.dtype)
            if w.shape != factor.shape:
                raise ValueError(f"sample_weights has shape {tuple(w.shape)}, batch is {tuple(factor.shape)}")
            if bool((w < 0).any()) or bool((w > 1).any()):
                raise ValueError("sample_weights must lie in [0, 1]: a weight above 1 would raise sensitivity")
            factor = factor * w
        return factor

    def clip_and_accumulate(self) -> None:
        self._unclipped = 0.0
        self.max_grad_norm = self.clip_rule.max_grad_norm  # the noise std below is sigma times this C
        for p, m in self.masks:  # a pruned coordinate counts in no norm and no sum
            p.grad_sample = p.grad_sample * m
        factor = self.contribution_factors()
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            gs = self._get_flat_grad_sample(p).to(p.dtype)  # (B, *p.shape)
            grad = torch.einsum("i,i...", factor.to(gs.device, p.dtype), gs)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)
        if self.canaries is not None:  # before the noise: a sampled canary is one more clipped example
            sampled = self.canaries.inject(self.params, max_grad_norm=self.max_grad_norm, sample_rate=self.sample_rate,
                                           sensitivity=self.sensitivity)
            self._unclipped += sampled  # |C e_j| = C: unclipped, as a real example of norm C counts
        if self.world.size > 1:  # the sums over all ranks' local batches
            count = torch.tensor([self._unclipped], dtype=torch.float64)
            self.world.all_reduce_([p.summed_grad for p in self.params] + [count])
            self._unclipped = float(count[0])
        signal = float(torch.sqrt(sum((p.summed_grad.double() ** 2).sum() for p in self.params)))
        self._ratios.append(pruning.noise_to_signal(self.noise_multiplier, self.max_grad_norm, self._d_eff, signal))

    def add_noise(self) -> None:
        if self.world.writes:
            super().add_noise()
        else:  # rank 0's noisy sum arrives below
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                p.grad = p.summed_grad.clone().view_as(p)
                _mark_as_processed(p.summed_grad)
        self.world.broadcast_([p.grad for p in self.params])
        if self.canaries is not None:  # p.grad is the noisy sum here, not yet divided by the normaliser
            self.canaries.observe(self.params)
        for p, m in self.masks:  # the noise lives in the kept coordinates only
            p.grad.mul_(m)

    def release_noise(self) -> float:
        """The noise multiplier the ledger records for one step: sigma, or under adaptive clipping the
        joint multiplier of the gradient and the count drawn from the same batch."""
        if self.clip_rule.adaptive:
            return joint_noise(self.noise_multiplier, self.count_noise)
        return self.noise_multiplier / self.sensitivity

    def _after_noise(self) -> None:
        """Opacus' step hook: runs once per noisy step, after noise and scaling."""
        self.on_release(Release("train", self.release_noise(), self.sample_rate, unit=self.unit))
        base = self.original_optimizer
        if hasattr(base, "noise_variance"):  # DP-AdamBC: the noise variance per coordinate
            base.noise_variance = (self.noise_multiplier * self.max_grad_norm / self.expected_batch_size) ** 2
        if self.clip_rule.adaptive:  # the count is part of the release above
            noise = torch.zeros(1, dtype=torch.float64)
            if self.world.writes:  # rank 0 draws it, every rank uses it
                noise += float(_generate_noise(std=self.count_noise, reference=torch.zeros(()), generator=self.generator))
            self.world.broadcast_([noise])
            # divided by q m, never by the realised batch size (a secret)
            self.clip_rule.update((self._unclipped + float(noise)) / self.expected_examples)

    def state_dict(self):  # type: ignore[no-untyped-def]
        return {"base": self.original_optimizer.state_dict(), "max_grad_norm": self.clip_rule.max_grad_norm}

    def load_state_dict(self, state) -> None:  # type: ignore[no-untyped-def]
        self.original_optimizer.load_state_dict(state["base"])
        self.clip_rule.max_grad_norm = float(state["max_grad_norm"])


class PlainOptimizer:
    """Non-private training behind the DP optimizer's interface: the loss the caller
    backpropagates is summed over the batch; step() divides by the normaliser."""

    def __init__(self, base: torch.optim.Optimizer, *, on_release: OnRelease, unit: str = "example",
                 world: World = SINGLE) -> None:
        self.original_optimizer = base
        self.world = world
        self.on_release = on_release
        self.unit = unit
        self.clip_rule = None
        self.sample_rate = 1.0
        self.normaliser = 1.0
        self.masks: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def set_masks(self, masks: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        self.masks = masks

    def take_noise_to_signal(self) -> float | None:
        return None  # no noise

    def start_set(self, *, sample_rate: float, normaliser: float, expected_examples: float) -> None:
        self.sample_rate, self.normaliser = sample_rate, normaliser

    def empty_batch(self) -> None:
        pass  # no gradient: the base optimizer skips every parameter

    def step(self, sample_weights: torch.Tensor | None = None) -> None:
        """Weights were applied to the loss: `sample_weights` must be None here."""
        if sample_weights is not None:
            raise ValueError("non-private training weights the loss; the step takes no sample_weights")
        if self.world.size > 1:  # the gradient of the whole batch: summed over the ranks' local batches
            params = [p for g in self.original_optimizer.param_groups for p in g["params"] if p.requires_grad]
            has = torch.tensor([float(p.grad is not None) for p in params], dtype=torch.float64)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.world.all_reduce_([p.grad for p in params] + [has])
            for p, h in zip(params, has.tolist()):
                if h == 0:  # no rank's batch reached it: skipped, as in one process
                    p.grad = None
        for group in self.original_optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad /= self.normaliser
        for p, m in self.masks:
            if p.grad is not None:
                p.grad.mul_(m)
        self.original_optimizer.step()
        _mask_weights(self.masks)
        self.on_release(Release("train", 0.0, self.sample_rate, unit=self.unit))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):  # type: ignore[no-untyped-def]
        return {"base": self.original_optimizer.state_dict(), "max_grad_norm": None}

    def load_state_dict(self, state) -> None:  # type: ignore[no-untyped-def]
        self.original_optimizer.load_state_dict(state["base"])


def _mask_weights(masks: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
    """Pruned weights back to exactly zero after a step (their update is zero already: no gradient,
    no noise; this also holds under optimizers whose state could move them)."""
    with torch.no_grad():
        for p, m in masks:
            p.mul_(m)
