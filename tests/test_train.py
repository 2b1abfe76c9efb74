"""`crepe train` end to end on a few hundred real images (in-process through cli.main)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crepe import _core, cli, data  # noqa: F401 (_core: an editable install rebuilds it on first import, before output capture)
from crepe.config import TrainConfig
from crepe.smallsets.sets import class_budget
from crepe.training import loop, rundir, state

N_TRAIN, N_TEST, B = 300, 100, 10  # coreset 30: q = 1/3, 3 steps; full: q = 1/30, 30 steps
REQUIRED_METRICS = {
    "epoch", "train_loss", "train_acc", "test_acc", "eps_total", "eps_select", "eps_train",
    "eps_infinite", "select_time_s", "train_time_s", "examples_seen",
}
REQUIRED_SUMMARY = {
    "status", "test_acc", "train_acc", "eps_total", "eps_select", "eps_train", "delta", "select_time_s",
    "train_time_s", "total_time_s", "epochs", "labels_public", "caveat", "adjacency",
}


def base_args(data_root: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [
        "train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
        "--train-subset", str(N_TRAIN), "--test-subset", str(N_TEST), "--epochs", str(epochs),
        "--batch-size", str(B), *extra,
    ] + ([] if "full" in extra else ["--select-every", "1"])


def independent_eps(data_root: Path, summary: dict, *, method: str, epochs: int, select_every: int,
                    sigma: float = 1.0, select_sigma: float = 1.0) -> tuple[float, float, float]:
    """epsilon of the schedule the flags describe, computed from scratch with dp-accounting's PLD (the
    default accountant's library, at its grid), composed by hand."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    from crepe.privacy.accounting import PLD_GRID

    y = data.load("fashion-mnist", data_dir=str(data_root), train_subset=N_TRAIN, test_subset=N_TEST).y_train.numpy()
    size = N_TRAIN if method == "full" else sum(class_budget(int((y == c).sum()), 0.1) for c in np.unique(y))
    assert summary["coreset_size"] == size
    q = min(1.0, B / size)
    steps = epochs * max(1, int(1 / q))
    rounds = math.ceil(epochs / select_every) if method == "craig" else 0
    gaussian = lambda s, rate, times: pld.from_gaussian_mechanism(  # noqa: E731
        s, sampling_prob=rate, value_discretization_interval=PLD_GRID).self_compose(times)
    sel = gaussian(select_sigma, 1.0, rounds) if rounds else None
    trn = gaussian(sigma, q, steps)
    eps = lambda d: 0.0 if d is None else float(d.get_epsilon_for_delta(1e-5))  # noqa: E731
    return eps(trn if sel is None else sel.compose(trn)), eps(sel), eps(trn)


