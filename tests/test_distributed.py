"""DP-SGD over two torch.distributed ranks (gloo, 127.0.0.1, OMP_NUM_THREADS=1, timeouts): the mechanism of
one process. Steps (tests/distributed_steps.py): sigma 0 equals one process to 1e-6 on the same union
batches; the ranks' masks differ and are disjoint; the noise on the released sum is sigma C, drawn once;
a rank whose blocks hold nothing still steps. Runs (`torchrun -m crepe train`): ledger, epsilon,
checkpoint (generator states included) and model of a 2-rank run equal the 1-rank run's; a killed rank
ends the run, and --resume continues it, with 2 ranks or 1."""

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

import distributed_steps
from crepe.dp import distributed
from crepe.dp.distributed import BLOCKS
from crepe.training import rundir, state as ckpt

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "GLOO_SOCKET_IFNAME": "lo",
       "PYTHONPATH": os.pathsep.join([str(Path(distributed.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}


def torchrun(*args: str, ranks: int = 2) -> list[str]:
    """torchrun on this machine: its rendezvous store on 127.0.0.1, on a port the OS picks (no race)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={ranks}",
            "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0", *args]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("steps")
    done = subprocess.run(torchrun(distributed_steps.__file__, str(out)), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[:4000]
    return out


def load(out: Path, case: str, rank: int) -> dict:
    return torch.load(out / f"{case}.rank{rank}.pt", weights_only=True)


def test_sigma_0_two_ranks_equal_one_process_on_the_same_union_batches(two_ranks) -> None:
    one = distributed_steps.steps("plain", distributed.SINGLE)
    r0, r1 = load(two_ranks, "plain", 0), load(two_ranks, "plain", 1)
    assert r0["steps"] == r1["steps"] == one["steps"] == 10
    for t, b in enumerate(one["batches"]):
        local = [r0["batches"][t], r1["batches"][t]]
        assert torch.equal(torch.sort(torch.cat(local)).values, b)  # the union is the one-process batch
        assert not (set(local[0].tolist()) & set(local[1].tolist()))  # disjoint shards
        assert all(int(i) % BLOCKS % 2 == r for r, batch in enumerate(local) for i in batch)
    assert any(not torch.equal(a, b) for a, b in zip(r0["batches"], r1["batches"]))  # the masks differ
    assert r0["seen"] == r1["seen"] == one["seen"] == sum(map(len, one["batches"]))  # summed over the ranks
    for a, b, c in zip(r0["params"], r1["params"], one["params"]):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=0)
    assert not torch.allclose(one["params"][0], distributed_steps_initial()[0], atol=1e-3)  # it trained


def distributed_steps_initial() -> list[torch.Tensor]:
    torch.manual_seed(3)
    return [p.detach() for p in torch.nn.Linear(12, 3).parameters()]


def test_the_noise_is_drawn_once_with_std_sigma_c(two_ranks) -> None:
    sigma, _ = distributed_steps.CASES["noise"]
    r0, r1 = load(two_ranks, "noise", 0), load(two_ranks, "noise", 1)
    for a, b in zip(r0["released"], r1["released"]):
        assert torch.equal(a, b)  # every rank steps with rank 0's noisy sum
    for a, b in zip(r0["summed"], r1["summed"]):
        assert torch.equal(a, b)  # the clipped sums were summed over the ranks before the noise
    noise = torch.cat([rel - s for rel, s in zip(r0["released"], r0["summed"])]).double()  # 10 steps x 39 coordinates
    std = float(noise.std())
    # sigma C = 1; noise added on both ranks would give sqrt(2); 390 draws: the std's s.e. is ~3.6%
    assert std == pytest.approx(sigma * distributed_steps.C, rel=0.15), std
    assert abs(std - sigma * distributed_steps.C * 2**0.5) > 0.2
    one = distributed_steps.steps("noise", distributed.SINGLE)  # the same generator: the same draws
    for a, b in zip(r0["released"], one["released"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_rank_with_an_empty_local_batch_still_steps(two_ranks) -> None:
    r0, r1 = load(two_ranks, "empty", 0), load(two_ranks, "empty", 1)
    assert r0["steps"] == r1["steps"] == 1  # q = 1: one step per epoch, on both ranks
    assert [len(b) for b in r1["batches"]] == [0] and [len(b) for b in r0["batches"]] == [1]
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert len(r1["released"]) == 1  # rank 1 took the noisy step on nothing of its own


# ---------------------------------------------------------------------------
# Whole runs: torchrun -m crepe train


def train(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "crepe", "train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
            "--train-subset", "600", "--test-subset", "200", "--batch-size", "30", "--lr", "0.1", "--noise", "reproducible",
            *(() if "--no-dp" in extra else ("--sigma", "1")), *extra]


def checkpoint(out: Path) -> dict:
    return ckpt.load(out / "checkpoint.pt", cfg=rundir.read_config(out), fingerprint=None)


RUNS = {
    "craig, adaptive clipping, canaries": ("--method", "craig", "--fraction", "0.2", "--clipping", "adaptive",
                                           "--audit-canaries", "20"),
    "user-level dp-fedemb": ("--method", "full", "--privacy-unit", "user", "--users", "synthetic", "--user-count",
                             "60", "--users-per-round", "10", "--algorithm", "dp-fedemb", "--virtual-client-size", "2"),
    "non-private": ("--method", "full", "--no-dp"),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_a_two_rank_run_is_the_one_rank_run(data_root, tmp_path, run: str) -> None:
    """Same ledger, epsilon, metrics, generator states; weights to 1e-5 (the ranks' float sums differ in order)."""
    extra = (*RUNS[run], "--epochs", "2", "--keep-secrets")
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run([sys.executable, *train(data_root, one, *extra)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(torchrun(*train(data_root, two, *extra)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("crepe train: test accuracy") == 1  # rank 0 prints
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["ledger"] == s2["ledger"] and s1["eps_total"] == s2["eps_total"] and s1["sigma"] == s2["sigma"]
    m1, m2 = ((d / "metrics.jsonl").read_text().splitlines() for d in (one, two))
    assert len(m1) == len(m2) == 2
    for r1, r2 in zip(map(json.loads, m1), map(json.loads, m2)):
        assert sorted(r1) == sorted(r2)
        for k in r1:
            if k.endswith("time_s"):
                continue
            float_sums = ("train_loss", "test_loss", "train_acc", "noise_to_signal", "clip_norm")
            if isinstance(r1[k], float) and k in float_sums:
                assert r1[k] == pytest.approx(r2[k], rel=1e-5), k
            else:
                assert r1[k] == r2[k], k  # epsilon, accuracy, counts, sizes
    c1, c2 = checkpoint(one), checkpoint(two)
    assert sorted(c1) == sorted(c2) and sorted(c1["generators"]) == sorted(c2["generators"])
    for k in c1["generators"]:
        assert torch.equal(c1["generators"][k], c2["generators"][k]), k
    assert torch.equal(c1["coreset"]["indices"], c2["coreset"]["indices"])
    for k in c1["model"]:
        torch.testing.assert_close(c1["model"][k], c2["model"][k], atol=1e-5, rtol=0)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    if (one / "audit.json").is_file():
        assert json.loads((one / "audit.json").read_text()) == json.loads((two / "audit.json").read_text())


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of `rank` under `parent` (its environment says RANK)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.parametrize("resume_ranks", [2, 1])
def test_a_killed_rank_ends_the_run_and_resume_continues_it(data_root, tmp_path, resume_ranks: int) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(torchrun(*train(data_root, out, "--method", "full", "--epochs", "30", "--train-subset", "1200")),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(0.2)
        pid = rank_pid(proc.pid, 1)
        assert pid is not None, "no rank 1 worker found"
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert not (out / "summary.json").exists()
    done_epochs = len((out / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done_epochs < 30
    resume = ["-m", "crepe", "train", "--resume", str(out)]
    cmd = torchrun(*resume, ranks=2) if resume_ranks == 2 else [sys.executable, *resume]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed {out} after epoch" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 31))  # each epoch once
    assert sum(e["steps"] for e in summary["ledger"] if e["kind"] == "train") == 30 * 40


def test_too_many_ranks_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(distributed, "_current", None)
    monkeypatch.setenv("WORLD_SIZE", str(BLOCKS + 1))
    with pytest.raises(distributed.UsageError, match=f"at most {BLOCKS} ranks"):
        distributed.current()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(distributed.UsageError, match="launch with torchrun"):
        distributed.current()


# ---------------------------------------------------------------------------
# Sharded selection over the ranks: crepe.select(engine="sharded", workers="torch.distributed")


def test_sharded_selection_over_two_ranks_is_the_one_process_selection(tmp_path) -> None:
    import numpy as np

    import crepe.select
    import distributed_select

    done = subprocess.run(torchrun(distributed_select.__file__, str(tmp_path)), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[:4000]
    r0, r1 = (np.load(tmp_path / f"select.rank{r}.npz") for r in (0, 1))
    X, y = distributed_select.problem()
    for name, merge in (("plain", False), ("merge", True)):
        here = crepe.select(X, y, fraction=0.05, engine="sharded", shard_size=400, merge=merge, seed=3)
        for f in ("indices", "weights", "objective"):
            np.testing.assert_array_equal(r0[f"{name}_{f}"], getattr(here, f))
            np.testing.assert_array_equal(r1[f"{name}_{f}"], getattr(here, f))
    for f in ("indices", "weights"):  # seed None: rank 0's entropy splits the classes on both ranks
        np.testing.assert_array_equal(r0[f"fresh_{f}"], r1[f"fresh_{f}"])
    # each class of ~1,500 points is 4 shards of ~375: each rank solved 2 of each class's 4 shards in each of
    # the 3 selections, not all 4, and the merge's union of 2 classes on every rank: 3 * 2 * 2 + 2
    assert len(r0["solved"]) == len(r1["solved"]) == 14
    shared = set(r0["solved"].tolist()) & set(r1["solved"].tolist())
    assert len(shared) == 2  # the merge's unions; every shard was solved by one rank


def test_workers_are_checked() -> None:
    import numpy as np

    import crepe.select

    X = np.zeros((20, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="workers= applies to engine='sharded' only"):
        crepe.select(X, k=2, workers="torch.distributed")
    with pytest.raises(ValueError, match="needs a process group"):
        crepe.select(X, k=4, engine="sharded", shard_size=10, workers="torch.distributed")
    with pytest.raises(ValueError, match="workers must be None, 'torch.distributed' or a dask distributed.Client"):
        crepe.select(X, k=4, engine="sharded", shard_size=10, workers="ray")
