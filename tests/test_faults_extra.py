"""Tests added after fault injection (issues 9 and 14) found two faults no other test caught:

- only the DP-noise generator (or only the sampler / selection-noise generator)
  seeded from --seed in secret mode: test_runs compares train losses, which
  differ as soon as any one generator is secret;
- the planned ledger of --target-epsilon (now `Plan.ledger`) counting the wrong number of
  selection rounds when --select-every > 1: every target-epsilon test used
  --select-every 1, where rounds happen every epoch anyway.
"""

from __future__ import annotations

import math

import pytest

from crepe import _core, data  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.config import TrainConfig
from crepe.training import loop, rundir, state
from crepe.training.state import GENERATORS


def _generator_states(data_root, tmp_path, name: str, noise: str) -> dict:
    cfg = TrainConfig(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50,
                      batch_size=10, method="craig", epochs=1, seed=4, noise=noise, threads=1,
                      keep_secrets=True).resolve()  # a finished run's checkpoint keeps its generators only on request
    out = tmp_path / name
    assert rundir.prepare_out(cfg, out, {}) == "new"
    loop.run(cfg, out, log=lambda s: None)
    fp = data.load("fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50).fingerprint
    ck = state.load(out / rundir.CHECKPOINT, cfg=cfg, fingerprint=fp)
    return ck["generators"]


def test_every_noise_generator_is_secret_by_default(data_root, tmp_path) -> None:
    """Same --seed, same draws: the generators' states after one epoch differ between two
    secret-mode runs for EACH of noise, sampler and selection noise; reproducible runs agree."""
    s1, s2 = (_generator_states(data_root, tmp_path, n, "secret") for n in ("s1", "s2"))
    r1, r2 = (_generator_states(data_root, tmp_path, n, "reproducible") for n in ("r1", "r2"))
    assert set(s1) == set(r1) == set(GENERATORS)
    for g in GENERATORS:
        assert not s1[g].equal(s2[g]), f"secret mode: the {g} generator is the same in two runs with one --seed"
        assert not s1[g].equal(r1[g]), f"secret mode: the {g} generator equals the --seed-derived one"
        assert r1[g].equal(r2[g]), f"reproducible mode: the {g} generator is not reproducible"


def test_planned_ledger_with_select_every_above_one_is_the_hand_schedule() -> None:
    from crepe.training.plan import Plan

    cfg = TrainConfig(method="craig", epochs=5, select_every=2, batch_size=10, sigma=1.5, select_sigma=2.5).resolve()
    sel = {"kind": "select", "noise_multiplier": 2.5, "sample_rate": 1.0, "steps": 1, "unit": "example"}
    trn = lambda steps: {"kind": "train", "noise_multiplier": 1.5, "sample_rate": 10 / 30, "steps": steps,  # noqa: E731
                         "unit": "example"}
    # rounds at epochs 0, 2, 4 (ceil(5/2) = 3); 3 steps per epoch at q = 1/3
    assert Plan(cfg, 300, 30).ledger().to_list() == [sel, trn(6), sel, trn(6), sel, trn(3)]


def test_target_epsilon_with_select_every_above_one_ends_at_the_target(data_root, tmp_path) -> None:
    from crepe import cli

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
            "--train-subset", "300", "--test-subset", "50", "--batch-size", "10", "--threads", "1",
            "--method", "craig", "--epochs", "3", "--select-every", "2", "--target-epsilon", "4"]
    assert cli.main(args) == 0
    s = rundir.read_json(out / rundir.SUMMARY)
    assert 0.99 * 4 <= s["eps_total"] <= 4
    rounds = sum(e["steps"] for e in s["ledger"] if e["kind"] == "select")
    assert rounds == math.ceil(3 / 2)
