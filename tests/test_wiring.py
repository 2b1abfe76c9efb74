"""What a run applies must equal what its ledger accounts (issue 14).

A harness wraps the real training loop's pieces and records what actually
happens -- the noise added at each noisy step (its empirical standard
deviation over ~26k coordinates), the divisor of each step, the batch sizes,
the arrays handed to selection -- and checks it release by release against
the ledger the run published and, epoch by epoch, against its plan
(`Plan.epoch_releases`). sigma != sigma_sel and C != C_sel, so a swap is
visible. Under adaptive clipping it also records each step's count noise,
unclipped count and the share handed to the clip rule: one joint release per
step, two noises. That the releases a run records are its plan's is checked by
the loop itself after every epoch (`Plan.check`), so it is not repeated here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from crepe import _core, data  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.config import TrainConfig
from crepe.dp import optimizer as optimizer_mod
from crepe.dp.clipping import ClipRule
from crepe.dp.optimizer import DPOptimizer
from crepe.dp.sampling import steps_per_epoch
from crepe.smallsets import proxies as proxies_mod, sets as sets_mod
from crepe.training import epoch as epoch_mod, loop, rundir
from crepe.training.plan import Plan, class_counts

SIGMA, SIGMA_SEL, C, C_SEL = 1.7, 2.9, 0.6, 1.3


@dataclass
class Trace:
    noise_std: list[float] = field(default_factory=list)  # per noisy step: std of (grad - clipped sum)
    divisor: list[float] = field(default_factory=list)  # per noisy step: what the noisy sum was divided by
    batch: list[int] = field(default_factory=list)  # per noisy step: examples in the batch
    clip: list[float] = field(default_factory=list)  # per noisy step: the C the noise was scaled by
    count_noise: list[float] = field(default_factory=list)  # per adaptive step: the noise added to the count
    unclipped: list[float] = field(default_factory=list)  # per adaptive step: the clean count
    share: list[float] = field(default_factory=list)  # per adaptive step: what the clip rule was handed
    rates: list[tuple[int, float, int]] = field(default_factory=list)  # per epoch: (m, q, steps) of the sampler
    clean: list[torch.Tensor] = field(default_factory=list)  # per selection round: clean proxies
    handed: list[torch.Tensor] = field(default_factory=list)  # per round: what CRAIG received
    sets: list = field(default_factory=list)  # per round: the chosen set


def traced_run(monkeypatch: pytest.MonkeyPatch, cfg: TrainConfig, out: Path, *, garbage_clean: bool = False,
               fixed_noisy: torch.Tensor | None = None) -> tuple[dict, Trace]:
    t = Trace()
    add_noise, scale_grad, pre_step = DPOptimizer.add_noise, DPOptimizer.scale_grad, DPOptimizer.pre_step
    after_noise, count_noise, update = DPOptimizer._after_noise, optimizer_mod._generate_noise, ClipRule.update

    def traced_add_noise(self):  # type: ignore[no-untyped-def]
        summed = [p.summed_grad.detach().clone() for p in self.params]
        add_noise(self)
        noise = torch.cat([(p.grad.detach() - s).reshape(-1) for p, s in zip(self.params, summed)])
        t.noise_std.append(float(noise.std()))
        t.clip.append(self.max_grad_norm)

    def traced_after_noise(self):  # type: ignore[no-untyped-def]
        if self.clip_rule.adaptive:
            t.unclipped.append(self._unclipped)
        return after_noise(self)

    def traced_count_noise(*a, **k):  # type: ignore[no-untyped-def]
        noise = count_noise(*a, **k)  # crepe's optimizer draws only the count's noise itself
        t.count_noise.append(float(noise))
        return noise

    def traced_update(self, share):  # type: ignore[no-untyped-def]
        t.share.append(share)
        return update(self, share)

    def traced_scale_grad(self):  # type: ignore[no-untyped-def]
        before = torch.cat([p.grad.detach().reshape(-1) for p in self.params])
        scale_grad(self)
        after = torch.cat([p.grad.detach().reshape(-1) for p in self.params])
        i = int(before.abs().argmax())
        t.divisor.append(float(before[i] / after[i]))

    def traced_pre_step(self, closure=None):  # type: ignore[no-untyped-def]
        t.batch.append(len(self.grad_samples[0]))
        return pre_step(self, closure)

    monkeypatch.setattr(DPOptimizer, "add_noise", traced_add_noise)
    monkeypatch.setattr(DPOptimizer, "scale_grad", traced_scale_grad)
    monkeypatch.setattr(DPOptimizer, "pre_step", traced_pre_step)
    monkeypatch.setattr(DPOptimizer, "_after_noise", traced_after_noise)
    monkeypatch.setattr(optimizer_mod, "_generate_noise", traced_count_noise)
    monkeypatch.setattr(ClipRule, "update", traced_update)

    batches = epoch_mod.block_batches

    def traced_batches(m, *, sample_rate, steps, **k):  # type: ignore[no-untyped-def]
        t.rates.append((m, sample_rate, steps))
        return batches(m, sample_rate=sample_rate, steps=steps, **k)

    monkeypatch.setattr(epoch_mod, "block_batches", traced_batches)
    proxies, privatise, craig = proxies_mod.compute_proxies, proxies_mod.privatise, sets_mod.craig_coreset

    def traced_proxies(*a, **k):  # type: ignore[no-untyped-def]
        clean = proxies(*a, **k)
        if garbage_clean:
            clean = torch.randn(clean.shape) * 1e3
        t.clean.append(clean.clone())
        return clean

    def traced_privatise(*a, **k):  # type: ignore[no-untyped-def]
        return privatise(*a, **k) if fixed_noisy is None else fixed_noisy.clone()

    def traced_craig(noisy, *a, **k):  # type: ignore[no-untyped-def]
        t.handed.append(noisy.clone())
        s = craig(noisy, *a, **k)
        t.sets.append(s)
        return s

    monkeypatch.setattr(proxies_mod, "compute_proxies", traced_proxies)  # craig's choose imports them at call time
    monkeypatch.setattr(proxies_mod, "privatise", traced_privatise)
    monkeypatch.setattr(sets_mod, "craig_coreset", traced_craig)
    assert rundir.prepare_out(cfg, out, {}) == "new"
    summary = loop.run(cfg, out, log=lambda s: None)
    return summary, t


def config(data_root: Path, **kw) -> TrainConfig:
    base = dict(
        dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50, epochs=3, select_every=2,
        batch_size=10, sigma=SIGMA, select_sigma=SIGMA_SEL, max_grad_norm=C, select_clip=C_SEL, accountant="prv",
        noise="reproducible", threads=1,
    )
    base.update(kw)
    return TrainConfig(**base).resolve()


def plan_of(cfg: TrainConfig) -> Plan:
    """The run's plan, from the class counts of its training split (as the loop makes it)."""
    ds = data.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset, test_subset=cfg.test_subset)
    return Plan.of(cfg, counts=class_counts(ds.y_train))


