"""`crepe train` timings on Fashion-MNIST with the CNN (issue 3). Run:

    OMP_WAIT_POLICY=PASSIVE python -m pytest bench/bench_train.py -s -p no:randomly \
        --benchmark-json=bench-train.json [--quick]

Everything goes through the real code path (`crepe.training.loop.run`, whose
metrics.jsonl times each epoch's selection and training separately), on 2
threads, B = 256, sigma = 1, C = 1, fraction 0.1:
- seconds per epoch: full-data DP-SGD vs a 10% CRAIG coreset;
- one selection round on all training examples, split into its parts: the
  forward pass + closed-form proxies, the clip + noise, the CRAIG selection;
- the seed schedule (50 epochs, selection at epochs 0, 20, 40) end to end
  against 50 full-data DP-SGD epochs. The full-data side is MEASURED for
  FULL_EPOCHS epochs and SCALED to 50 (said in the output): 50 of them would
  take ~9 minutes here.
Ratios are against the full-data epoch measured in the same session. The
machine load (os.getloadavg) is recorded before and after each measurement.
--quick: 6,000 training images, 5 coreset epochs (selection every 2).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from crepe.config import TrainConfig

DATA = Path(os.environ.get("CREPE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
THREADS = 2
FULL_EPOCHS = 2
RESULTS: dict[str, object] = {}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def config(quick: bool, **kw: object) -> TrainConfig:
    base = dict(
        dataset="fashion-mnist", data_dir=str(DATA / "fashion-mnist"), model="cnn", batch_size=256,
        sigma=1.0, max_grad_norm=1.0, fraction=0.1, threads=THREADS, seed=0,
        train_subset=6000 if quick else None, test_subset=1000 if quick else None,
    )
    base.update(kw)
    return TrainConfig(**base).resolve()  # type: ignore[arg-type]


def run(cfg: TrainConfig, out: Path) -> tuple[dict, list[dict]]:
    from crepe.training import loop, rundir

    assert rundir.prepare_out(cfg, out, {}) == "new"
    summary = loop.run(cfg, out, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.fixture(scope="module")
def full_epoch(quick: bool, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Full-data DP-SGD: seconds per epoch (mean of FULL_EPOCHS measured epochs)."""
    before = load()
    summary, rows = run(config(quick, method="full", epochs=FULL_EPOCHS), tmp_path_factory.mktemp("full") / "run")
    # Check: the reported epsilon is the composition of int(1/q) steps per epoch at q = B/n.
    from crepe.privacy.accounting import epsilon
    from crepe.privacy.ledger import Ledger, Release

    n = summary["n_train"]
    ledger = Ledger([Release("train", 1.0, 256 / n, steps=FULL_EPOCHS * int(n / 256))])
    assert summary["eps_total"] == pytest.approx(epsilon(ledger, delta=1e-5), rel=1e-12)
    out = {
        "n_train": n,
        "epochs_measured": FULL_EPOCHS,
        "train_s_per_epoch": float(np.mean([r["train_time_s"] for r in rows])),
        "eval_s_per_epoch": float(np.mean([r["eval_time_s"] for r in rows])),
        "test_acc": summary["test_acc"],
        "eps_total": summary["eps_total"],
        "load_before": before,
        "load_after": load(),
    }
    RESULTS["full_data_dp_epoch"] = out
    return out


