"""Proxies (closed form vs autograd), models, privatisation, and the fact that the
coreset depends on the data only through the noisy proxies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crepe
from crepe import data
from crepe.models import build_model
from crepe.selection.problem import class_budget
from crepe.smallsets.proxies import compute_proxies, privatise
from crepe.smallsets.sets import craig_coreset, random_coreset


@pytest.fixture(scope="module")
def batch(data_root) -> tuple[torch.Tensor, torch.Tensor]:
    d = data.load("fashion-mnist", data_dir=str(data_root / "fashion-mnist"), train_subset=300, test_subset=10)
    return d.x_train, d.y_train


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_models_pass_opacus_validator(name: str) -> None:
    from opacus.validators import ModuleValidator

    model = build_model(name)
    assert ModuleValidator.validate(model, strict=False) == []
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="valid: cnn, resnet"):
        build_model("vgg")


@pytest.mark.parametrize("kind", ["logits", "last-layer"])
def test_proxies_equal_autograd_last_layer_gradients(batch, kind: str) -> None:
    x, y = batch[0][:6], batch[1][:6]
    torch.manual_seed(0)
    model = build_model("cnn")
    model.train()  # compute_proxies must switch to eval and back
    got = compute_proxies(model, x, y, kind=kind)
    assert model.training
    model.eval()
    for i in range(len(y)):
        model.zero_grad()
        logits = model(x[i : i + 1])
        logits.retain_grad()
        torch.nn.functional.cross_entropy(logits, y[i : i + 1]).backward()
        if kind == "logits":
            want = logits.grad[0]
        else:  # gradient of the final Linear: weight (C, H) then bias (C,), as [W | b] rows
            want = torch.cat([model.head.weight.grad, model.head.bias.grad[:, None]], dim=1).reshape(-1)
        torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)
    assert got.shape == ((6, 10) if kind == "logits" else (6, 10 * 33))


def test_privatise_clips_then_adds_calibrated_noise() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 10, generator=g) * 5
    clipped = privatise(x, clip=0.5, sigma=0.0, generator=g)
    assert float(clipped.norm(dim=1).max()) <= 0.5 + 1e-6
    noisy = privatise(x, clip=0.5, sigma=2.0, generator=torch.Generator().manual_seed(1))
    assert float((noisy - clipped).std()) == pytest.approx(2.0 * 0.5, rel=0.03)


def _select(clean: torch.Tensor, y: np.ndarray, *, sigma: float, seed: int, scope: str = "per-class"):
    noisy = privatise(clean, clip=1.0, sigma=sigma, generator=torch.Generator().manual_seed(seed))
    return craig_coreset(noisy, y, fraction=0.1, scope=scope, threads=1)


def test_sigma_zero_equals_non_private_craig_on_the_same_proxies(batch) -> None:
    torch.manual_seed(0)
    clean = compute_proxies(build_model("cnn"), *batch, kind="logits")
    y = batch[1].numpy()
    got = _select(clean, y, sigma=0.0, seed=0)
    clipped = clean * (1.0 / clean.norm(dim=1, keepdim=True)).clamp(max=1.0)
    want = crepe.select(clipped.numpy(), y, fraction=0.1)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.gamma, want.weights)


def _clustered_class(n: int = 200, spread: int = 50) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One class: n - spread proxies at one point, `spread` points scattered around it."""
    g = torch.Generator().manual_seed(123)
    x = torch.zeros(n, 10)
    x[:, 0] = 0.5
    is_spread = np.zeros(n, dtype=bool)
    is_spread[np.arange(0, n, n // spread)[:spread]] = True
    x[torch.from_numpy(is_spread)] += 0.3 * torch.randn(spread, 10, generator=g)
    return x, np.zeros(n, dtype=np.int64), is_spread


def test_huge_sigma_selection_is_distributed_like_random_selection() -> None:
    # Statistic: the share of picks that fall on the scattered points (25% of the class).
    # Noiseless CRAIG picks almost only scattered points; under huge noise the picks
    # are exchangeable, like a uniform random subset.
    x, y, is_spread = _clustered_class()
    base = is_spread.mean()
    seeds = range(60)
    share_noisy = np.mean([is_spread[_select(x, y, sigma=1e6, seed=s).indices].mean() for s in seeds])
    share_random = np.mean(
        [
            is_spread[random_coreset(y, fraction=0.1, scope="per-class", generator=torch.Generator().manual_seed(s)).indices].mean()
            for s in seeds
        ]
    )
    share_clean = is_spread[_select(x, y, sigma=0.0, seed=0).indices].mean()
    se = np.sqrt(base * (1 - base) / (60 * 20))  # binomial standard error of the pooled share
    assert abs(share_noisy - base) < 4.5 * se
    assert abs(share_random - base) < 4.5 * se
    assert abs(share_noisy - share_random) < 6.5 * se
    assert share_clean > base + 20 * se  # the statistic does detect a data-driven choice


def test_random_coreset_has_the_per_class_and_global_budgets(batch) -> None:
    y = batch[1].numpy()
    cs = random_coreset(y, fraction=0.1, scope="per-class", generator=torch.Generator().manual_seed(0))
    for c in np.unique(y):
        assert (y[cs.indices] == c).sum() == class_budget(int((y == c).sum()), 0.1)
    assert len(np.unique(cs.indices)) == len(cs.indices)
    g = random_coreset(y, fraction=0.1, scope="global", generator=torch.Generator().manual_seed(0))
    assert len(g.indices) == round(0.1 * len(y))


def test_global_scope_selects_round_f_n_ignoring_labels(batch) -> None:
    torch.manual_seed(0)
    clean = compute_proxies(build_model("cnn"), *batch, kind="logits")
    y = batch[1].numpy()
    a = _select(clean, y, sigma=1.0, seed=0, scope="global")
    b = _select(clean, np.zeros_like(y), sigma=1.0, seed=0, scope="global")
    assert len(a.indices) == 30 and a.gamma.sum() == len(y)
    np.testing.assert_array_equal(a.indices, b.indices)
