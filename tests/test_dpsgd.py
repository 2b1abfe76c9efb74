"""The weighted DP optimizer: no example contributes more than C, whatever its weight."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from crepe.dpsgd import WeightedDPOptimizer, poisson_batches, steps_per_epoch
from crepe.models import build_model

C = 1.0


def _setup(batch: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("cnn")
    net = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    opt = WeightedDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=batch,
        loss_reduction="mean",
    )
    # Large inputs and random labels: many per-example gradients far above C, some below.
    x = torch.randn(batch, 1, 28, 28) * torch.logspace(-3, 2, batch)[:, None, None, None]
    y = torch.randint(0, 10, (batch,))
    return model, net, opt, x, y


def _per_sample(opt) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.cat([g.reshape(len(g), -1) for g in opt.grad_samples], dim=1)  # (B, P)
    return flat, flat.norm(dim=1)


@pytest.mark.parametrize("seed", range(3))
def test_clip_then_scale_contribution_never_exceeds_C(seed: int) -> None:
    model, net, opt, x, y = _setup(seed=seed)
    w = torch.rand(len(y), generator=torch.Generator().manual_seed(seed))
    w[:4] = 1.0  # the heaviest coreset points
    torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    opt.sample_weights = w
    flat, norms = _per_sample(opt)
    f = opt.contribution_factors()
    assert bool(((f * norms) <= C * (1 + 1e-5)).all())
    assert bool((norms > 2 * C).sum() >= 4)  # the test exercises clipping
    opt.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.reshape(-1) for p in opt.params])
    torch.testing.assert_close(summed, (f[:, None] * flat).sum(0), rtol=1e-4, atol=1e-6)
    # Weighted contribution = w * (Opacus' clipped contribution).
    clip = (C / (norms + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(f, clip * w)


def test_weight_then_clip_cancels_large_weights_and_stays_below_C() -> None:
    model, net, opt, x, y = _setup()
    gamma = torch.full((len(y),), 50.0)
    (torch.nn.functional.cross_entropy(net(x), y, reduction="none") * gamma).sum().backward()
    opt.sample_weights = None
    _, norms = _per_sample(opt)
    assert bool(((opt.contribution_factors() * norms) <= C * (1 + 1e-5)).all())


def test_weights_above_one_are_refused() -> None:
    model, net, opt, x, y = _setup()
    torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    opt.sample_weights = torch.full((len(y),), 1.5)
    with pytest.raises(ValueError, match="raise sensitivity"):
        opt.step()


def test_step_adds_noise_sigma_C_and_divides_by_expected_weighted_batch() -> None:
    model, net, opt, x, y = _setup(batch=4)
    opt.noise_multiplier = 2.0
    opt.expected_batch_size = 2.5
    opt.generator = torch.Generator().manual_seed(0)
    for p in opt.params:  # an empty Poisson batch: the step is pure noise
        p.grad_sample = torch.zeros((0, *p.shape))
    before = [p.detach().clone() for p in opt.params]
    opt.step()
    upd = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, opt.params)]) / 0.1  # grad = -(delta)/lr
    assert float(upd.std()) == pytest.approx(2.0 * C / 2.5, rel=0.05)


def test_poisson_batches_rate_and_steps() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [len(b) for b in poisson_batches(1000, sample_rate=0.05, steps=400, generator=g)]
    assert len(sizes) == 400
    assert sum(sizes) / 400 == pytest.approx(50, rel=0.03)
    assert steps_per_epoch(256 / 6000) == 23 and steps_per_epoch(1.0) == 1