def test_selection_round_parts(benchmark, quick: bool, full_epoch: dict) -> None:
    """One selection round on all n: forward + proxies, clip + noise, CRAIG (per class, 10%)."""
    import torch

    import crepe
    from crepe import data
    from crepe.selection.reference import select_reference
    from crepe.models import build_model
    from crepe.smallsets.proxies import compute_proxies, privatise
    from crepe.smallsets.sets import craig_coreset

    torch.set_num_threads(THREADS)
    cfg = config(quick)
    d = data.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset)
    torch.manual_seed(0)
    model = build_model("cnn")
    y = d.y_train.numpy()
    gen = torch.Generator().manual_seed(0)
    # Check first: the engine on a slice of real noisy proxies equals the NumPy oracle.
    noisy_small = privatise(compute_proxies(model, d.x_train[:600], d.y_train[:600]), clip=1.0, sigma=1.0, generator=gen)
    np.testing.assert_array_equal(
        crepe.select(noisy_small.numpy(), y[:600], fraction=0.1).indices,
        select_reference(noisy_small.numpy(), y[:600], fraction=0.1).indices,
    )

    before = load()
    parts: dict[str, list[float]] = {"forward_and_proxies_s": [], "clip_and_noise_s": [], "selection_s": []}

    def one_round() -> None:
        t0 = time.perf_counter()
        clean = compute_proxies(model, d.x_train, d.y_train, kind="logits")
        t1 = time.perf_counter()
        noisy = privatise(clean, clip=1.0, sigma=1.0, generator=gen)
        t2 = time.perf_counter()
        craig_coreset(noisy, y, fraction=0.1, scope="per-class", threads=THREADS)
        t3 = time.perf_counter()
        parts["forward_and_proxies_s"].append(t1 - t0)
        parts["clip_and_noise_s"].append(t2 - t1)
        parts["selection_s"].append(t3 - t2)

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    best = {k: min(v) for k, v in parts.items()}
    whole = sum(best.values())
    full = full_epoch["train_s_per_epoch"]
    out = {
        "n": len(y), **best, "round_s": whole,
        "selection_over_full_epoch": best["selection_s"] / full,
        "round_over_full_epoch": whole / full,
        "load_before": before, "load_after": load(),
    }
    benchmark.extra_info.update(out)
    RESULTS["selection_round"] = out
    print("\n" + json.dumps(out, indent=1))


def test_seed_schedule_vs_full(benchmark, quick: bool, full_epoch: dict, tmp_path: Path) -> None:
    """The seed schedule end to end (real `crepe train` run), against FULL_EPOCHS full-data epochs scaled to the same count."""
    epochs, every = (5, 2) if quick else (50, 20)
    before = load()
    box: dict = {}

    def go() -> None:
        box["summary"], box["rows"] = run(config(quick, method="craig", epochs=epochs, select_every=every), tmp_path / "run")

    benchmark.pedantic(go, rounds=1, iterations=1)
    summary, rows = box["summary"], box["rows"]
    sel_rows = [r for r in rows if r["selected"]]
    assert len(sel_rows) == -(-epochs // every)
    coreset_epoch = float(np.mean([r["train_time_s"] for r in rows]))
    full = full_epoch["train_s_per_epoch"]
    schedule = summary["select_time_s"] + summary["train_time_s"]
    full_scaled = epochs * full
    out = {
        "epochs": epochs,
        "selection_rounds": len(sel_rows),
        "coreset_size": summary["coreset_size"],
        "coreset_train_s_per_epoch": coreset_epoch,
        "full_train_s_per_epoch": full,
        "epoch_speedup": full / coreset_epoch,
        "selection_round_s_in_run": [r["select_time_s"] for r in sel_rows],
        "schedule_select_plus_train_s": schedule,
        "schedule_total_s_incl_eval": summary["total_time_s"],
        "full_data_s_scaled": full_scaled,
        "full_data_note": f"{epochs} x the mean of {FULL_EPOCHS} measured full-data epochs (not run {epochs} times)",
        "schedule_speedup": full_scaled / schedule,
        "schedule_speedup_incl_eval": (full_scaled + epochs * full_epoch["eval_s_per_epoch"]) / summary["total_time_s"],
        "test_acc": summary["test_acc"],
        "full_data_test_acc_after_measured_epochs": full_epoch["test_acc"],
        "eps_total": summary["eps_total"], "eps_select": summary["eps_select"], "eps_train": summary["eps_train"],
        "load_before": before, "load_after": load(),
    }
    benchmark.extra_info.update(out)
    RESULTS["seed_schedule"] = out
    RESULTS["full_data_dp_epoch"] = full_epoch
    print("\n" + json.dumps(RESULTS, indent=1))
