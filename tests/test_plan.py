"""The run plan: the releases each method's schedule makes, written by hand, and the invariant
that a run records exactly its plan (a run whose releases differ by one step stops before it
prints or saves an epsilon)."""

from __future__ import annotations

import json

import pytest

from crepe import data
from crepe.config import TrainConfig
from crepe.dp.clipping import joint_noise
from crepe.privacy.ledger import Ledger, Release, subset
from crepe.selection.problem import class_budget
from crepe.training import epoch as epoch_mod
from crepe.training import loop, rundir
from crepe.training.plan import Plan, PlanMismatch, class_counts


def train(steps: int, sigma: float = 1.5, q: float = 10 / 30) -> Release:
    return Release("train", sigma, q, steps)


def test_craig_rounds_at_0_k_2k_then_steps_at_the_public_size() -> None:
    cfg = TrainConfig(method="craig", epochs=5, select_every=2, batch_size=10, sigma=1.5, select_sigma=2.5).resolve()
    plan = Plan(cfg, n=300, set_size=30)
    sel = Release("select", 2.5, 1.0)
    assert plan.schedule == (5, 2)
    assert list(plan.ledger()) == [sel, train(6), sel, train(6), sel, train(3)]  # 3 steps an epoch at q = 1/3
    assert list(plan.ledger(3)) == [sel, train(6), sel, train(3)]
    assert plan.epoch_releases(1) == (train(3),)


def test_a_poisson_subset_opens_a_phase_at_each_draw_and_adaptive_steps_release_jointly() -> None:
    cfg = TrainConfig(method="random", epochs=3, select_every=2, batch_size=10, fraction=0.1, clipping="adaptive",
                      sigma=1.2).resolve()
    plan = Plan(cfg, n=300, set_size=30.0)
    step = train(3, sigma=joint_noise(1.2, 10 / 20))
    assert list(plan.ledger()) == [subset(0.1), Release("train", step.noise_multiplier, 1 / 3, 6), subset(0.1),
                                   Release("train", step.noise_multiplier, 1 / 3, 3)]
    assert plan.secret_size and not plan.labels_public


def test_full_data_and_private_set() -> None:
    full = Plan(TrainConfig(method="full", epochs=2, batch_size=100, sigma=1.0).resolve(), n=1000, set_size=1000)
    assert list(full.ledger()) == [train(20, sigma=1.0, q=0.1)] and full.private_selection is None  # no selection
    cfg = TrainConfig(method="private-set", epochs=4, batch_size=50, sigma=2.0, images_per_class=2, gen_iterations=3,
                      gen_outer_loops=2).resolve()
    ps = Plan.of(cfg, counts=[50] * 10)
    assert ps.set_size == 20 and ps.n == 500
    assert list(ps.ledger()) == [Release("generate", 2.0, 0.1, 6)]  # training on the synthetic set releases nothing
    assert list(ps.ledger(0, progress={"iteration": 1})) == [Release("generate", 2.0, 0.1, 2)]


def test_check_names_the_first_difference() -> None:
    plan = Plan(TrainConfig(method="full", epochs=2, batch_size=100, sigma=1.0).resolve(), n=1000, set_size=1000)
    plan.check(Ledger([train(10, sigma=1.0, q=0.1)] * 2), epochs_done=2)
    with pytest.raises(PlanMismatch, match="entry 0"):
        plan.check(Ledger([train(21, sigma=1.0, q=0.1)]), epochs_done=2)


@pytest.mark.parametrize("change", [+1, -1])
def test_a_run_whose_steps_differ_from_its_plan_by_one_stops(data_root, tmp_path, monkeypatch, change: int) -> None:
    """The epoch takes one step more (or fewer) than the plan: the run stops at the end of that
    epoch, before it prints or writes an epsilon for it."""
    real = epoch_mod.steps_per_epoch
    monkeypatch.setattr(epoch_mod, "steps_per_epoch", lambda q: real(q) + change)
    cfg = TrainConfig(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50,
                      batch_size=30, method="full", epochs=2, threads=1).resolve()
    out = tmp_path / "run"
    assert rundir.prepare_out(cfg, out, {}) == "new"
    lines: list[str] = []
    with pytest.raises(PlanMismatch, match="differ from the run's plan"):
        loop.run(cfg, out, log=lines.append)
    assert not any(line.startswith("epoch ") for line in lines)  # no epsilon printed
    assert rundir.read_metrics(out) == [] and not (out / rundir.CHECKPOINT).exists()
    assert not (out / rundir.SUMMARY).exists()


