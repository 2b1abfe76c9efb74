"""Run-level guarantees: training learns, damaged folders are refused, DP noise is secret by
default, --target-epsilon ends where it says, diagnostics, resume from anywhere, tidy interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crepe import _core, cli  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.training import plan, rundir


def train_args(data_root: Path, out: Path, *extra: str, n: int = 300) -> list[str]:
    return ["train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
            "--train-subset", str(n), "--test-subset", "200", "--batch-size", "20", "--threads", "1", *extra]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_training_learns_with_and_without_dp(data_root, tmp_path, capsys) -> None:
    """A sign or scale fault (ascending the loss, noise far too large) is caught here."""
    plain, dp = tmp_path / "plain", tmp_path / "dp"
    common = ["--method", "full", "--epochs", "3", "--lr", "0.1", "--noise", "reproducible"]  # not flaky
    assert cli.main(train_args(data_root, plain, *common, "--no-dp", n=2000)) == 0
    assert cli.main(train_args(data_root, dp, *common, "--sigma", "0.5", "--max-grad-norm", "1", n=2000)) == 0
    assert summary(plain)["test_acc"] >= 0.60
    assert summary(dp)["test_acc"] >= 0.35  # chance is 0.10


def stopped_after_one_epoch(data_root: Path, out: Path, **kw) -> None:
    """A run folder as a crash after epoch 1 of 3 leaves it (checkpoint, metrics.jsonl, config.json)."""
    from crepe.config import TrainConfig
    from crepe.training import loop

    c = TrainConfig(**{**dict(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=200,
                              batch_size=20, method="full", epochs=3, threads=1), **kw}).resolve()
    assert rundir.prepare_out(c, out, {}) == "new"
    assert loop.run(c, out, stop_after_epochs=1, log=lambda s: None)["status"] == "incomplete"


def refused_untouched(out: Path, argv: list[str], capsys, match: str) -> None:
    """`crepe train` exits 2 naming the problem, and every file of the folder stays as it was."""
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_corrupted_checkpoint_is_refused_and_left_as_it_was(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    stopped_after_one_epoch(data_root, out, method="random", select_every=1)
    ck = out / "checkpoint.pt"
    raw = bytearray(ck.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(64)  # what the outside test did
    ck.write_bytes(bytes(raw))
    refused_untouched(out, ["train", "--resume", str(out)], capsys, "damaged (checksum mismatch)")


def test_metrics_that_disagree_with_the_checkpoint_are_refused(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    stopped_after_one_epoch(data_root, out)
    rows = rundir.read_metrics(out)
    rows[0]["eps_total"] = rows[0]["eps_total"] / 2  # an under-reported epsilon
    rundir.write_metrics(out / "metrics.jsonl", rows)
    refused_untouched(out, ["train", "--resume", str(out)], capsys, "does not match the checkpoint")


def test_an_old_checkpoint_with_clip_count_releases_is_refused_not_resumed(data_root, tmp_path, capsys) -> None:
    """Older crepe accounted adaptive clipping's count as a release apart from its step's gradient (an
    under-reported epsilon). Its checkpoints, checksummed and otherwise valid, must never be resumed."""
    import hashlib
    import io

    from crepe.training import state

    out = tmp_path / "run"
    stopped_after_one_epoch(data_root, out, clipping="adaptive")
    ck = out / "checkpoint.pt"
    raw = ck.read_bytes()
    payload = torch.load(io.BytesIO(raw[len(state.MAGIC) + 65 :]), weights_only=True)
    [entry] = payload["state"]["ledger"]  # 15 steps of the new joint release
    old_ledger = []  # what the old optimizer recorded: per step a "train" and a "clip-count" entry
    for _ in range(entry["steps"]):
        old_ledger.append({"kind": "train", "noise_multiplier": 1.0, "sample_rate": entry["sample_rate"], "steps": 1})
        old_ledger.append({"kind": "clip-count", "noise_multiplier": 1.0, "sample_rate": entry["sample_rate"], "steps": 1})
    payload["state"]["ledger"] = old_ledger
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    ck.write_bytes(state.MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)  # a valid checksum
    refused_untouched(out, ["train", "--resume", str(out)], capsys,
                      "the privacy ledger holds a 'clip-count' entry, written by an older crepe")
    assert cli.main(["train", "--resume", str(out)]) == 2
    assert "so the epsilon recorded for this run was under-reported; this run cannot be resumed" in capsys.readouterr().err


def test_dp_noise_is_secret_by_default_and_reproducible_only_on_request(data_root, tmp_path, capsys) -> None:
    runs = {}
    for name, extra in [("s1", []), ("s2", []), ("r1", ["--noise", "reproducible"]), ("r2", ["--noise", "reproducible"])]:
        out = tmp_path / name
        assert cli.main(train_args(data_root, out, "--method", "craig", "--epochs", "1", "--seed", "4", *extra)) == 0
        runs[name] = (summary(out), json.loads((out / "config.json").read_text()), capsys.readouterr().out)
    losses = {k: rundir.read_metrics(tmp_path / k)[0]["train_loss"] for k in runs}
    assert losses["r1"] == losses["r2"]  # same seed, reproducible noise: the same numbers
    assert losses["s1"] != losses["s2"]  # same seed, secret noise: different noise
    assert runs["s1"][1]["noise"] == "secret" and runs["r1"][1]["noise"] == "reproducible"
    assert runs["s1"][0]["noise_caveat"] is None and "seed is kept secret" in runs["r1"][0]["noise_caveat"]
    assert "valid only if the seed is secret" in runs["r1"][2] and "seed is secret" not in runs["s1"][2]
    # No generator state in the JSON files (but the note that says where they went); the finished
    # checkpoint holds none either (tests/test_run_secrets.py reads every file byte for byte).
    for name in ("s1", "r1"):
        text = "".join((tmp_path / name / f).read_text() for f in ("config.json", "summary.json", "metrics.jsonl"))
        assert "generator" not in text.replace(runs[name][0]["checkpoint_note"], "")


@pytest.mark.parametrize(
    ("method", "extra"),
    [("full", []), ("random", []), ("craig", []), ("full", ["--clipping", "adaptive", "--batch-size", "100"]),
     ("full", ["--clipping", "automatic"]), ("craig", ["--select-sigma", "8"]), ("random", ["--random-draw", "fixed"]),
     ("random", ["--compute", "steps"]), ("craig", ["--compute", "steps"]), ("craig", ["--select-share", "0.2"])],
)
def test_target_epsilon_ends_at_or_just_below_the_target(data_root, tmp_path, capsys, method, extra) -> None:
    out = tmp_path / "run"
    every = [] if method == "full" else ["--select-every", "1"]
    assert cli.main(train_args(data_root, out, "--method", method, "--epochs", "2", *every,
                               "--target-epsilon", "4", *extra)) == 0
    s = summary(out)
    assert 0.99 * 4 <= s["eps_total"] <= 4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["target_epsilon"] == 4 and cfg["sigma"] == s["sigma"] > 0  # the solved sigma is recorded
    if "--select-sigma" in extra:
        assert cfg["select_sigma"] == 8
    elif "--select-share" in extra:
        assert 0.99 * 0.8 <= s["eps_select"] <= 0.8 and cfg["select_sigma"] != cfg["sigma"]
    elif method == "craig":
        assert cfg["select_sigma"] == cfg["sigma"]  # the stated rule: sigma_sel tied to sigma


def test_resume_never_resolves_sigma_and_works_from_another_folder(data_root, tmp_path, capsys, monkeypatch) -> None:
    from crepe.training import loop

    out = tmp_path / "run"
    monkeypatch.chdir(data_root.parent)
    given = dict(dataset="fashion-mnist", data_dir="data", train_subset=300, test_subset=200, batch_size=20,
                 threads=1, method="full", epochs=2, target_epsilon=3.0)
    cfg = plan.new_run_config(given)  # what `crepe train --data-dir data ...` resolves: sigma solved by its plan
    assert cfg.sigma is None
    from crepe.training import inputs

    ds = inputs.load_data(cfg)
    cfg = plan.Plan.of(cfg, counts=plan.class_counts(ds.y_train)).cfg
    assert rundir.prepare_out(cfg, out, {}) == "new"
    loop.run(cfg, out, stop_after_epochs=1, log=lambda s: None)
    assert cfg.data_dir == str(data_root.resolve())  # stored resolved: resume works from anywhere
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("crepe.privacy.calibration.calibrate", lambda *a, **k: pytest.fail("sigma solved again"))
    assert cli.main(["train", "--resume", "run"]) == 0
    s = summary(out)
    assert s["sigma"] == cfg.sigma and 0.99 * 3 <= s["eps_total"] <= 3


def test_a_missing_saved_data_dir_says_where_it_came_from(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    from crepe.config import TrainConfig

    c = TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "gone"), method="full", epochs=1).resolve()
    out.mkdir()
    rundir.write_config(out, c, {})
    assert cli.main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "recorded in" in err and "config.json" in err and "pass --data-dir" in err


def test_diagnostics_are_recorded_per_epoch_and_labelled(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(train_args(data_root, out, "--method", "full", "--epochs", "2", "--diagnostics")) == 0
    rows = rundir.read_metrics(out)
    for r in rows:
        d = r["diagnostics"]
        assert 0 <= d["frac_clipped"] <= 1 and -1 <= d["clip_cos"] <= 1 and d["clip_bias"] >= 0 and d["snr"] > 0
        assert d["grad_norm_q10"] <= d["grad_norm_q50"] <= d["grad_norm_q90"]
        assert set(d["clip_cos_per_class"]) <= {str(k) for k in range(10)}


def test_diagnostics_equal_a_numpy_oracle() -> None:
    import numpy as np
    from opacus import GradSampleModule

    from crepe.dp.clipping import make_clip_rule
    from crepe.dp.diagnostics import clipping_diagnostics

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3, bias=False).double()
    net = GradSampleModule(lin, batch_first=True, loss_reduction="sum")
    x = torch.randn(40, 4, dtype=torch.float64) * torch.logspace(-1, 1, 40, dtype=torch.float64)[:, None]
    y = torch.randint(0, 3, (40,))
    d = clipping_diagnostics(net, [lin.weight], make_clip_rule("flat", max_grad_norm=1.0), x, y, sigma=2.0, batch_size=8)
    # oracle: per-example gradients of cross-entropy wrt W are (p - e_y) x^T
    W = lin.weight.detach().numpy()
    X, Y = x.numpy(), y.numpy()
    logits = X @ W.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = np.einsum("ic,id->icd", p - np.eye(3)[Y], X).reshape(40, -1)
    n = np.linalg.norm(g, axis=1)
    c = np.minimum(1, 1 / (n + 1e-6))[:, None] * g
    gb, cb = g.mean(0), c.mean(0)
    assert d["frac_clipped"] == pytest.approx((n > 1).mean())
    assert d["clip_bias"] == pytest.approx(np.linalg.norm(cb - gb) / np.linalg.norm(gb), rel=1e-9)
    assert d["clip_cos"] == pytest.approx(cb @ gb / np.linalg.norm(cb) / np.linalg.norm(gb), rel=1e-9)
    assert d["snr"] == pytest.approx(np.linalg.norm(cb) / (2.0 * 1.0 * np.sqrt(12) / 8), rel=1e-9)
    assert d["grad_norm_q50"] == pytest.approx(np.quantile(n, 0.5), rel=1e-9)


def test_sigterm_ends_with_one_line_and_the_run_resumes(data_root, tmp_path) -> None:
    out = tmp_path / "run"
    script = Path(sys.executable).with_name("crepe")
    args = train_args(data_root, out, "--method", "full", "--epochs", "50", n=2000)
    proc = subprocess.Popen([str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "metrics.jsonl").is_file():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == f"crepe train: interrupted; every finished epoch is saved: resume with `crepe train --resume {out}`"
    assert "Traceback" not in err
    assert (out / "checkpoint.pt").is_file()


def test_an_old_format_checkpoint_is_refused_with_the_reason(data_root, tmp_path, capsys) -> None:
    """A run folder of crepe <= 0.1 (plain torch.save checkpoint, no checksum) is refused, not trusted."""
    from crepe.config import TrainConfig

    out = tmp_path / "run"
    out.mkdir()
    c = TrainConfig(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, method="full", epochs=2).resolve()
    rundir.write_config(out, c, {})
    torch.save({"format": 1, "epoch": 1, "ledger": []}, out / "checkpoint.pt")
    refused_untouched(out, ["train", "--resume", str(out)], capsys, "written by an older crepe")


def test_metrics_without_a_checkpoint_are_refused_not_restarted(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    stopped_after_one_epoch(data_root, out)
    (out / "checkpoint.pt").unlink()  # e.g. deleted as sensitive
    # config.json is not rewritten for the new --threads either
    refused_untouched(out, ["train", "--resume", str(out), "--threads", "2"], capsys, "checkpoint.pt is missing")


def test_a_target_reached_without_noise_is_refused_not_overshot() -> None:
    from crepe.config import UsageError
    from crepe.privacy.calibration import solve_sigma
    from crepe.privacy.ledger import Ledger, Release

    def ledger(s: float) -> Ledger:
        out = Ledger()
        out.record(Release("select", s, 1.0))
        return out

    with pytest.raises(UsageError, match="give --sigma instead"):
        solve_sigma(ledger, target=1e12, delta=1e-5, accountant="rdp")


def test_eval_every_skips_test_evaluations_and_changes_nothing_else(data_root, tmp_path, capsys) -> None:
    """--eval-every is a machine option: the same model, ledger and final accuracy, fewer evaluations."""
    every, each = tmp_path / "a" / "every", tmp_path / "each"
    common = ["--method", "random", "--fraction", "0.5", "--select-every", "1", "--epochs", "3", "--noise", "reproducible"]
    assert cli.main(train_args(data_root, each, *common)) == 0
    assert cli.main(train_args(data_root, every, *common, "--eval-every", "2")) == 0
    rows = [json.loads(line) for line in (every / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (each / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_acc"] is None for r in rows] == [True, False, False]  # epoch 2, and the last
    assert [r["test_acc"] for r in rows[1:]] == [r["test_acc"] for r in ref[1:]]
    assert summary(every)["ledger"] == summary(each)["ledger"] and summary(every)["test_acc"] == summary(each)["test_acc"]
    assert cli.main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "report")]) == 0  # plots skip the gaps
