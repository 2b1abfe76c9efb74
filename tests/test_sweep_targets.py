"""`crepe sweep` with target epsilons: cells whose schedule cannot reach their target are
checked in-process before anything runs, recorded as unreachable, never launched, and listed
by `crepe report`; the cost estimate knows --compute steps. No training: `crepe train`
processes are replaced by a spy that writes a finished run folder.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_report import write_run

from crepe import data
from crepe.training.plan import Plan, class_counts, new_run_config
from crepe.privacy.calibration import Unreachable
from crepe.study import report, sweep
from crepe.study.plan import make_plan, plan_from_manifest

TINY = ["--epochs", "1", "--train-subset", "300", "--test-subset", "200"]


class FinishedRun:
    """Stands in for a `crepe train` process: writes a complete run folder and exits 0."""

    def __init__(self, cmd: list[str], **kw: Any) -> None:
        flag = lambda f: cmd[cmd.index(f) + 1]  # noqa: E731
        out = Path(flag("--out"))
        write_run(out.parent, out.name, test_acc=0.5, epochs=1, dataset="fashion-mnist", train_subset=300, test_subset=200,
                  method=flag("--method"), seed=int(flag("--seed")), sigma=2.0, target_epsilon=float(flag("--target-epsilon")))

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The training processes started and the datasets loaded."""
    seen: dict[str, list[Any]] = {"started": [], "loads": []}
    real_load, real_popen = data.load, subprocess.Popen

    def popen(cmd: list[str], **kw: Any) -> Any:
        if "train" not in cmd:  # not a training process (e.g. a library probing its platform)
            return real_popen(cmd, **kw)
        seen["started"].append(cmd)
        return FinishedRun(cmd, **kw)

    def load(*a: Any, **kw: Any) -> Any:
        seen["loads"].append((a, kw))
        return real_load(*a, **kw)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(data, "load", load)
    return seen


