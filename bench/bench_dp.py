"""Per-step cost of each clip rule, base optimizer and of --diagnostics, against flat DP-SGD
measured in the same run (issue 10). Run:

    OMP_WAIT_POLICY=PASSIVE python -m pytest bench/bench_dp.py -s -p no:randomly \
        --benchmark-json=bench-dp.json [--quick]

One step = forward + per-example gradients (Opacus hooks) + the DP optimizer's
step, on the CNN with real Fashion-MNIST batches of B = 256 (64 under --quick),
2 threads. Variants are timed in alternating rounds (the machine drifts
+-10-25% minute to minute) and reported as the ratio of median step times to
flat SGD. Before timing, each variant's step is checked to move the parameters
by a finite amount. The diagnostics cost is one probe of 512 examples per epoch,
reported as seconds and as the fraction of a full-data epoch (234 steps).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from crepe import data
from crepe.dp.clipping import make_clip_rule
from crepe.dp.diagnostics import PROBE_SIZE, clipping_diagnostics
from crepe.dp.optimizer import DPOptimizer
from crepe.dp.optimizers import make_base_optimizer
from crepe.models import build_model

DATA = Path(os.environ.get("CREPE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VARIANTS = {  # name: (clip rule, base optimizer, momentum, lr)
    "flat+sgd": ("flat", "sgd", 0.0, 0.1),
    "flat+sgd-momentum": ("flat", "sgd", 0.9, 0.1),
    "automatic+sgd": ("automatic", "sgd", 0.0, 0.1),
    "adaptive+sgd": ("adaptive", "sgd", 0.0, 0.1),
    "flat+adam": ("flat", "adam", 0.0, 1e-3),
    "flat+adam-bc": ("flat", "adam-bc", 0.0, 1e-3),
}
RESULTS: dict[str, float] = {}


def _stepper(variant: str, x: torch.Tensor, y: torch.Tensor):
    from opacus import GradSampleModule

    rule, base, momentum, lr = VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model("cnn", activation="tanh")
    net = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    opt = DPOptimizer(
        make_base_optimizer(base, model.parameters(), lr=lr, momentum=momentum),
        noise_multiplier=1.0, clip_rule=make_clip_rule(rule, max_grad_norm=1.0),
        generator=torch.Generator().manual_seed(0), on_release=lambda *a: None, count_noise=len(y) / 20,
    )
    opt.start_set(sample_rate=0.01, normaliser=float(len(y)), expected_examples=float(len(y)))

    def step() -> None:
        torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, net, opt, step


@pytest.fixture(scope="module")
def batch(quick: bool):
    torch.set_num_threads(2)
    b = 64 if quick else 256
    d = data.load("fashion-mnist", data_dir=str(DATA / "fashion-mnist"), train_subset=4096, test_subset=10)
    return d.x_train[:b], d.y_train[:b], d.x_train[-PROBE_SIZE:], d.y_train[-PROBE_SIZE:]


def test_step_cost_relative_to_flat_sgd(benchmark, batch, quick: bool) -> None:
    x, y, _, _ = batch
    steppers = {}
    for v in VARIANTS:
        model, _, _, step = _stepper(v, x, y)
        before = [p.detach().clone() for p in model.parameters()]
        step()  # check: a finite, non-zero move
        moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(model.parameters(), before))
        assert 0 < moved < float("inf"), v
        steppers[v] = step
    rounds = 3 if quick else 7
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):  # alternating rounds: drift hits every variant alike
        for v, step in steppers.items():
            t0 = time.perf_counter()
            for _ in range(5):
                step()
            times[v].append((time.perf_counter() - t0) / 5)
    base = statistics.median(times["flat+sgd"])
    print(f"\nper-step median over {rounds} rounds of 5 steps, B = {len(y)}, load {os.getloadavg()[0]:.2f}")
    for v, ts in times.items():
        RESULTS[v] = statistics.median(ts) / base
        print(f"  {v:20s} {statistics.median(ts) * 1e3:7.1f} ms   x{RESULTS[v]:.3f} of flat+sgd")
    benchmark.extra_info.update({k: round(r, 4) for k, r in RESULTS.items()})
    benchmark.pedantic(steppers["flat+sgd"], rounds=1, iterations=1)


def test_diagnostics_cost(benchmark, batch) -> None:
    x, y, px, py = batch
    model, net, opt, step = _stepper("flat+sgd", x, y)
    d = clipping_diagnostics(net, list(model.parameters()), opt.clip_rule, px, py, sigma=1.0, batch_size=256)
    assert 0 <= d["frac_clipped"] <= 1
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    per_step = (time.perf_counter() - t0) / 3
    result = benchmark.pedantic(
        lambda: clipping_diagnostics(net, list(model.parameters()), opt.clip_rule, px, py, sigma=1.0, batch_size=256),
        rounds=3, iterations=1,
    )
    assert result["snr"] > 0
    probe_s = benchmark.stats.stats.median
    epoch_s = per_step * 60000 / len(y)
    print(f"\ndiagnostics probe ({PROBE_SIZE} examples): {probe_s:.3f} s = {probe_s / epoch_s:.1%} of a full-data "
          f"epoch at this batch size ({epoch_s:.1f} s estimated from {per_step * 1e3:.0f} ms/step)")
    benchmark.extra_info.update({"probe_s": probe_s, "share_of_full_epoch": probe_s / epoch_s})
