"""The DP optimizer against slow oracles: plain Opacus, NumPy clip factors, a NumPy DP-AdamBC.

Fixtures control per-example gradient norms exactly (a linear model whose
per-example gradients are set by hand), with norms below, at and above C.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer as OpacusDPOptimizer

from crepe.dp.clipping import make_clip_rule
from crepe.dp.optimizer import DPOptimizer
from crepe.dp.optimizers import AdamBC, make_base_optimizer
from crepe.dp.distributed import BLOCKS, World
from crepe.dp.sampling import block_batches, block_names, poisson_batches
from crepe.models import build_model
from crepe.dp.sampling import steps_per_epoch
from crepe.privacy.ledger import Ledger

C = 1.0
C_MID = 4.0  # the Opacus comparison's C: among the CNN fixture's per-example norms
NORMS = np.array([0.0, 0.25, 0.999, 1.0, 1.001, 2.0, 50.0])  # below, at and above C


def _opt(params, *, rule: str = "flat", sigma: float = 0.0, gen=None, ledger=None, lr: float = 1.0, base: str = "sgd"):
    ledger = Ledger() if ledger is None else ledger
    return DPOptimizer(
        make_base_optimizer(base, params, lr=lr),
        noise_multiplier=sigma,
        clip_rule=make_clip_rule(rule, max_grad_norm=C),
        generator=gen,
        on_release=ledger.record,
        count_noise=2.0,
    )


def _with_grad_samples(norms: np.ndarray, d: int = 6, seed: int = 0) -> tuple[torch.nn.Parameter, np.ndarray]:
    """A parameter whose per-example gradients have exactly the given norms (float64)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(len(norms), d))
    g = g / np.linalg.norm(g, axis=1, keepdims=True) * norms[:, None]
    p = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    p.grad_sample = torch.from_numpy(g.copy())
    return p, g


@pytest.mark.parametrize(
    ("rule", "oracle"),
    [
        ("flat", lambda n: np.minimum(1.0, C / (n + 1e-6))),
        ("automatic", lambda n: C / (n + 0.01)),
        ("adaptive", lambda n: np.minimum(1.0, C / (n + 1e-6))),
    ],
)
def test_clip_factor_equals_numpy_oracle_below_at_and_above_C(rule: str, oracle) -> None:
    p, g = _with_grad_samples(NORMS)
    opt = _opt([p], rule=rule)
    f = opt.contribution_factors().numpy()
    np.testing.assert_allclose(f, oracle(NORMS), rtol=1e-12, atol=0)
    assert np.all(f * NORMS <= C * (1 + 1e-12))  # sensitivity stays C
    if rule != "automatic":
        assert f[0] == 1.0 and f[1] == 1.0  # below C: untouched (a clamp above 1 would fail here)


@pytest.mark.parametrize("rule", ["flat", "automatic"])
def test_weighted_factor_is_rule_times_weight_and_stays_below_C(rule: str) -> None:
    p, g = _with_grad_samples(NORMS)
    opt = _opt([p], rule=rule)
    w = np.array([1.0, 0.5, 0.25, 1.0, 0.1, 0.9, 1.0])
    opt.sample_weights = torch.from_numpy(w)
    base = C / (NORMS + (0.01 if rule == "automatic" else 1e-6))
    base = base if rule == "automatic" else np.minimum(1.0, base)
    f = opt.contribution_factors().numpy()
    np.testing.assert_allclose(f, base * w, rtol=1e-12)
    opt.clip_and_accumulate()
    np.testing.assert_allclose(p.summed_grad.numpy(), (f[:, None] * g).sum(0), rtol=1e-12)
    assert np.all(np.linalg.norm(f[:, None] * g, axis=1) <= C * (1 + 1e-12))


def test_weights_above_one_are_refused() -> None:
    p, _ = _with_grad_samples(NORMS)
    opt = _opt([p])
    opt.sample_weights = torch.full((len(NORMS),), 1.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="raise sensitivity"):
        opt.contribution_factors()


def _cnn_batch(seed: int):
    torch.manual_seed(seed)
    model = build_model("cnn")
    x = torch.randn(16, 1, 28, 28) * torch.logspace(-2, 1, 16)[:, None, None, None]
    y = torch.randint(0, 10, (16,))
    return model, x, y


