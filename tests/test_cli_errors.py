"""Bad input to `crepe train`: exit status 2, one clear message on stderr, nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from crepe import _core, cli  # noqa: F401 (_core: an editable install rebuilds it on first import, before output capture)
from crepe.config import TrainConfig


def args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
            "--train-subset", "100", "--test-subset", "50", "--epochs", "1", *extra]


def fails(argv: list[str], capsys, match: str) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("crepe train: error:") or err.startswith("crepe: error:"), err
    assert match in err, err
    return err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'; valid: mnist, fashion-mnist, qmnist, kmnist, emnist-balanced, emnist-byclass, cifar10"),
        (["--model", "vgg"], "unknown model 'vgg'; valid: cnn, resnet"),
        (["--method", "kmeans"], "unknown method 'kmeans'; valid: full, random, craig, private-set"),
        (["--proxy", "full-grad"], "valid: logits, last-layer"),
        (["--weights", "scale"], "valid: clip-then-scale, weight-then-clip, none"),
        (["--optimizer", "lbfgs"], "valid: sgd, adam, adam-bc"),
        (["--accountant", "gdp"], "valid: pld, rdp, prv"),
        (["--selection-scope", "class"], "valid: per-class, global"),
        (["--clipping", "auto"], "valid: flat, automatic, adaptive"),
        (["--sigma", "0"], "--sigma must be > 0 with DP on"),
        (["--sigma", "-1"], "--sigma must be a finite number >= 0, got -1.0"),
        (["--sigma", "nan"], "--sigma must be a finite number >= 0, got nan"),
        (["--fraction", "0"], "--fraction must be a finite number > 0 and <= 1, got 0.0"),
        (["--fraction", "1.5"], "--fraction must be a finite number > 0 and <= 1"),
        (["--fraction", "-0.1"], "--fraction must be a finite number > 0 and <= 1"),
        (["--select-every", "0"], "--select-every must be an integer >= 1, got 0"),
        (["--select-sigma", "-1"], "--select-sigma must be a finite number >= 0"),
        (["--delta", "1"], "--delta must be a finite number > 0 and <= 0.5"),
        (["--epochs", "0"], "--epochs must be an integer >= 1"),
        (["--epochs", "2.5"], "--epochs must be an integer, got '2.5'"),
        (["--fraction", "abc"], "--fraction must be a number, got 'abc'"),
        (["--frac", "0.2"], "unrecognized arguments: --frac"),  # no abbreviations
        (["--epoch", "2"], "unrecognized arguments: --epoch"),
        (["--no-dp", "--sigma", "2"], "--sigma 2.0 needs DP training"),
        (["--no-dp", "--clipping", "adaptive"], "--clipping adaptive needs DP training"),
        (["--no-dp", "--target-epsilon", "3"], "--target-epsilon 3.0 needs DP training"),
        (["--no-dp", "--diagnostics"], "--diagnostics needs DP training"),
        (["--target-epsilon", "3", "--sigma", "1"], "give one of them, not both"),
        (["--target-epsilon", "0"], "--target-epsilon must be a finite number > 0"),
        (["--target-epsilon", "nan"], "--target-epsilon must be a finite number > 0"),
        (["--target-epsilon", "1e-6"], "--target-epsilon 1e-06 is unreachable with this schedule: the smallest reachable epsilon is"),
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
        (["--preset", "fast"], "unknown preset 'fast'; valid: seed-protocol, dp-recipe"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags(data_root, tmp_path, capsys, extra: list[str], match: str) -> None:
    out = tmp_path / "run"
    fails(args(data_root, out, *extra), capsys, match)
    assert not out.exists()


def test_sigma_zero_is_fine_without_dp(data_root, tmp_path) -> None:
    from crepe.config import TrainConfig

    assert TrainConfig(dp=False, sigma=0.0).resolve().select_sigma == 0.0


def test_subset_too_large_is_refused_before_torch_loads(data_root, tmp_path) -> None:
    import subprocess

    code = (
        "import sys; from crepe import cli; rc = cli.main(sys.argv[1:]); "
        "print('torch' in sys.modules, rc)"
    )
    argv = args(data_root, tmp_path / "run")
    argv[argv.index("--train-subset") + 1] = "60001"
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "2"], out.stdout + out.stderr
    assert "--train-subset 60001 exceeds the 60000 train examples of fashion-mnist" in out.stderr


def test_version() -> None:
    import subprocess

    script = Path(sys.executable).with_name("crepe")
    assert subprocess.run([str(script), "--version"], capture_output=True, text=True).stdout.startswith("crepe 0.")


def test_usage_error_is_one_line(data_root, tmp_path, capsys) -> None:
    err = fails(args(data_root, tmp_path / "run", "--epochs", "0"), capsys, "--epochs")
    assert len(err.strip().splitlines()) == 1


def test_data_dir_without_files(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    err = fails(["train", "--out", str(out), "--dataset", "mnist", "--data-dir", str(empty)], capsys, "no mnist IDX files")
    assert "train-images-idx3-ubyte.gz" in err and "--data-dir" in err
    assert not out.exists()


def test_out_holding_user_files_is_not_touched(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    fails(args(data_root, out), capsys, "is not a crepe run")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"


def test_out_holding_a_different_run_is_refused(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(args(data_root, out)) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fails(args(data_root, out, "--sigma", "2"), capsys, "holds a different run (differs in select_sigma, sigma)")
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


def test_resume_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    fails(["train", "--resume", str(d)], capsys, "is not a crepe run folder (no config.json)")
    fails(["train", "--resume", str(tmp_path / "missing")], capsys, "no such directory")
    (d / "config.json").write_text("[1, 2]")
    fails(["train", "--resume", str(d)], capsys, "not a crepe run folder")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "notes.txt"]


def test_resume_does_not_take_run_flags(tmp_path, capsys) -> None:
    fails(["train", "--resume", str(tmp_path), "--epochs", "3"], capsys, "does not take --epochs")


def test_out_and_resume_are_exclusive(tmp_path, capsys) -> None:
    fails(["train", "--resume", str(tmp_path), "--out", str(tmp_path)], capsys, "not allowed with argument")


def test_help_and_unknown_command(capsys) -> None:
    assert cli.main(["--help"]) == 0
    assert "{train,sweep,report,epsilon,export,audit}" in capsys.readouterr().out
    assert cli.main(["train", "--help"]) == 0
    assert "--select-sigma" in capsys.readouterr().out
    assert cli.main(["fly"]) == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_missing_delegate_is_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "crepe.study.report", None)  # import now raises ModuleNotFoundError
    assert cli.main(["report", "x"]) == 2
    assert "crepe.study.report is not available" in capsys.readouterr().err


def test_messages_a_user_reads(tmp_path, capsys) -> None:
    """did-you-mean for a misspelt flag, a boolean's help without a misleading default, the presets'
    settings in the help, and an unreachable target's hint naming the method's own levers."""
    from crepe.privacy.calibration import Unreachable
    from crepe.training.plan import Plan

    assert cli.main(["train", "--out", str(tmp_path / "r"), "--epoch", "3"]) == 2
    assert "did you mean --epochs?" in capsys.readouterr().err
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: True)" not in text and "seed-protocol: --activation relu, --epochs 50" in text
    for method, lever, absent in (("full", "fewer --epochs", "--select-sigma"), ("craig", "--select-sigma", None)):
        cfg = TrainConfig(method=method, target_epsilon=1e-6, epochs=1).resolve()
        with pytest.raises(Unreachable, match="shorten the schedule") as e:
            Plan(cfg, n=300, set_size=300 if method == "full" else 30).solved()
        assert lever in str(e.value) and (absent is None or absent not in str(e.value))