@pytest.mark.parametrize("method", ["craig", "random", "full"])
@pytest.mark.parametrize("dp", [True, False], ids=["dp", "nodp"])
def test_end_to_end(data_root, tmp_path, capsys, method: str, dp: bool) -> None:
    out = tmp_path / "run"
    draw = ["--random-draw", "fixed"] if method == "random" else []  # Poisson draws: tests/test_budgets.py
    args = base_args(data_root, out, "--method", method, *draw) + ([] if dp else ["--no-dp"])
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert REQUIRED_METRICS <= set(r)
        assert 0 <= r["test_acc"] <= 1 and r["examples_seen"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert REQUIRED_SUMMARY <= set(summary) and summary["status"] == "complete"
    assert summary["labels_public"] == (method != "full" and dp)  # no caveat on an infinite epsilon
    assert (summary["caveat"] is not None) == (method != "full" and dp)
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["dp"] == dp
    assert config["select_sigma"] == (1.0 if dp else 0.0) and config["lr"] == 0.1
    final = printed.out.strip().splitlines()[-1]
    assert final.startswith("crepe train: test accuracy ") and f"{summary['test_acc']:.4f}" in final
    assert not list(out.glob("*.tmp"))
    if dp:
        total, sel, trn = independent_eps(data_root, summary, method=method, epochs=2, select_every=1)
        assert summary["eps_total"] == pytest.approx(total, rel=1e-9)
        assert summary["eps_select"] == pytest.approx(sel, rel=1e-9, abs=1e-12)
        assert summary["eps_train"] == pytest.approx(trn, rel=1e-9)
        assert rows[-1]["eps_total"] == summary["eps_total"]
        assert rows[0]["eps_total"] < rows[1]["eps_total"]
        assert f"epsilon {total:.3f}" in final
    else:
        assert summary["eps_total"] is None and summary["eps_infinite"] is True
        assert rows[0]["eps_train"] is None and rows[0]["eps_train_infinite"] is True
        assert "epsilon inf" in final


def test_non_private_selection_reports_infinite_epsilon(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(base_args(data_root, out, "--select-sigma", "0", epochs=1)) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["eps_select"] is None and s["eps_select_infinite"] and s["eps_total"] is None and s["eps_infinite"]
    assert s["eps_train"] is not None and s["private_selection"] is False
    assert "epsilon inf (select inf, train" in capsys.readouterr().out


def test_global_scope_keeps_labels_private(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(base_args(data_root, out, "--selection-scope", "global", epochs=1)) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["labels_public"] is False and s["caveat"] is None and s["coreset_size"] == 30
    assert "labels treated as public" not in capsys.readouterr().out


def test_other_options_resnet_last_layer_adam_prv(data_root, tmp_path) -> None:
    out = tmp_path / "run"
    args = base_args(
        data_root, out, "--model", "resnet", "--proxy", "last-layer", "--optimizer", "adam",
        "--accountant", "prv", "--weights", "weight-then-clip", "--train-subset", "150", epochs=1,
    )
    assert cli.main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["accountant"] == "prv" and 0 < s["eps_select"] < s["eps_total"]
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3


def test_resume_reproduces_the_ledger(data_root, tmp_path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    flags = ["--epochs", "3", "--select-every", "2", "--noise", "reproducible"]
    assert cli.main(base_args(data_root, a) + flags) == 0
    # b: same run, interrupted after one epoch, then resumed.
    cfg = TrainConfig(
        dataset="fashion-mnist", data_dir=str(data_root), train_subset=N_TRAIN, test_subset=N_TEST,
        epochs=3, select_every=2, batch_size=B, noise="reproducible",
    ).resolve()
    assert rundir.prepare_out(cfg, b, {}) == "new"
    assert loop.run(cfg, b, stop_after_epochs=1)["status"] == "incomplete"
    assert not (b / "summary.json").exists() and len((b / "metrics.jsonl").read_text().splitlines()) == 1
    fp = data.load("fashion-mnist", data_dir=str(data_root), train_subset=N_TRAIN, test_subset=N_TEST).fingerprint
    ck = state.load(b / "checkpoint.pt", cfg=cfg, fingerprint=fp)
    assert ck["state"]["epoch"] == 1 and ck["state"]["ledger"][0]["kind"] == "select"
    assert cli.main(["train", "--resume", str(b)]) == 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sb["ledger"] == sa["ledger"]
    assert sb["eps_total"] == sa["eps_total"] and sb["eps_select"] == sa["eps_select"]
    ra, rb = ((d / "metrics.jsonl").read_text().splitlines() for d in (a, b))
    strip = lambda r: {k: v for k, v in json.loads(r).items() if not k.endswith("time_s")}  # noqa: E731
    assert [strip(r) for r in ra] == [strip(r) for r in rb]  # same model, batches, noise: same numbers
    # A finished run is not trained again, by --resume or by the same --out.
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(b)]) == 0
    assert cli.main(base_args(data_root, b) + flags) == 0
    assert capsys.readouterr().out.count("test accuracy") == 2
    assert sb == json.loads((b / "summary.json").read_text())
    # Its final line written into a closed pipe (`true` exits at once): a quiet exit, no traceback.
    script = Path(sys.executable).with_name("crepe")
    piped = subprocess.run(f"'{script}' train --resume '{b}' | true; exit ${{PIPESTATUS[0]}}", shell=True,
                           executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr


def test_console_script_smoke(data_root, tmp_path) -> None:
    script = Path(sys.executable).with_name("crepe")
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(script), *base_args(data_root, out, "--train-subset", "200", epochs=1)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("crepe train: test accuracy") and (out / "summary.json").is_file()