def planned(plan: Plan, kind: str) -> list[list]:
    """Per epoch: the releases of `kind` the plan makes in it, one per mechanism (steps unrolled)."""
    return [[r for r in plan.epoch_releases(e) if r.kind == kind for _ in range(r.steps)] for e in range(plan.epochs)]


@pytest.fixture(scope="module")
def craig_run(data_root, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        cfg = config(data_root)
        summary, t = traced_run(mp, cfg, tmp_path_factory.mktemp("wiring") / "run")
        yield summary, t, plan_of(cfg)
    finally:
        mp.undo()


def test_every_noisy_step_applies_the_accounted_sigma_C(craig_run) -> None:
    summary, t, plan = craig_run
    train = [e for e in summary["ledger"] if e["kind"] == "train"]
    assert sum(e["steps"] for e in train) == len(t.noise_std) == 3 * steps_per_epoch(10 / 30)
    expected = [e["noise_multiplier"] * C for e in train for _ in range(e["steps"])]
    np.testing.assert_allclose(t.noise_std, expected, rtol=0.03)  # ~26k coordinates: 3% is > 5 standard errors
    # epoch by epoch: the steps the sampler ran in each epoch applied that epoch's planned noise
    per_epoch = planned(plan, "train")
    assert [steps for _, _, steps in t.rates] == [len(rs) for rs in per_epoch]
    np.testing.assert_allclose(t.noise_std, [r.noise_multiplier * C for rs in per_epoch for r in rs], rtol=0.03)


def test_the_sampler_uses_the_accounted_rate_and_step_count(craig_run) -> None:
    summary, t, plan = craig_run
    train = [e for e in summary["ledger"] if e["kind"] == "train"]
    assert {e["sample_rate"] for e in train} == {10 / 30}
    assert t.rates == [(30, 10 / 30, 3)] * 3  # m = |S|, q = B/m, int(1/q) steps, every epoch
    assert [(q, steps) for _, q, steps in t.rates] == [
        (r.sample_rate, r.steps) for e in range(plan.epochs) for r in plan.epoch_releases(e) if r.kind == "train"]


def test_clip_then_scale_divides_by_q_sum_w(craig_run) -> None:
    summary, t, _ = craig_run
    q = 10 / 30
    # The set of each epoch: epochs 0 and 1 use round 1's set, epoch 2 round 2's.
    per_epoch = [t.sets[0], t.sets[0], t.sets[1]]
    expected = [q * float((s.gamma / s.gamma.max()).sum()) for s in per_epoch for _ in range(3)]
    assert all(not math.isclose(e, q * 30) for e in expected)  # q m differs: the check has power
    np.testing.assert_allclose(t.divisor, expected, rtol=1e-5)


def test_selection_receives_clipped_proxies_plus_accounted_noise(craig_run) -> None:
    summary, t, plan = craig_run
    sel = [e for e in summary["ledger"] if e["kind"] == "select"]
    assert sum(e["steps"] for e in sel) == len(t.handed) == 2  # rounds at epochs 0 and 2
    assert all(e["sample_rate"] == 1.0 for e in sel)
    rounds = planned(plan, "select")  # the plan's rounds: at epochs 0 and 2, one each, as observed
    assert [len(rs) for rs in rounds] == [1, 0, 1]
    assert [(r.noise_multiplier, r.sample_rate) for rs in rounds for r in rs] == [(SIGMA_SEL, 1.0)] * len(t.handed)
    for clean, noisy, e in zip(t.clean, t.handed, [e for e in sel for _ in range(e["steps"])]):
        norms = clean.norm(dim=1, keepdim=True)
        clipped = clean * (C_SEL / norms.clamp(min=1e-12)).clamp(max=1.0)
        residual = (noisy - clipped).reshape(-1)
        assert float(residual.std()) == pytest.approx(e["noise_multiplier"] * C_SEL, rel=0.05)
        assert abs(float(residual.mean())) < 0.1 * C_SEL * SIGMA_SEL
    assert summary["eps_select"] > 0


def test_epsilon_equals_an_independent_prv_computation_of_the_schedule(craig_run) -> None:
    from opacus.accountants import PRVAccountant

    summary, _, _ = craig_run
    acc = PRVAccountant()  # written from the flags alone: 2 rounds at q = 1, 3 epochs x 3 steps at q = 1/3
    acc.history = [(SIGMA_SEL, 1.0, 2), (SIGMA, 10 / 30, 9)]
    with np.errstate(divide="ignore"):
        expected = acc.get_epsilon(delta=1e-5)
    assert summary["eps_total"] == pytest.approx(expected, rel=1e-6)


def test_clean_proxies_never_reach_selection(data_root, tmp_path, monkeypatch) -> None:
    """With the privatised proxies fixed, replacing the clean ones by garbage changes nothing."""
    cfg = config(data_root, epochs=1)
    fixed = torch.randn(300, 10, generator=torch.Generator().manual_seed(3))
    _, real = traced_run(monkeypatch, cfg, tmp_path / "a", fixed_noisy=fixed)
    _, junk = traced_run(monkeypatch, cfg, tmp_path / "b", garbage_clean=True, fixed_noisy=fixed)
    assert not torch.equal(real.clean[0], junk.clean[0])
    np.testing.assert_array_equal(real.sets[0].indices, junk.sets[0].indices)
    np.testing.assert_array_equal(real.sets[0].gamma, junk.sets[0].gamma)


def test_empty_poisson_batches_still_take_a_recorded_noisy_step(data_root, tmp_path, monkeypatch) -> None:
    cfg = config(data_root, method="random", batch_size=1, epochs=1)  # |S| = 30, q = 1/30: ~36% empty
    summary, t = traced_run(monkeypatch, cfg, tmp_path / "run")
    train = [e for e in summary["ledger"] if e["kind"] == "train"]
    assert sum(e["steps"] for e in train) == len(t.noise_std) == len(t.batch) == 30
    assert [r.noise_multiplier for rs in planned(plan_of(cfg), "train") for r in rs] == [SIGMA] * 30
    empties = [i for i, b in enumerate(t.batch) if b == 0]
    assert len(empties) >= 3
    for i in empties:
        assert t.noise_std[i] == pytest.approx(SIGMA * C, rel=0.03)
        assert t.divisor[i] == pytest.approx(1 / 30 * 30, rel=1e-5)


def test_weight_then_clip_divides_by_q_m(data_root, tmp_path, monkeypatch) -> None:
    cfg = config(data_root, weights="weight-then-clip", epochs=1)
    _, t = traced_run(monkeypatch, cfg, tmp_path / "run")
    np.testing.assert_allclose(t.divisor, [10 / 30 * 30] * 3, rtol=1e-5)


def test_adaptive_clipping_is_one_joint_release_per_step_with_both_noises_applied(data_root, tmp_path, monkeypatch) -> None:
    """The count and the gradient sum come from the same Poisson batch: the ledger holds ONE release per
    step, at the joint multiplier (sigma^-2 + sigma_b^-2)^(-1/2), while the run applies noise sigma C_t
    to the sum and sigma_b to the count, and divides the count by q m, never by the realised batch."""
    from opacus.accountants import RDPAccountant

    cfg = config(data_root, method="full", clipping="adaptive", accountant="rdp", epochs=3, train_subset=300)
    summary, t = traced_run(monkeypatch, cfg, tmp_path / "run")
    steps, q, sigma_b = 3 * 30, 10 / 300, 10 / 20  # 3 epochs of int(1/q) steps; sigma_b = B/20
    joint = 1 / math.sqrt((C / (SIGMA * C)) ** 2 + (1 / sigma_b) ** 2)  # sensitivity (C, 1) against noise (sigma C, sigma_b)
    assert [e["kind"] for e in summary["ledger"]] == ["train"]
    assert summary["ledger"][0]["noise_multiplier"] == pytest.approx(joint, rel=1e-12)
    assert summary["ledger"][0]["sample_rate"] == q and summary["ledger"][0]["steps"] == steps
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=joint, sample_rate=q)
    assert summary["eps_total"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)

    # The gradient noise of each step is sigma times that step's C (which moves), not the joint multiplier.
    assert len(t.noise_std) == len(t.clip) == steps and len(set(t.clip)) > 1
    np.testing.assert_allclose(t.noise_std, [SIGMA * c for c in t.clip], rtol=0.03)
    # the plan releases each epoch's steps at the joint multiplier, while they applied sigma C_t (and sigma_b)
    per_epoch = planned(plan_of(cfg), "train")
    assert [steps for _, _, steps in t.rates] == [len(rs) for rs in per_epoch] == [30] * 3
    assert all(r.noise_multiplier == pytest.approx(joint, rel=1e-12) for rs in per_epoch for r in rs)
    assert rundir.read_metrics(tmp_path / "run")[-1]["clip_norm"] != C
    # The count noise has std sigma_b (90 draws: 25% is > 3 standard errors).
    assert len(t.count_noise) == steps
    assert float(np.std(t.count_noise, ddof=1)) == pytest.approx(sigma_b, rel=0.25)
    assert abs(float(np.mean(t.count_noise))) < 4 * sigma_b / math.sqrt(steps)
    # The clip rule gets (count + noise) / (q m) with q m = B = 10, public; the realised batches differ.
    expected = [(u + z) / (q * 300) for u, z in zip(t.unclipped, t.count_noise)]
    np.testing.assert_allclose(t.share, expected, rtol=1e-12)
    assert sum(b != 10 for b in t.batch) >= steps // 2  # so dividing by the realised size would show
