"""`crepe sweep`: grid expansion, names, manifest rules, and real `crepe train`
runs end to end (skip on re-run, resume, failures, interruption).

The end-to-end tests run real `crepe train` subprocesses on a few hundred real
Fashion-MNIST images for one epoch; each subprocess pays the torch + opacus
import (~8 s), so the grids stay tiny and run two at a time.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crepe.study import plots, report, results, sweep
from crepe.study.plan import make_plan
from crepe.study.runner import run_state

TINY = ["--epochs", "1", "--train-subset", "300", "--test-subset", "200"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


# ---------------------------------------------------------------------------
# The plan (no training).


def test_plan_names_flags_and_nodp_dedup() -> None:
    plan = make_plan(
        grid={"method": ["full", "craig"], "sigma": ["1", "3"], "privacy": ["dp", "nodp"], "seed": ["0", "1"]},
        fixed={"epochs": "2"},
    )
    names = [r.name for r in plan.runs]
    assert len(names) == len(set(names)) == 2 * (2 + 1) * 2  # method x (2 sigmas + one nodp) x seeds
    assert "mnist_cnn_craig_sigma3_seed1" in names and "mnist_cnn_full_nodp_seed0" in names
    spec = next(r for r in plan.runs if r.name == "mnist_cnn_craig_sigma3_seed1")
    assert spec.train_args() == ["--dataset", "mnist", "--model", "cnn", "--method", "craig", "--sigma", "3", "--seed", "1", "--epochs", "2"]
    nodp = next(r for r in plan.runs if r.name == "mnist_cnn_full_nodp_seed0")
    assert "--no-dp" in nodp.train_args() and "--sigma" not in nodp.train_args()
    # the same request always gives the same runs in the same order
    assert [r.name for r in make_plan(grid={"method": ["full", "craig"], "sigma": [1, 3], "privacy": ["dp", "nodp"],
                                                  "seed": [0, 1]}, fixed={"epochs": 2}).runs] == names


def test_extra_axes_name_only_the_runs_they_change() -> None:
    plan = make_plan(grid={"method": ["full", "craig"], "fraction": ["0.1", "0.2"]})
    assert [r.name for r in plan.runs] == [
        "mnist_cnn_full_sigma1_seed0",  # full selects nothing: one run, not two
        "mnist_cnn_craig_sigma1_fraction0.1_seed0",
        "mnist_cnn_craig_sigma1_fraction0.2_seed0",
    ]


def test_presets() -> None:
    paper = make_plan(grid={}, preset="paper")
    assert len(paper.runs) == 1 * 2 * 3 * (3 + 1) * 3  # dataset x model x method x (sigmas + nodp) x seeds
    args = next(r for r in paper.runs if "_craig_" in r.name).train_args()  # a full run drops --fraction etc.
    for flag, value in (("--dataset", "mnist"), ("--epochs", "50"), ("--select-every", "20"), ("--fraction", "0.1"),
                        ("--max-grad-norm", "1"), ("--delta", "1e-05")):
        assert args[args.index(flag) + 1] == value
    assert {r.name.split("_")[1] for r in paper.runs} == {"cnn", "resnet"}
    quick = make_plan(grid={"sigma": ["2"]}, preset="quick")  # options override the preset
    assert {dict(r.settings).get("sigma") for r in quick.runs} == {2.0, None}
    assert all(dict(r.settings)["dataset"] == "fashion-mnist" for r in quick.runs)


def test_every_option_is_a_sweep_flag_and_every_grid_option_a_report_axis() -> None:
    from crepe.config import options
    from crepe.study import grid

    flags = {a.dest: a.option_strings[0] for a in sweep.build_parser()._actions if a.option_strings}
    for name, spec in options().items():
        if spec.machine:
            continue
        kind = "grid" if spec.grid else "fixed"
        key = {"dp": "privacy", "preset": "train-preset"}.get(name, name.replace("_", "-"))
        assert f"{kind}:{key}" in flags, name
        if spec.grid and name != "seed":
            assert name in results.axes()
    assert flags["grid:seed"] == "--seeds" and flags["fixed:train-preset"] == "--train-preset"
    assert set(grid.axes()) | set(grid.fixed()) == {s.key for s in [*grid.axes().values(), *grid.fixed().values()]}


def test_a_new_grid_option_needs_no_edit_in_sweep_or_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Declaring an option grid=True in crepe.config is all it takes (momentum stands in for a new option)."""
    import dataclasses

    from crepe import config

    real = config.options

    def declared() -> dict:
        return {n: dataclasses.replace(s, grid=True) if n == "momentum" else s for n, s in real().items()}

    monkeypatch.setattr(config, "options", declared)
    plan = make_plan(grid={"method": ["craig"], "momentum": ["0", "0.9"]})
    assert [r.name for r in plan.runs] == ["mnist_cnn_craig_sigma1_momentum0_seed0", "mnist_cnn_craig_sigma1_momentum0.9_seed0"]
    args = plan.runs[1].train_args()
    assert args[args.index("--momentum") + 1] == "0.9"
    assert "--momentum" in sweep.build_parser().format_help().split("grid options")[1].split("fixed settings")[0]
    from test_report import write_run

    for m in (0.0, 0.9):
        write_run(tmp_path, f"m{m}", method="craig", momentum=m, seed=0, test_acc=0.5 + m / 10)
    rows = results.aggregate(results.find_runs(tmp_path)[0])
    assert [r.k["momentum"] for r in rows] == [0.0, 0.9] and "momentum" in results.varying_axes(rows)