@pytest.mark.parametrize("seed", range(2))
def test_one_step_equals_opacus_dpoptimizer_bit_for_bit(seed: int) -> None:
    """Weights 1, flat clipping: crepe's step is Opacus' DPOptimizer step, same generator, same numbers."""
    results = []
    for which in ("crepe", "opacus"):
        model, x, y = _cnn_batch(seed)
        net = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        base = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        gen = torch.Generator().manual_seed(123)
        if which == "crepe":
            opt = DPOptimizer(base, noise_multiplier=1.3, clip_rule=make_clip_rule("flat", max_grad_norm=C_MID),
                              generator=gen, on_release=lambda *a: None)
            opt.start_set(sample_rate=0.1, normaliser=12.5, expected_examples=12.5)
        else:
            opt = OpacusDPOptimizer(base, noise_multiplier=1.3, max_grad_norm=C_MID, expected_batch_size=12.5,
                                    loss_reduction="mean", generator=gen)
        for _ in range(2):  # two steps: momentum state too
            torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
            norms = opt.per_example_norms() if which == "crepe" else None
            if norms is not None:  # the clamp and the clip both act: some norms below C, some above
                assert bool((norms < C_MID).any()) and bool((norms > C_MID).any()), norms
            opt.step()
            opt.zero_grad(set_to_none=True)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_empty_batch_is_a_noisy_step_with_std_sigma_C_over_normaliser_and_is_recorded() -> None:
    model, _, _ = _cnn_batch(0)
    GradSampleModule(model, batch_first=True, loss_reduction="sum")
    ledger = Ledger()
    opt = _opt(list(model.parameters()), sigma=2.0, gen=torch.Generator().manual_seed(0), ledger=ledger, lr=1.0)
    opt.start_set(sample_rate=0.01, normaliser=2.5, expected_examples=3.0)
    before = [p.detach().clone() for p in opt.params]
    opt.empty_batch()
    opt.step()
    upd = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, opt.params)])  # lr 1: update = -grad
    assert float(upd.std()) == pytest.approx(2.0 * C / 2.5, rel=0.03)
    assert abs(float(upd.mean())) < 0.05
    assert ledger.to_list() == [{"kind": "train", "noise_multiplier": 2.0, "sample_rate": 0.01, "steps": 1, "unit": "example"}]


def test_noiseless_step_is_sum_of_factor_times_gradient_over_normaliser() -> None:
    p, g = _with_grad_samples(NORMS)
    opt = _opt([p], lr=1.0)
    w = np.linspace(0.2, 1.0, len(NORMS))
    opt.start_set(sample_rate=0.5, normaliser=3.7, expected_examples=3.5)
    opt.step(sample_weights=torch.from_numpy(w))
    f = np.minimum(1.0, C / (NORMS + 1e-6)) * w
    np.testing.assert_allclose(-p.detach().numpy(), (f[:, None] * g).sum(0) / 3.7, rtol=1e-12)


def test_adaptive_clip_moves_C_geometrically_by_the_expected_batch_and_records_one_joint_release() -> None:
    p, _ = _with_grad_samples(NORMS)
    ledger = Ledger()
    gen = torch.Generator().manual_seed(7)
    opt = _opt([p], rule="adaptive", sigma=1.0, gen=gen, ledger=ledger)
    opt.start_set(sample_rate=0.2, normaliser=12.5, expected_examples=12.5)  # q m = 12.5; this batch drew 7
    opt.step()
    # The oracle draws the same noise: d gradient coordinates, then the count's.
    oracle_gen = torch.Generator().manual_seed(7)
    torch.normal(mean=0, std=1.0, size=(6,), generator=oracle_gen)
    count_noise = float(torch.normal(mean=0, std=2.0, size=(), generator=oracle_gen))
    unclipped = int((NORMS <= C).sum())  # 4: 0, 0.25, 0.999, 1.0
    expected_c = C * math.exp(-0.2 * ((unclipped + count_noise) / 12.5 - 0.5))  # the public q m, never 7
    assert opt.clip_rule.max_grad_norm == pytest.approx(expected_c, rel=1e-12)
    realised = C * math.exp(-0.2 * ((unclipped + count_noise) / 7.0 - 0.5))
    assert not math.isclose(expected_c, realised, rel_tol=1e-3)  # the check can tell the two apart
    # Gradient (sensitivity C, noise 1 C) and count (sensitivity 1, noise 2) from one batch: one release.
    assert ledger.to_list() == [{"kind": "train", "noise_multiplier": pytest.approx((1 + 2**-2) ** -0.5, rel=1e-12),
                                 "sample_rate": 0.2, "steps": 1, "unit": "example"}]