def test_an_unchanged_run_records_its_plan(data_root, tmp_path) -> None:
    cfg = TrainConfig(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50,
                      batch_size=30, method="craig", epochs=3, select_every=2, threads=1).resolve()
    out = tmp_path / "run"
    assert rundir.prepare_out(cfg, out, {}) == "new"
    summary = loop.run(cfg, out, log=lambda s: None)
    labels = data.load("fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50).y_train
    plan = Plan.of(cfg, counts=class_counts(labels))
    assert plan.schedule == (3, 2) and plan.set_size == sum(class_budget(c, 0.1) for c in class_counts(labels))
    assert summary["ledger"] == plan.ledger().to_list() == json.loads((out / "summary.json").read_text())["ledger"]
    assert summary["unit"] == "example" and [e["kind"] for e in summary["ledger"]] == ["select", "train", "select", "train"]


def test_a_checkpoint_of_the_previous_format_resumes_against_the_plan(data_root, tmp_path) -> None:
    """Checkpoints written before the privacy unit existed hold 4-field ledger entries (they meant one
    example): such a run folder resumes, is checked against its plan, and finishes with the unit."""
    import io

    import torch

    from crepe.training import state

    cfg = TrainConfig(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50,
                      batch_size=30, method="random", epochs=2, select_every=1, threads=1).resolve()
    out = tmp_path / "run"
    assert rundir.prepare_out(cfg, out, {}) == "new"
    assert loop.run(cfg, out, stop_after_epochs=1, log=lambda s: None)["status"] == "incomplete"
    path = out / rundir.CHECKPOINT
    raw = path.read_bytes()
    payload = torch.load(io.BytesIO(raw[len(state.MAGIC) + 65 :]), weights_only=True)
    old = [{k: v for k, v in e.items() if k != "unit"} for e in payload["state"]["ledger"]]
    assert [e["kind"] for e in old] == ["subset", "train"] and all(len(e) == 4 for e in old)
    payload["state"]["ledger"] = old
    state._write(path, payload)  # noqa: SLF001 (the writer of that format, re-signing the payload)
    summary = loop.run(cfg, out, log=lambda s: None)
    assert summary["status"] == "complete" and summary["unit"] == "example"
    assert [e["kind"] for e in summary["ledger"]] == ["subset", "train", "subset", "train"]
    assert all(e["unit"] == "example" for e in summary["ledger"])


EVERY_KTH = '''"""every-kth: a fixed, data-independent subset (every k-th example, k = round(1 / fraction))."""

from crepe.smallsets.method import Chosen, Method


class EveryKth(Method):
    name = "every-kth"
    order = 9
    options = ("fraction",)

    def public_size(self, cfg, counts):
        return len(range(0, sum(counts), max(1, round(1 / cfg.fraction))))

    def choose(self, cfg, rnd):
        import numpy as np

        from crepe.smallsets.sets import Coreset

        idx = np.arange(0, len(rnd.y), max(1, round(1 / cfg.fraction)), dtype=np.int64)
        return Chosen(Coreset(idx, np.ones(len(idx), dtype=np.int64)))


METHOD = EveryKth()
'''


def test_a_new_method_is_one_module(data_root, tmp_path, monkeypatch, capsys) -> None:
    """A method module dropped into the registry's package (here a folder added to its path) is a
    --method of `crepe train` with its own option group, planned, trained and accounted: nothing else
    names it."""
    import crepe.smallsets.methods as registry_pkg
    from crepe import cli

    extra = tmp_path / "more_methods"
    extra.mkdir()
    (extra / "every_kth.py").write_text(EVERY_KTH)
    monkeypatch.setattr(registry_pkg, "__path__", [*registry_pkg.__path__, str(extra)])
    registry_pkg.registry.cache_clear()
    try:
        assert registry_pkg.names()[-1] == "every-kth"
        out = tmp_path / "run"
        argv = ["train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
                "--train-subset", "300", "--test-subset", "50", "--method", "every-kth", "--fraction", "0.25",
                "--batch-size", "15", "--epochs", "1", "--threads", "1"]
        assert cli.main(argv) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["coreset_size"] == 75 and s["ledger"] == [Release("train", 1.0, 0.2, 5).to_dict()]
        assert cli.main([*argv[:-6], "--proxy", "logits", *argv[-6:]]) == 2  # craig's option is not its own
        assert "--proxy does not apply to --method every-kth" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        registry_pkg.registry.cache_clear()
    assert "every-kth" not in registry_pkg.names()