def test_new_axes_and_fixed_settings() -> None:
    plan = make_plan(grid={"method": ["full", "craig"], "privacy": ["dp", "nodp"], "target-epsilon": ["1", "3"],
                                 "clipping": ["flat", "automatic"], "activation": ["tanh"]},
                           fixed={"diagnostics": True, "train-preset": "dp-recipe", "momentum": "0.5", "noise": "reproducible"})
    names = [r.name for r in plan.runs]
    assert len(names) == 2 * (2 * 2 + 1)  # method x (target eps x clipping + one nodp)
    assert "mnist_cnn_craig_eps3_clippingautomatic_seed0" in names and "mnist_cnn_full_nodp_seed0" in names
    args = next(r for r in plan.runs if r.name == "mnist_cnn_craig_eps3_clippingautomatic_seed0").train_args()
    assert "--sigma" not in args and args[args.index("--target-epsilon") + 1] == "3"
    for flag, value in (("--activation", "tanh"), ("--clipping", "automatic"), ("--preset", "dp-recipe"), ("--momentum", "0.5"),
                        ("--noise", "reproducible")):
        assert args[args.index(flag) + 1] == value
    assert "--diagnostics" in args
    nodp = next(r for r in plan.runs if r.name == "mnist_cnn_full_nodp_seed0").train_args()
    assert "--no-dp" in nodp and not {"--sigma", "--target-epsilon", "--clipping", "--diagnostics"} & set(nodp)
    # a method's ignored options (methods.ignores) make no extra runs: random ignores the weighting
    plan = make_plan(grid={"method": ["random", "craig"], "weights": ["none", "weight-then-clip"]})
    assert [r.name for r in plan.runs] == ["mnist_cnn_random_sigma1_seed0", "mnist_cnn_craig_sigma1_weightsnone_seed0",
                                           "mnist_cnn_craig_sigma1_weightsweight-then-clip_seed0"]
    # floats are passed exactly
    assert make_plan(grid={"method": ["full"], "sigma": ["0.123456789"]}).runs[0].train_args()[-3] == "0.123456789"


def test_help_describes_presets_and_first_n(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(sweep.build_parser().format_help().split())
    assert "quick: 18 runs" in text and "paper: 72 runs" in text and "min on 2 cores" in text
    assert "use the first N training examples" in text and "seeded" not in text
    assert "(default: 50)" in text  # --epochs: crepe train's default, from its declaration


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lambda", "1"], "unknown option(s) --lambda 1 (see crepe sweep --help)"),
        (["--seed", "0"], "(did you mean --seeds?)"),  # no abbreviations: the grid key is --seeds
        (["--method", "craig", "coreset"], "unknown method 'coreset'; valid: full, random, craig, private-set"),
        (["--model", "vit"], "valid: cnn, resnet"),
        (["--sigma", "0"], "--sigma must be > 0 with DP on, got 0"),
        (["--sigma", "one"], "--sigma must be a number, got 'one'"),
        (["--privacy", "maybe"], "valid: dp, nodp"),
        (["--preset", "huge"], "unknown preset 'huge'; valid: paper, quick"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--fraction", "1.5"], "--fraction must be a finite number > 0 and <= 1, got 1.5"),
        (["--jobs", "0"], "--jobs must be an integer >= 1, got 0"),
        (["--threads", "x"], "--threads must be an integer, got 'x'"),
        (["--sigma", "1", "--target-epsilon", "3"], "--target-epsilon solves sigma: give --sigma or --target-epsilon, not both"),
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),  # crepe train's own rule
        (["--train-preset", "fast"], "unknown train preset 'fast'; valid: seed-protocol, dp-recipe"),
        (["--out"], "expected one argument (see crepe sweep --help)"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert sweep.main(["--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crepe sweep: error:") and message in err
    assert not (tmp_path / "s").exists()  # nothing written


def test_refuses_a_directory_that_is_not_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert sweep.main(["--out", str(tmp_path), "--dry-run"]) == 2
    assert "is not empty and has no sweep.json" in capsys.readouterr().err


def test_cli_dispatch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from crepe.cli import main

    assert main(["sweep", "--out", str(tmp_path / "s"), "--method", "craig", "--dry-run"]) == 0
    assert "mnist_cnn_craig_sigma1_seed0 [new]: crepe train --out" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "none")]) == 2


