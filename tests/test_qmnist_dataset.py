"""--dataset qmnist: QMNIST's own files (generated here in its format), its writers as the users."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_users import write_qmnist

from crepe import data
from crepe.cli import main
from crepe.config import UsageError
from crepe.privacy.accounting import epsilons
from crepe.training import inputs
from crepe.training.plan import Plan, new_run_config
from crepe.training.rundir import read_config

# 8 writers (NIST ids, not contiguous), 12 digits each, interleaved; writer 9001 holds 30 digits
TRAIN_WRITERS = np.concatenate([np.tile([40, 12, 3070, 515, 2200, 77, 1300, 608], 12), np.full(30, 9001)])
TEST_WRITERS = np.arange(40) + 5000


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_qmnist(tmp_path, "train", TRAIN_WRITERS)
    write_qmnist(tmp_path, "test", TEST_WRITERS)
    return tmp_path


def load(folder: Path, **given) -> data.LoadedData:
    return inputs.load_data(new_run_config({"dataset": "qmnist", "data_dir": str(folder), "method": "full", **given}))


def test_the_writers_are_the_users_numbered_by_their_sorted_ids(folder: Path) -> None:
    ds = load(folder)
    writers = np.unique(TRAIN_WRITERS)
    assert ds.users == len(writers) == 9
    assert ds.user_ids.tolist() == np.searchsorted(writers, TRAIN_WRITERS).tolist()
    assert (ds.max_per_user, ds.max_per_user_public) == (150, True)  # k as QMNIST documents it, fixed in advance
    assert len(ds.y_test) == len(TEST_WRITERS) and ds.x_train.shape == (len(TRAIN_WRITERS), 1, 28, 28)
    assert data.split_sizes(data.resolve_source("qmnist", str(folder))) == {"train": 126, "test": 40}
    # the users enter the fingerprint: the same labels with other writers resume nowhere
    other = folder / "other"
    other.mkdir()
    write_qmnist(other, "train", TRAIN_WRITERS[::-1].copy())
    write_qmnist(other, "test", TEST_WRITERS)
    moved = load(other)
    assert torch.equal(moved.y_train, ds.y_train) and moved.fingerprint != ds.fingerprint


def test_subsets_and_held_out_classes_renumber_the_writers_left(folder: Path) -> None:
    ds = load(folder, train_subset=20)  # the first 20 digits: all 8 interleaved writers, not 9001
    assert ds.users == 8 and sorted(set(ds.user_ids.tolist())) == list(range(8))
    full = load(folder)
    held = load(folder, held_out_classes=3)
    kept = full.y_train < 7
    assert torch.equal(held.y_train, full.y_train[kept])
    left = np.unique(full.user_ids[kept].numpy())
    assert held.users == len(left)
    assert held.user_ids.tolist() == np.searchsorted(left, full.user_ids[kept].numpy()).tolist()


def test_a_declared_k_below_a_writers_digits_is_refused(folder: Path) -> None:
    assert load(folder, max_per_user=30).max_per_user == 30
    with pytest.raises(UsageError, match="holds 30 examples, more than max_per_user k = 29"):
        load(folder, max_per_user=29)


def test_a_user_level_run_on_qmnist_samples_its_writers(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--dataset", "qmnist", "--data-dir", str(folder), "--method", "full",
                 "--privacy-unit", "user", "--algorithm", "dp-sgd", "--users-per-round", "3", "--epochs", "1",
                 "--sigma", "1.0", "--batch-size", "16"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "9 NIST writers (the users)" in err and "no training split offline" not in err
    summary = json.loads((out / "summary.json").read_text())
    plan = Plan.for_data(read_config(out), load(folder))
    ledger = plan.ledger()
    assert ledger.unit == "user" and ledger[-1].sample_rate == pytest.approx(3 / 9)
    cfg = plan.cfg
    assert summary["eps_total"] == pytest.approx(epsilons(ledger, delta=cfg.delta, accountant=cfg.accountant)["total"])
    dry = main(["train", "--dry-run", "--dataset", "qmnist", "--data-dir", str(folder), "--method", "full",
                "--privacy-unit", "user", "--users-per-round", "3", "--epochs", "1", "--sigma", "1.0"])
    assert dry == 0 and "per user" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--users", "synthetic"], "--users synthetic with --dataset qmnist: QMNIST's users are its writers already"),
    (["--pretrain", "mnist"], "--pretrain mnist holds the images of the private --dataset qmnist"),
])
def test_qmnist_refuses_users_and_pretraining_of_its_own_images(folder: Path, args, message, capsys) -> None:
    code = main(["train", "--out", "/nonexistent/never", "--dataset", "qmnist", "--data-dir", str(folder),
                 "--method", "full", *args])
    assert code == 2 and message in capsys.readouterr().err


def test_a_folder_without_qmnist_files_names_them(tmp_path: Path, capsys) -> None:
    code = main(["train", "--dry-run", "--dataset", "qmnist", "--data-dir", str(tmp_path), "--method", "full"])
    err = capsys.readouterr().err
    assert code == 2 and "no QMNIST files in" in err and "qmnist-train-labels-idx2-int.gz" in err
