"""What a run leaves behind (the privacy audit's findings, docs/privacy.md section 7).

- secret noise differs between two runs with one --seed (and is the same in reproducible mode);
- a checkpoint of format 2 (32-bit seeds) is refused, naming the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from crepe import _core, cli  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.config import TrainConfig
from crepe.dp.optimizer import DPOptimizer
from crepe.training import loop, rundir, state as ckpt

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


def test_secret_noise_differs_between_runs_with_one_seed(data_root, tmp_path, monkeypatch) -> None:
    noise = {}
    for name, mode in [("s1", "secret"), ("s2", "secret"), ("r1", "reproducible"), ("r2", "reproducible")]:
        _, seen = train(monkeypatch, config(data_root, method="full", noise=mode), tmp_path / name)
        assert len(seen.keys) == (mode == "secret")  # a reproducible run draws no key from the OS
        noise[name] = seen.first_noise[0]
    assert noise["s1"].numel() > 20_000 and float(noise["s1"].std()) > 0.5  # sigma C / B: real noise
    assert not torch.equal(noise["s1"], noise["s2"])  # the same --seed, fresh noise
    assert torch.equal(noise["r1"], noise["r2"])  # the control: reproducible noise repeats bit for bit


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
