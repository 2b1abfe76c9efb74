"""--sparsity: magnitude masks, no gradient and no noise on pruned coordinates, zeros that stay zero,
the noise-to-signal metric, an unchanged ledger, resume, and refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from torch import nn

from crepe.cli import main
from crepe.config import TrainConfig
from crepe.dp import pruning
from crepe.dp.clipping import make_clip_rule
from crepe.dp.optimizer import DPOptimizer
from crepe.models import build_model
from crepe.training import loop, rundir
from crepe.training import state as ckpt


def test_global_masks_drop_exactly_the_smallest_weights_of_all_layers() -> None:
    torch.manual_seed(0)
    model = build_model("cnn")
    masks = pruning.magnitude_masks(model, 0.8)
    weights = np.concatenate([w.detach().abs().numpy().ravel() for _, w in pruning.prunable(model)])
    kept = np.concatenate([masks[n].numpy().ravel() for n, _ in pruning.prunable(model)])
    drop = round(0.8 * len(weights))
    assert (~kept).sum() == drop
    assert weights[kept].min() >= weights[~kept].max()  # one threshold over every layer (numpy's view)
    assert set(masks) == {"features.0.weight", "features.3.weight", "features.7.weight", "head.weight"}  # no bias
    per_layer = pruning.magnitude_masks(model, 0.5, scope="layer")
    for name, w in pruning.prunable(model):
        assert int((~per_layer[name]).sum()) == round(0.5 * w.numel())


def small_dp(masks_on: bool, sigma: float, *, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 5))
    base = torch.optim.SGD(model.parameters(), lr=0.5)
    opt = DPOptimizer(base, noise_multiplier=sigma, clip_rule=make_clip_rule("flat", max_grad_norm=0.7),
                      generator=torch.Generator().manual_seed(1), on_release=lambda r: None)
    opt.start_set(sample_rate=1.0, normaliser=8.0, expected_examples=8.0)
    masks = pruning.magnitude_masks(model, 0.6)
    if masks_on:
        pruning.apply(model, masks)
        opt.set_masks(pruning.pairs(model, masks))
    return model, GradSampleModule(model, batch_first=True, loss_reduction="sum"), opt, masks


def batch(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 40, generator=g), torch.randint(0, 5, (8,), generator=g)


def test_pruned_coordinates_get_no_gradient_and_no_noise_and_stay_zero(monkeypatch) -> None:
    model, net, opt, masks = small_dp(True, sigma=2.0)
    seen = {}
    add_noise = DPOptimizer.add_noise

    def traced(self):  # type: ignore[no-untyped-def]
        seen["summed"] = [p.summed_grad.clone() for p in self.params]
        add_noise(self)
        seen["released"] = [p.grad.clone() for p in self.params]
    monkeypatch.setattr(DPOptimizer, "add_noise", traced)
    x, y = batch()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
        opt.step()
    pairs = dict(zip((id(p) for p, _ in pruning.pairs(model, masks)), masks.values()))
    noise = []
    for p, summed, released in zip(opt.params, seen["summed"], seen["released"]):
        m = pairs.get(id(p))
        if m is None:  # biases: dense
            continue
        assert float(summed[~m].abs().max()) == 0.0 and float(released[~m].abs().max()) == 0.0
        assert float(p.detach()[~m].abs().max()) == 0.0  # the weights stay exactly zero
        noise.append((released - summed)[m])
    std = float(torch.cat(noise).std())
    assert std == pytest.approx(2.0 * 0.7, rel=0.1)  # the kept coordinates get sigma C


def test_the_clip_norm_is_taken_over_the_kept_coordinates_only() -> None:
    """sigma = 0: the clipped sum equals a by-hand oracle whose per-example gradients are masked first."""
    model, net, opt, masks = small_dp(True, sigma=0.0)
    x, y = batch()
    grads = []
    for i in range(len(x)):  # per-example gradients, by hand, then masked
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        grads.append([(p.grad * masks.get(n, torch.ones_like(p))).clone() for n, p in model.named_parameters()])
    norms = torch.tensor([math.sqrt(sum(float((g ** 2).sum()) for g in gi)) for gi in grads])
    factor = torch.clamp(0.7 / norms, max=1.0)
    expected = [sum(factor[i] * grads[i][k] for i in range(len(x))) for k in range(len(grads[0]))]
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    opt.clip_and_accumulate()
    for p, e in zip(opt.params, expected):
        torch.testing.assert_close(p.summed_grad, e, rtol=1e-5, atol=1e-6)
    # the epoch's noise-to-signal: sigma C sqrt(d_eff) / |clipped sum|, here with sigma = 0
    d_eff = sum(p.numel() for p in model.parameters()) - sum(int((~m).sum()) for m in masks.values())
    assert pruning.effective_dimension(opt.params, opt.masks) == d_eff


def test_noise_to_signal_is_the_numpy_oracle_on_a_fixed_batch() -> None:
    model, net, opt, masks = small_dp(True, sigma=1.3)
    x, y = batch(5)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    opt.clip_and_accumulate()
    summed = np.concatenate([p.summed_grad.detach().numpy().ravel() for p in opt.params])
    kept = sum(p.numel() for p in model.parameters()) - sum(int((~m).sum()) for m in masks.values())
    oracle = 1.3 * 0.7 * np.sqrt(kept) / np.linalg.norm(summed.astype(np.float64))
    assert opt.take_noise_to_signal() == pytest.approx(oracle, rel=1e-9)
    assert opt.take_noise_to_signal() is None  # taken: the next epoch starts afresh


def config(data_root: Path, **kw) -> TrainConfig:
    base = dict(dataset="fashion-mnist", data_dir=str(data_root), train_subset=600, test_subset=100, method="full",
                epochs=3, batch_size=100, sigma=1.1, accountant="rdp", noise="reproducible", threads=1, lr=0.5,
                sparsity=0.9, prune_at="warmup", prune_warmup=1)
    base.update(kw)
    return TrainConfig(**base).resolve()


def train(cfg: TrainConfig, out: Path, **kw) -> dict:
    if not out.exists():
        assert rundir.prepare_out(cfg, out, {}) == "new"
    return loop.run(cfg, out, log=lambda s: None, **kw)


def test_a_mask_from_warm_up_weights_leaves_epsilon_unchanged_and_the_zeros_are_published(data_root, tmp_path) -> None:
    pruned = train(config(data_root), tmp_path / "pruned")
    dense = train(config(data_root, sparsity=0.0, prune_at="init", prune_warmup=1), tmp_path / "dense")
    assert pruned["ledger"] == dense["ledger"]
    acc = RDPAccountant()  # Opacus' RDP accountant stepped by hand: q = 100/600, sigma 1.1, 3 epochs of 6 steps
    for _ in range(18):
        acc.step(noise_multiplier=1.1, sample_rate=100 / 600)
    assert pruned["eps_total"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "pruned" / rundir.METRICS).read_text().splitlines()]
    assert [r["sparsity"]["overall"] for r in rows] == [0.0, pytest.approx(0.9, abs=1e-3), pytest.approx(0.9, abs=1e-3)]
    assert all(r["noise_to_signal"] > 0 for r in rows)
    weights = torch.load(tmp_path / "pruned" / "model.pt", weights_only=True)
    model = build_model("cnn")
    model.load_state_dict(weights)
    assert pruning.realised(model)["overall"] == pytest.approx(0.9, abs=1e-3)


def test_a_pruned_run_resumes_with_its_mask_to_the_uninterrupted_run(data_root, tmp_path) -> None:
    cfg = config(data_root)
    whole = train(cfg, tmp_path / "whole")
    assert train(cfg, tmp_path / "cut", stop_after_epochs=2)["status"] == "incomplete"
    saved = ckpt.load(tmp_path / "cut" / rundir.CHECKPOINT, cfg=cfg, fingerprint=None)["state"]["masks"]
    assert saved is not None and set(saved) == {n for n, _ in pruning.prunable(build_model("cnn"))}
    resumed = train(cfg, tmp_path / "cut")
    assert resumed["test_acc"] == whole["test_acc"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_iterative_schedule_is_a_cubic_ramp_to_the_sparsity_over_half_the_epochs_left() -> None:
    due = pruning.schedule("iterative", 0.9, warmup=2, epochs=10)  # R = 4: epochs 2, 3, 4, 5
    assert list(due) == [2, 3, 4, 5]
    assert list(due.values()) == pytest.approx([0.9 * (1 - (1 - i / 4) ** 3) for i in range(1, 5)], rel=1e-12)
    assert due[5] == 0.9 and all(a < b for a, b in zip(list(due.values()), list(due.values())[1:]))
    assert pruning.schedule("iterative", 0.5, warmup=3, epochs=4) == {3: 0.5}  # R = max(1, 0)
    assert pruning.schedule("warmup", 0.5, warmup=3, epochs=9) == {3: 0.5}
    assert pruning.schedule("init", 0.5, warmup=1, epochs=9) == {} == pruning.schedule("iterative", 0, warmup=1, epochs=9)


def test_iterative_masks_ramp_keep_what_they_pruned_leave_epsilon_unchanged_and_resume(data_root, tmp_path) -> None:
    cfg = config(data_root, prune_at="iterative", epochs=6, prune_warmup=1)  # masks at epochs 1, 2 (R = 2)
    whole = train(cfg, tmp_path / "whole")
    dense = train(config(data_root, sparsity=0.0, prune_at="init", prune_warmup=1, epochs=6), tmp_path / "dense")
    assert whole["ledger"] == dense["ledger"] and whole["eps_total"] == dense["eps_total"]
    rows = [json.loads(line) for line in (tmp_path / "whole" / rundir.METRICS).read_text().splitlines()]
    ramp = [0.0, 0.9 * (1 - 0.5 ** 3), 0.9, 0.9, 0.9, 0.9]
    assert [r["sparsity"]["overall"] for r in rows] == [pytest.approx(s, abs=1e-3) for s in ramp]
    assert all(r["test_loss"] > 0 for r in rows)  # held-out loss, every epoch
    assert train(cfg, tmp_path / "cut", stop_after_epochs=2)["status"] == "incomplete"  # cut inside the ramp
    resumed = train(cfg, tmp_path / "cut")
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["ledger"] == whole["ledger"]


@pytest.mark.parametrize(("args", "message"), [
    (["--sparsity", "1.0"], "--sparsity must be a finite number >= 0 and <= 0.99, got 1.0"),
    (["--sparsity", "0.9", "--prune-at", "warmup", "--prune-warmup", "5", "--epochs", "5"],
     "--prune-warmup 5 is not shorter than the run's --epochs 5: allowed 1..4"),
    (["--prune-at", "warmup"], "--prune-at applies to --sparsity > 0 only"),
    (["--sparsity", "0.5", "--prune-at", "snip"], "argument --prune-at: unknown prune at 'snip'; valid: init, warmup, iterative"),
    (["--sparsity", "0.5", "--audit-canaries", "10"], "--sparsity with --audit-canaries"),
    (["--sparsity", "0.5", "--prune-warmup", "2"], "--prune-warmup applies to --prune-at warmup or iterative only"),
])
def test_bad_pruning_options_exit_2_with_the_allowed_values(args, message, capsys) -> None:
    code = main(["train", "--out", "/nonexistent/never", "--dataset", "fashion-mnist", "--method", "full", *args])
    assert code == 2 and message in capsys.readouterr().err
