"""What a run leaves behind (the privacy audit's findings 1 and 3, docs/privacy.md section 7).

- secret noise differs between two runs with one --seed (and is the same in reproducible mode);
- a finished run folder holds no generator state, no key, no subset, no realised size and no
  label fingerprint, in any file (checkpoint.pt's payload loaded); --keep-secrets keeps them;
- an unfinished run keeps its secret checkpoint and resumes to the same ledger and numbers;
- a checkpoint of format 2 (32-bit seeds) is refused, naming the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from crepe import _core, cli, data  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.config import TrainConfig
from crepe.dp.optimizer import DPOptimizer
from crepe.dp.secret_rng import STATE_BYTES
from crepe.study.runner import run_state
from crepe.training import loop, rundir, state as ckpt
from crepe.training.state import GENERATORS

SMALL = dict(dataset="fashion-mnist", train_subset=300, test_subset=50, batch_size=10, threads=1, seed=4)


def config(data_root: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(**{**SMALL, "data_dir": str(data_root), "epochs": 1, **kw}).resolve()


@dataclass
class Seen:
    """What a run held in memory: its key, the generator states and subset of each checkpoint."""

    keys: list[bytes] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)  # Generator.get_state() of every save
    subsets: list[bytes] = field(default_factory=list)  # coreset indices (and non-constant gamma) of every save
    first_noise: list[torch.Tensor] = field(default_factory=list)  # the noise of the first DP step


def traced(monkeypatch: pytest.MonkeyPatch) -> Seen:
    seen = Seen()
    new_key, save, add_noise = loop.new_key, ckpt.save, DPOptimizer.add_noise

    def traced_new_key() -> bytes:
        seen.keys.append(new_key())
        return seen.keys[-1]

    def traced_save(*a: Any, generators: dict, state: ckpt.RunState, **k: Any) -> None:
        seen.states += [g.get_state() for g in generators.values()]
        c = state.coreset
        if c is not None:  # (a constant gamma, e.g. all ones, could match any array of ones)
            seen.subsets += [c.indices.tobytes()] + ([c.gamma.tobytes()] if len(set(c.gamma.tolist())) > 1 else [])
        save(*a, generators=generators, state=state, **k)

    def traced_add_noise(self: DPOptimizer) -> None:
        summed = [p.summed_grad.detach().clone() for p in self.params]
        add_noise(self)
        if not seen.first_noise:
            seen.first_noise.append(torch.cat([(p.grad.detach() - s).reshape(-1) for p, s in zip(self.params, summed)]))

    monkeypatch.setattr(loop, "new_key", traced_new_key)
    monkeypatch.setattr(ckpt, "save", traced_save)
    monkeypatch.setattr(DPOptimizer, "add_noise", traced_add_noise)
    return seen


def train(monkeypatch: pytest.MonkeyPatch, cfg: TrainConfig, out: Path, **kw: Any) -> tuple[dict, Seen]:
    with monkeypatch.context() as m:
        seen = traced(m)
        assert rundir.prepare_out(cfg, out, {}) == "new"
        return loop.run(cfg, out, log=lambda s: None, **kw), seen


def fingerprint(cfg: TrainConfig) -> str:
    return data.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset, test_subset=cfg.test_subset).fingerprint


def payload(out: Path, cfg: TrainConfig) -> dict:
    return ckpt.load(out / rundir.CHECKPOINT, cfg=cfg, fingerprint=fingerprint(cfg))


def tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def test_secret_noise_differs_between_runs_with_one_seed(data_root, tmp_path, monkeypatch) -> None:
    noise = {}
    for name, mode in [("s1", "secret"), ("s2", "secret"), ("r1", "reproducible"), ("r2", "reproducible")]:
        _, seen = train(monkeypatch, config(data_root, method="full", noise=mode), tmp_path / name)
        assert len(seen.keys) == (mode == "secret")  # a reproducible run draws no key from the OS
        noise[name] = seen.first_noise[0]
    assert noise["s1"].numel() > 20_000 and float(noise["s1"].std()) > 0.5  # sigma C / B: real noise
    assert not torch.equal(noise["s1"], noise["s2"])  # the same --seed, fresh noise
    assert torch.equal(noise["r1"], noise["r2"])  # the control: reproducible noise repeats bit for bit


@pytest.mark.parametrize("method", ["random", "craig"])  # a secret Poisson subset; a coreset with gamma
def test_a_finished_run_folder_holds_no_secret(data_root, tmp_path, monkeypatch, method) -> None:
    cfg = config(data_root, method=method, fraction=0.5, select_every=1, epochs=2)
    out = tmp_path / "sweep" / "run"
    summary, seen = train(monkeypatch, cfg, out)
    assert len(seen.keys) == 1 and len(seen.states) == 2 * len(GENERATORS) and seen.subsets
    secret = [*seen.keys, *(k.hex().encode() for k in seen.keys), *seen.subsets, fingerprint(cfg).encode()]
    for s in seen.states:  # the 624 words (offsets 24..5016), at both ends
        raw = bytes(s.tolist())
        secret += [raw[24:88], raw[4952:5016]]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoint.pt", "config.json", "metrics.jsonl", "model.json", "model.pt", "summary.json"]
    for name in files:
        text = (out / name).read_bytes()
        assert not [s for s in secret if s in text], f"{name} holds a secret of the run"
    ck = payload(out, cfg)
    assert sorted(ck) == ["config", "model", "optimizer", "state", "summary"]
    assert sorted(ck["state"]) == ["epoch", "ledger", "metrics"] and ck["summary"] == summary
    assert not [t for t in tensors(ck) if t.dtype == torch.uint8 and t.numel() == STATE_BYTES]  # no generator state
    assert "removed when the run finished" in summary["checkpoint_note"]
    if method == "random":
        assert summary["examples_seen"] is None and all(r["examples_seen"] is None for r in ck["state"]["metrics"])
    # Still a complete run for --resume, the same --out, the sweep and the report.
    assert cli.main(["train", "--resume", str(out)]) == 0
    assert rundir.prepare_out(cfg, out, {}) == "complete" and run_state(out) == "complete"
    assert cli.main(["report", str(out.parent), "--out", str(tmp_path / "report")]) == 0


def test_keep_secrets_keeps_the_checkpoint_whole(data_root, tmp_path, monkeypatch) -> None:
    cfg = config(data_root, method="craig", keep_secrets=True)
    assert cfg.identity() == config(data_root, method="craig").identity()  # a machine flag: the same run
    summary, seen = train(monkeypatch, cfg, tmp_path / "run")
    ck = payload(tmp_path / "run", cfg)
    assert ck["summary"] is None and sorted(ck["generators"]) == sorted(GENERATORS)
    assert all(torch.equal(ck["generators"][k], s) for k, s in zip(GENERATORS, seen.states[-len(GENERATORS):]))
    assert ck["coreset"]["indices"].numpy().tobytes() in seen.subsets
    assert ck["fingerprint"] == fingerprint(cfg) and "--keep-secrets" in summary["checkpoint_note"]


def test_an_unfinished_run_keeps_its_secrets_and_resumes_to_the_same_run(data_root, tmp_path, monkeypatch, capsys) -> None:
    cfg = config(data_root, method="random", fraction=0.5, select_every=1, epochs=2, noise="reproducible")
    whole, _ = train(monkeypatch, cfg, tmp_path / "whole")
    out = tmp_path / "stopped"
    assert train(monkeypatch, cfg, out, stop_after_epochs=1)[0]["status"] == "incomplete"
    ck = payload(out, cfg)
    assert ck["summary"] is None and sorted(ck["generators"]) == sorted(GENERATORS)
    assert ck["coreset"] is not None and ck["fingerprint"] == fingerprint(cfg) and ck["state"]["examples_seen"] > 0
    assert cli.main(["train", "--resume", str(out)]) == 0
    resumed = rundir.read_summary(out) or {}
    assert resumed["ledger"] == whole["ledger"] and resumed["eps_total"] == whole["eps_total"]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]  # noqa: E731
    assert strip(rundir.read_metrics(out)) == strip(rundir.read_metrics(tmp_path / "whole"))  # same noise restored
    assert payload(out, cfg)["summary"] is not None  # and, finished, the secrets are gone


def test_a_run_stopped_between_its_last_two_writes_is_finished_by_resume(data_root, tmp_path, monkeypatch, capsys) -> None:
    """The published checkpoint is written before summary.json: a kill in between leaves no
    complete run with its secrets; --resume writes summary.json from the checkpoint."""
    cfg = config(data_root, method="full")
    out = tmp_path / "run"
    summary, _ = train(monkeypatch, cfg, out)
    (out / rundir.SUMMARY).unlink()
    assert run_state(out) == "interrupted"
    assert cli.main(["train", "--resume", str(out)]) == 0
    assert rundir.read_summary(out) == json.loads(json.dumps(summary))


def test_a_format_2_checkpoint_is_refused_naming_its_weak_seeds(data_root, tmp_path, monkeypatch, capsys) -> None:
    cfg = config(data_root, method="full", epochs=2)
    out = tmp_path / "run"
    assert train(monkeypatch, cfg, out, stop_after_epochs=1)[0]["status"] == "incomplete"
    path = out / rundir.CHECKPOINT
    path.write_bytes(ckpt.WEAK_SEEDS_MAGIC + path.read_bytes()[len(ckpt.MAGIC) :])  # as crepe 0.x wrote it
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "before checkpoint format 3" in err and "only 32 bits of entropy" in err and "not resumed" in err, err
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}
