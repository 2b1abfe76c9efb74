"""What a user takes out of crepe: the plan before a run (--dry-run), the publishable model of a
finished run (model.pt + model.json; `crepe export` for older runs), and epsilon at another delta
(`crepe epsilon`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from crepe import cli, data
from crepe.models import build_model
from crepe.privacy.accounting import epsilons
from crepe.training import export

ARGS = ["--dataset", "fashion-mnist", "--train-subset", "400", "--test-subset", "100", "--batch-size", "40",
        "--epochs", "2", "--threads", "1"]


def run(data_root: Path, out: Path, *extra: str) -> dict:
    assert cli.main(["train", "--out", str(out), "--data-dir", str(data_root), *ARGS, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("method", ["craig", "full"])
def test_dry_run_prints_the_sigma_and_epsilon_the_run_ends_with(data_root, tmp_path, capsys, method) -> None:
    argv = ["train", "--dry-run", "--data-dir", str(data_root), *ARGS, "--method", method, "--target-epsilon", "4"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    sigma = float(re.search(r"sigma ([0-9.]+) \(solved for --target-epsilon 4\)", out).group(1))
    planned = re.search(r"planned epsilon ([0-9.]+) \(select ([0-9.]+), train ([0-9.]+)\) per example", out).groups()
    assert "nothing was written" in out and not list(tmp_path.iterdir())
    s = run(data_root, tmp_path / "run", "--method", method, "--target-epsilon", "4")
    assert f"{s['sigma']:.4g}" == f"{sigma:.4g}"
    assert planned == tuple(f"{s[k]:.3f}" for k in ("eps_total", "eps_select", "eps_train"))
    assert f"| sigma {s['sigma']:.4g}" in capsys.readouterr().out  # the summary line says sigma too


def test_dry_run_reads_labels_only(data_root, monkeypatch, capsys) -> None:
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("--dry-run loaded the images"))
    assert cli.main(["train", "--dry-run", "--data-dir", str(data_root), *ARGS, "--method", "random"]) == 0
    assert "planned epsilon" in capsys.readouterr().out


def test_a_finished_run_writes_a_model_that_plain_torch_loads(data_root, tmp_path) -> None:
    out = tmp_path / "run"
    s = run(data_root, out, "--method", "full", "--model", "cnn", "--activation", "tanh")
    card = json.loads((out / export.MODEL_CARD).read_text())
    assert card["model"] == "cnn" and card["activation"] == "tanh" and card["unit"] == "example"
    assert card["eps_total"] == s["eps_total"] and card["delta"] == s["delta"] and card["sigma"] == s["sigma"]
    assert not {"ledger", "generators", "coreset", "fingerprint", "examples_seen"} & set(card)  # nothing secret
    state = torch.load(out / export.MODEL, weights_only=True)  # plain torch, a state_dict
    model = build_model("cnn", activation="tanh")
    model.load_state_dict(state)
    ds = data.load("fashion-mnist", data_dir=str(data_root), train_subset=400, test_subset=100)
    with torch.no_grad():
        correct = int((model.eval()(ds.x_test).argmax(1) == ds.y_test).sum())
    assert correct / len(ds.y_test) == s["test_acc"]  # the very model the run evaluated


def test_export_writes_the_model_of_an_older_run(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    run(data_root, out, "--method", "craig")
    before = torch.load(out / export.MODEL, weights_only=True)
    (out / export.MODEL).unlink()
    (out / export.MODEL_CARD).unlink()  # as a run of an older crepe left it
    assert cli.main(["export", str(out)]) == 0
    after = torch.load(out / export.MODEL, weights_only=True)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (out / export.MODEL_CARD).is_file() and "wrote" in capsys.readouterr().out
    assert cli.main(["export", str(tmp_path / "nothing")]) == 2
    assert "no complete run" in capsys.readouterr().err


def test_epsilon_at_another_delta(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    s = run(data_root, out, "--method", "full")
    capsys.readouterr()
    assert cli.main(["epsilon", str(out), "--delta", "1e-6"]) == 0
    printed = float(re.search(r"crepe epsilon: ([0-9.]+) ", capsys.readouterr().out).group(1))
    assert printed == pytest.approx(epsilons(s["ledger"], delta=1e-6, accountant=s["accountant"])["total"], abs=5e-4)
    assert printed > s["eps_total"]  # a smaller delta costs more epsilon
    assert cli.main(["epsilon", str(out), "--delta", "0.9"]) == 2
    assert "--delta" in capsys.readouterr().err