def test_unreachable_cells_are_recorded_never_launched_and_reported(
    tmp_path: Path, data_root: Path, spied: dict[str, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    argv = ["--out", str(out), "--dataset", "fashion-mnist", "--method", "full", "craig", "--target-epsilon", "0.01", "3",
            "--seeds", "0", "1", *TINY, "--data-dir", str(data_root)]
    assert sweep.main(argv) == 0
    assert len(spied["loads"]) == 1  # 8 runs, 4 calibrations, one dataset: loaded once
    started = {Path(c[c.index("--out") + 1]).name for c in spied["started"]}
    assert started == {f"fashion-mnist_cnn_{m}_eps3_seed{s}" for m in ("full", "craig") for s in (0, 1)}
    manifest = json.loads((out / "sweep.json").read_text())
    unreachable = {f"fashion-mnist_cnn_{m}_eps0.01_seed{s}" for m in ("full", "craig") for s in (0, 1)}
    assert set(manifest["unreachable"]) == unreachable
    for name in unreachable:
        method = name.split("_")[2]
        cfg = new_run_config({"dataset": "fashion-mnist", "method": method, "target_epsilon": 0.01, "epochs": 1,
                              "train_subset": 300, "test_subset": 200, "data_dir": str(data_root)})
        labels = data.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=300, test_subset=200).y_train
        with pytest.raises(Unreachable) as e:  # what `crepe train` itself would say: its plan cannot be solved
            Plan.of(cfg, counts=class_counts(labels))
        assert e.value.floor > 0.01
        assert manifest["unreachable"][name] == {"target_epsilon": 0.01, "smallest_epsilon": e.value.floor}
        assert manifest["runs"][name]["status"] == "unreachable" and not (out / name).exists()
    console = capsys.readouterr().out
    assert "4 to run, 4 unreachable" in console and "4/8 runs complete" in console
    assert "fashion-mnist_cnn_craig_eps0.01_seed1 not run: target epsilon 0.01 is unreachable (the smallest reachable is" in console
    # a plain re-run starts nothing and still lists them; a dry run shows them
    assert sweep.main(["--out", str(out)]) == 0
    assert len(spied["started"]) == 4 and "4 complete, 0 to run, 4 unreachable" in capsys.readouterr().out
    assert sweep.main(["--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("[unreachable]: target epsilon 0.01 is unreachable" in line for line in lines) == 4
    assert sum("[complete]" in line for line in lines) == 4
    # crepe report lists the cells (one line per cell, its seeds together) beside the runs that finished
    paths = report.report(out, tmp_path / "r", plots=False)
    md = paths["markdown"].read_text()
    floor = manifest["unreachable"]["fashion-mnist_cnn_craig_eps0.01_seed0"]["smallest_epsilon"]
    assert f"| method=craig | 0.01 | {floor:.4g} | 0 1 |" in md and "| method=full | 0.01 |" in md
    assert "## Unreachable cells (not run)" in paths["verdict"].read_text()


def test_a_sweep_without_targets_loads_no_data(tmp_path: Path, spied: dict[str, list[Any]]) -> None:
    assert sweep.main(["--out", str(tmp_path / "s"), "--method", "craig", "--sigma", "1", "--dry-run"]) == 0
    assert spied["loads"] == []


def test_cost_knows_compute_steps() -> None:
    plan = make_plan(grid={"method": ["full", "craig", "random"], "compute": ["epochs", "steps"]})
    cost = {r.name: r.cost() for r in plan.runs}
    full = cost["mnist_cnn_full_sigma1_seed0"]
    for method in ("craig", "random"):
        # at equal steps a small set trains as long as full data does (plus its selection)
        assert full <= cost[f"mnist_cnn_{method}_sigma1_computesteps_seed0"] <= 1.1 * full
        assert cost[f"mnist_cnn_{method}_sigma1_computeepochs_seed0"] < 0.2 * full
    longest_first = sorted(plan.runs, key=lambda s: -s.cost())
    assert [r.name for r in longest_first][-2:] == ["mnist_cnn_craig_sigma1_computeepochs_seed0",
                                                     "mnist_cnn_random_sigma1_computeepochs_seed0"]


def test_select_share_is_an_axis_of_its_own() -> None:
    plan = make_plan(grid={"method": ["craig"], "target-epsilon": ["2"], "select-share": ["0.1", "0.3"]})
    assert [r.name for r in plan.runs] == ["mnist_cnn_craig_eps2_select-share0.1_seed0", "mnist_cnn_craig_eps2_select-share0.3_seed0"]
    with pytest.raises(ValueError, match="--select-share solves --select-sigma"):  # crepe train's own rule
        make_plan(grid={"method": ["craig"], "target-epsilon": ["2"], "select-share": ["0.1"]}, fixed={"select-sigma": "1"})


def test_a_manifest_from_before_select_every_was_an_axis_still_loads() -> None:
    plan = plan_from_manifest({"grid": {"method": ["craig"]}, "fixed": {"select-every": 5, "epochs": 10}})
    assert plan.grid["select-every"] == (5,) and plan.fixed == {"epochs": 10}
    args = plan.runs[0].train_args()
    assert args[args.index("--select-every") + 1] == "5"


def test_a_target_per_user_is_checked_with_the_users_public_k(data_root: Path) -> None:
    """--target-unit user: the in-process check plans the run with its users' public k (synthetic writers:
    2 ceil(n / U)), so an unreachable per-user target is caught before anything runs, and a reachable one not."""
    from crepe.study import runner
    from crepe.study.plan import RunSpec

    common = (("dataset", "fashion-mnist"), ("method", "full"), ("users", "synthetic"), ("user-count", 20),
              ("train-subset", 300), ("batch-size", 150), ("epochs", 40), ("target-unit", "user"), ("accountant", "rdp"))
    specs = [RunSpec(f"eps{e}", (*common, ("target-epsilon", e))) for e in (0.05, 50.0)]
    floors = runner.unreachable(specs, data_dir=str(data_root))
    assert list(floors) == ["eps0.05"] and floors["eps0.05"] > 0.05