# ---------------------------------------------------------------------------
# End to end, with real `crepe train` runs.


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, list[str], float]:
    """A 2 x 2 sweep (full/craig x sigma 1/3) of one-epoch runs on 300 images."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    argv = ["--out", str(out), "--dataset", "fashion-mnist", "--method", "full", "craig", "--sigma", "1", "3",
            *TINY, "--data-dir", str(data_root), "--jobs", "2"]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "crepe", "sweep", *argv], capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stdout + r.stderr
    return out, argv, time.perf_counter() - t0


NAMES = {f"fashion-mnist_cnn_{m}_sigma{s}_seed0" for m in ("full", "craig") for s in (1, 3)}


def test_tiny_sweep_completes(tiny_sweep: tuple[Path, list[str], float]) -> None:
    out, _, _ = tiny_sweep
    manifest = json.loads((out / "sweep.json").read_text())
    assert set(manifest["runs"]) == NAMES
    assert all(r["status"] == "complete" and r["returncode"] == 0 for r in manifest["runs"].values())
    assert manifest["failures"] == {}
    assert manifest["grid"]["method"] == ["full", "craig"] and manifest["fixed"]["train-subset"] == 300
    for name in NAMES:
        cfg = json.loads((out / name / "config.json").read_text())
        assert (cfg["method"], cfg["train_subset"], cfg["epochs"]) == (name.split("_")[2], 300, 1)
        assert json.loads((out / name / "summary.json").read_text())["status"] == "complete"
        assert (out / "logs" / f"{name}.log").is_file()


def test_rerun_skips_complete_runs(
    tiny_sweep: tuple[Path, list[str], float], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, argv, _ = tiny_sweep
    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in NAMES}
    started: list = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: (started.append(a[0]) if "train" in a[0] else None) or real_popen(*a, **k))
    assert sweep.main(argv) == 0  # same grid
    assert sweep.main(["--out", str(out)]) == 0  # no grid: the recorded one
    assert started == []  # no training process was started
    assert "4 runs in" in capsys.readouterr().out
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in NAMES} == stamps


def test_a_different_grid_is_refused_unless_extended(tiny_sweep: tuple[Path, list[str], float],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, argv, _ = tiny_sweep
    before = (out / "sweep.json").read_text()
    changed = [a if a != "3" else "5" for a in argv]
    assert sweep.main(changed) == 2
    err = capsys.readouterr().err
    assert "already holds a sweep with a different grid" in err and "grid sigma: existing [1.0, 3.0], requested [1.0, 5.0]" in err
    assert "--extend" in err
    more_epochs = list(argv)
    more_epochs[more_epochs.index("--epochs") + 1] = "2"
    assert sweep.main(more_epochs) == 2  # a fixed setting too
    assert "fixed epochs: existing 1, requested 2" in capsys.readouterr().err
    assert (out / "sweep.json").read_text() == before
    assert sweep.main([*changed, "--extend", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and sum("[complete]" in line for line in lines) == 4
    assert any(line.startswith("fashion-mnist_cnn_craig_sigma5_seed0 [new]") for line in lines)


def test_resume_after_interruption_before_summary(tiny_sweep: tuple[Path, list[str], float],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, argv, _ = tiny_sweep
    run = out / "fashion-mnist_cnn_craig_sigma1_seed0"
    old = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()  # killed after its last checkpoint, before the summary
    assert sweep.main(argv) == 0
    o = capsys.readouterr().out
    assert "3 complete, 1 to run" in o and "fashion-mnist_cnn_craig_sigma1_seed0 resumed and finished" in o
    new = json.loads((run / "summary.json").read_text())
    assert new["status"] == "complete" and new["eps_total"] == old["eps_total"] and new["test_acc"] == old["test_acc"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # continued, not retrained
    assert "--resume" in (out / "logs" / f"{run.name}.log").read_text().splitlines()[0]
    assert json.loads((out / "sweep.json").read_text())["runs"][run.name]["resumed"] is True


def test_report_on_the_tiny_sweep(tiny_sweep: tuple[Path, list[str], float], tmp_path: Path) -> None:
    out, _, _ = tiny_sweep
    assert report.main([str(out), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    body = [line for line in md.splitlines() if line.startswith("| cnn |")]
    assert [line.split(" | ")[1:4] for line in body] == [
        ["full", "DP", "1"], ["craig", "DP", "1"], ["full", "DP", "3"], ["craig", "DP", "3"]]
    assert "train_subset=300" in md and "epochs=1" in md
    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["sigma"]) for r in rows] == [("full", "1.0"), ("craig", "1.0"), ("full", "3.0"), ("craig", "3.0")]
    for r in rows:
        assert 0 <= float(r["test_acc_mean"]) <= 1 and float(r["eps_total_mean"]) > 0
        assert (float(r["eps_select_mean"]) > 0) == (r["method"] == "craig")  # full data selects nothing
        assert float(r["speedup_vs_full"]) > 0
    for name in plots.PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_failing_configuration_does_not_stop_the_others(tmp_path: Path, data_root: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    only_fashion = tmp_path / "data"
    only_fashion.mkdir()
    (only_fashion / "fashion-mnist").symlink_to(data_root / "fashion-mnist")  # no mnist/: mnist runs fail
    out = tmp_path / "s"
    argv = ["--out", str(out), "--dataset", "mnist", "fashion-mnist", "--method", "random", *TINY,
            "--data-dir", str(only_fashion), "--jobs", "2"]
    assert sweep.main(argv) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "mnist_cnn_random_sigma1_seed0: exit 2" in err
    manifest = json.loads((out / "sweep.json").read_text())
    failed = manifest["failures"]["mnist_cnn_random_sigma1_seed0"]
    assert failed["returncode"] == 2 and "mnist" in failed["tail"] and failed["log"] == "logs/mnist_cnn_random_sigma1_seed0.log"
    assert manifest["runs"]["fashion-mnist_cnn_random_sigma1_seed0"]["status"] == "complete"
    # a re-run retries only the failure
    assert sweep.main(["--out", str(out)]) == 1
    assert "1 complete, 1 to run" in capsys.readouterr().out
    assert manifest["runs"]["mnist_cnn_random_sigma1_seed0"].get("attempts") == 1
    assert json.loads((out / "sweep.json").read_text())["runs"]["mnist_cnn_random_sigma1_seed0"]["attempts"] == 2
    # the report covers what finished
    rows = results.aggregate(results.find_runs(out)[0])
    assert [(r.k["dataset"], r.k["method"]) for r in rows] == [("fashion-mnist", "random")]


def test_a_killed_sweep_resumes_mid_run(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    argv = ["--out", str(out), "--dataset", "fashion-mnist", "--method", "full", "--epochs", "3", "--train-subset", "3000",
            "--test-subset", "200", "--data-dir", str(data_root), "--threads", "1"]
    run = out / "fashion-mnist_cnn_full_sigma1_seed0"
    # A shell's background job starts with SIGINT ignored, and Python then installs no Ctrl-C handler:
    # give the sweep the default disposition, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "crepe", "sweep", *argv], env=env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "the run never reached its first epoch"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the sweep and its training process
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr
    assert not (run / "summary.json").exists() and (run / "checkpoint.pt").is_file()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 3
    assert sweep.main(argv) == 0
    assert "resumed and finished" in capsys.readouterr().out
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_sigterm_stops_the_sweep_with_one_line_and_status_143(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "s"
    argv = ["--out", str(out), "--dataset", "fashion-mnist", "--method", "full", *TINY, "--data-dir", str(data_root), "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "crepe", "sweep", *argv], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "logs").is_dir() or not any((out / "logs").iterdir()):  # the training process has started
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep never started its run"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # the sweep only, as a service manager would
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["crepe sweep: interrupted; re-run the same command to resume"]
    # nothing lost: the manifest records the run as its folder is (new, interrupted and resumable, or, if
    # the run outlived its SIGTERM while importing torch, complete)
    manifest = json.loads((out / "sweep.json").read_text())
    name = "fashion-mnist_cnn_full_sigma1_seed0"
    assert manifest["runs"][name]["status"] == run_state(out / name)


def test_dry_run_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`crepe sweep --dry-run | head -1`: the output (~150 kB) overflows the pipe after head has gone."""
    seeds = [str(i) for i in range(400)]
    proc = subprocess.Popen([sys.executable, "-m", "crepe", "sweep", "--out", str(tmp_path / "s"), "--dry-run", "--seeds", *seeds],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"mnist_cnn_full_sigma1_seed0 [new]")
    proc.stdout.close()  # head -1 exits
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and stderr == ""


def test_eval_every_is_passed_to_every_run_and_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert sweep.main(["--out", str(tmp_path / "s"), "--method", "craig", "--eval-every", "5", "--dry-run"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("--eval-every 5")
    assert sweep.main(["--out", str(tmp_path / "s"), "--method", "craig", "--eval-every", "0", "--dry-run"]) == 2
    assert "--eval-every must be an integer >= 1" in capsys.readouterr().err