def test_adam_bc_equals_numpy_oracle() -> None:
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=5)
    grads = rng.normal(size=(4, 5))
    p = torch.nn.Parameter(torch.from_numpy(theta0.copy()))
    opt = AdamBC([p], lr=0.01)
    opt.noise_variance = 0.3
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    theta, m, v = theta0.copy(), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        theta = theta - 0.01 * m_hat / np.sqrt(np.maximum(v_hat - 0.3, 1e-9))
    np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-10)


def test_dp_optimizer_tells_adam_bc_the_noise_variance() -> None:
    p, _ = _with_grad_samples(NORMS)
    opt = _opt([p], sigma=1.5, gen=torch.Generator().manual_seed(0), base="adam-bc", lr=1e-3)
    opt.start_set(sample_rate=0.1, normaliser=4.0, expected_examples=4.0)
    opt.step()
    assert opt.original_optimizer.noise_variance == pytest.approx((1.5 * C / 4.0) ** 2, rel=1e-12)


def test_poisson_batches_are_opacus_draws_rate_and_steps() -> None:
    g = torch.Generator().manual_seed(0)
    batches = list(poisson_batches(1000, sample_rate=0.05, steps=400, generator=g))
    assert len(batches) == 400
    assert sum(map(len, batches)) / 400 == pytest.approx(50, rel=0.03)
    g2 = torch.Generator().manual_seed(0)  # the rule: torch.rand(m) < q, one draw per step
    for b in batches[:5]:
        assert torch.equal(b, (torch.rand(1000, generator=g2) < 0.05).nonzero().reshape(-1))
    assert steps_per_epoch(256 / 6000) == 23 and steps_per_epoch(1.0) == 1


def test_block_batches_are_one_poisson_draw_whatever_the_ranks() -> None:
    """Each position lies in block i mod BLOCKS and is drawn by that block's generator alone: the union of
    the ranks' local batches is the one-process batch (for W = 1, 2, 3), the ranks' batches are disjoint,
    and each position is included at rate q."""
    def gens() -> dict[str, torch.Generator]:
        return {n: torch.Generator().manual_seed(1000 + b) for b, n in enumerate(block_names())}

    m, q, steps = 700, 0.1, 60
    one = list(block_batches(m, sample_rate=q, steps=steps, generators=gens(), blocks=World().blocks()))
    assert len(one) == steps and all(torch.equal(b, torch.sort(b).values) for b in one)
    counts = torch.bincount(torch.cat(one), minlength=m).double()
    assert float(counts.mean()) / steps == pytest.approx(q, rel=0.05)
    g = gens()[block_names()[3]]  # block 3's positions 3, 67, ...: torch.rand(len) < q, one draw per step
    assert torch.equal(one[0][one[0] % BLOCKS == 3], torch.arange(3, m, BLOCKS)[torch.rand(11, generator=g) < q])
    for w in (2, 3):
        ranks = [list(block_batches(m, sample_rate=q, steps=steps, generators=gens(), blocks=World(r, w).blocks()))
                 for r in range(w)]
        for t in range(steps):
            local = [b[t] for b in ranks]
            assert torch.equal(torch.sort(torch.cat(local)).values, one[t])
            assert sum(map(len, local)) == len(torch.unique(torch.cat(local)))  # disjoint
        assert not all(torch.equal(a, b) for a, b in zip(ranks[0], ranks[1]))
    assert all(len(b) == 0 for b in block_batches(0, sample_rate=q, steps=3, generators=gens(), blocks=range(BLOCKS)))


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="valid: flat, automatic, adaptive"):
        make_clip_rule("auto", max_grad_norm=1.0)
    with pytest.raises(ValueError, match="valid: sgd, adam, adam-bc"):
        make_base_optimizer("rmsprop", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
