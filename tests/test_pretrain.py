"""--pretrain: public pretraining on another dataset, its provenance beside epsilon, never re-run on resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from crepe.cli import main
from crepe.models import build_model

ARGS = ["--dataset", "fashion-mnist", "--train-subset", "600", "--test-subset", "200", "--method", "full",
        "--sigma", "1.5", "--epochs", "2", "--batch-size", "60", "--pretrain", "mnist", "--noise", "reproducible",
        "--threads", "1"]


def test_pretraining_is_recorded_and_a_resume_does_not_repeat_it(tmp_path: Path, data_root: Path, capsys,
                                                                  monkeypatch) -> None:
    from crepe.training import pretrain

    calls = []
    real = pretrain.pretrain
    monkeypatch.setattr(pretrain, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    from crepe.training import loop

    from crepe.training import rundir
    from crepe.training.inputs import load_data
    from crepe.training.plan import Plan, new_run_config, resolved_threads

    cfg_args = ["train", "--out", str(tmp_path / "run"), "--data-dir", str(data_root), *ARGS]

    assert main(cfg_args) == 0
    out = capsys.readouterr()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    p = summary["pretrain"]
    assert p["dataset"] == "mnist" and p["examples"] == 8000 and p["epochs"] == 1 and len(p["weights_sha256"]) == 64
    assert card["pretrain"] == p
    assert "pretrained on public mnist (not covered)" in out.out
    assert "pretrained without privacy on public mnist (8000 examples" in out.err
    assert len(calls) == 1
    # a run stopped after its first epoch resumes from its checkpoint, without pretraining again
    cfg = new_run_config({"data_dir": str(data_root), **_given(ARGS)})
    cfg = resolved_threads(Plan.for_data(cfg, load_data(cfg)).cfg)
    rundir.prepare_out(cfg, tmp_path / "two", {})
    loop.run(cfg, tmp_path / "two", stop_after_epochs=1, log=lambda s: None)
    loop.run(cfg, tmp_path / "two", log=lambda s: None)
    assert len(calls) == 2
    resumed = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert resumed["pretrain"]["weights_sha256"] == p["weights_sha256"]  # seeded from --seed: the same weights
    assert resumed["eps_total"] == summary["eps_total"]
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("run", "two"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # reproducible noise: the resumed run is the same run


def test_pretraining_moves_the_weights_away_from_their_initialisation(data_root: Path) -> None:
    from crepe.training.plan import new_run_config
    from crepe.training.pretrain import pretrain

    cfg = new_run_config({"data_dir": str(data_root), **_given(ARGS)})
    torch.manual_seed(0)
    model = build_model("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pretrain(model, cfg, seed=0, say=lambda s: None)
    with torch.no_grad():
        from crepe.data import load

        mnist = load("mnist", data_dir=str(data_root))
        acc = float((model(mnist.x_test).argmax(1) == mnist.y_test).float().mean())
    assert acc > 0.8  # one epoch on 8,000 digits
    assert not any(torch.equal(before[k], v) for k, v in model.state_dict().items() if k.endswith("weight"))


def test_the_private_dataset_cannot_be_its_own_public_pretraining(capsys) -> None:
    assert main(["train", "--dry-run", "--dataset", "mnist", "--pretrain", "mnist"]) == 2
    assert "--pretrain mnist holds the images of the private --dataset mnist" in capsys.readouterr().err


def _given(args: list[str]) -> dict:
    from crepe.cli import train_parser
    from crepe.config import options

    ns = train_parser().parse_args(["--dry-run", *args])
    return {k: v for k, v in vars(ns).items() if k in set(options())}
