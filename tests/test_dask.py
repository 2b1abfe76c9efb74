"""`crepe sweep --executor dask`: the same sweep as the local executor, a task per run on a Dask cluster.

The option rules and the install message need no Dask. The cluster tests start a
LocalCluster of two one-thread worker processes inside the test and run real
`crepe train` runs on a few hundred Fashion-MNIST images (the sizes of
tests/test_sweep.py); each `crepe sweep` runs as a subprocess with a timeout.
They are skipped only when Dask's distributed is not importable.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crepe.study import cluster as dask_executor
from crepe.study import report, sweep
from crepe.study.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
HAVE_DASK = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAVE_DASK, reason="Dask's distributed is not installed (pip install '.[dask]'): "
                                "the --executor dask tests need a LocalCluster")
TINY = ["--epochs", "1", "--train-subset", "300", "--test-subset", "200"]
# One run of three epochs, long enough to be stopped or have its worker killed after its first epoch.
LONG = ["--dataset", "fashion-mnist", "--method", "full", "--epochs", "3", "--train-subset", "3000", "--test-subset", "200"]
LONG_RUN = "fashion-mnist_cnn_full_sigma1_seed0"
SWEEP_TIMEOUT_S = 300  # a hung sweep fails its test instead of hanging the suite


def env() -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def crepe_sweep(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crepe", "sweep", *argv], capture_output=True, text=True, env=env(),
                          timeout=SWEEP_TIMEOUT_S)


# ---------------------------------------------------------------------------
# The options (no Dask needed).


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--executor", "dask"], "--executor dask needs --scheduler ADDRESS"),
        (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler is for --executor dask"),
        (["--executor", "local", "--scheduler", "tcp://127.0.0.1:8786"], "--scheduler is for --executor dask"),
        (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786", "--jobs", "2"],
         "--jobs is for --executor local: on a Dask cluster each worker runs as many runs at once as it has threads"),
        (["--executor", "ray"], "unknown executor 'ray'; valid: local, dask"),
        (["--executor"], "expected one argument"),
    ],
)
def test_executor_options_are_checked_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert sweep.main(["--out", str(tmp_path / "s"), "--method", "craig", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crepe sweep: error:") and message in err
    assert not (tmp_path / "s").exists()


def test_without_dask_the_dask_executor_names_the_install_and_local_sweeps_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails as if it were not installed
    assert sweep.main(["--out", str(tmp_path / "s"), "--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    err = capsys.readouterr().err
    assert "--executor dask needs Dask, which is not installed: pip install 'dask[distributed]==" in err
    assert "pip install '.[dask]'" in err and not (tmp_path / "s").exists()
    assert sweep.main(["--out", str(tmp_path / "s"), "--method", "craig", "--dry-run"]) == 0
    assert "mnist_cnn_craig_sigma1_seed0 [new]" in capsys.readouterr().out


def test_crepe_and_crepe_sweep_import_no_dask() -> None:
    code = ("import sys, crepe, crepe.cli, crepe.study.sweep, crepe.study.runner\n"
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env())
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_install_message_pins_what_the_extras_pin() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["dask"] == [dask_executor.REQUIREMENT]
    assert dask_executor.REQUIREMENT in extras["test"]  # CI installs .[test]: the cluster tests run there


def test_dry_run_with_dask_connects_to_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--out", str(tmp_path / "s"), "--method", "craig", "--dry-run", "--executor", "dask",
            "--scheduler", "tcp://127.0.0.1:1"]  # nothing listens there
    assert sweep.main(base) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mnist_cnn_craig_sigma1_seed0 [new]: crepe train --out") and "--threads" not in line  # the worker's
    assert sweep.main([*base, "--threads", "3"]) == 0
    assert capsys.readouterr().out.strip().endswith("--seed 0 --threads 3")


def test_help_says_the_sweep_directory_must_be_shared() -> None:
    text = " ".join(sweep.build_parser().format_help().split())
    assert "--executor {local,dask}" in text and "--scheduler ADDRESS" in text
    assert "must be on storage every worker reaches at the same path" in text


@needs_dask
def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    from crepe.config import UsageError

    with pytest.raises(UsageError, match=r"--scheduler tcp://127.0.0.1:1: no Dask scheduler answered within 2 s"):
        dask_executor.connect("tcp://127.0.0.1:1", timeout=2)


@needs_dask
def test_a_run_whose_workers_keep_dying_is_a_failed_resumable_run() -> None:
    from types import SimpleNamespace

    from distributed import KilledWorker

    spec = make_plan(grid={"method": ["full"]}).runs[0]
    died = KilledWorker("k", SimpleNamespace(address="tcp://10.0.0.7:4000"), 3)
    o = dask_executor._outcome(SimpleNamespace(status="error", exception=lambda: died), spec)
    assert (o.name, o.status, o.returncode) == (spec.name, "failed", None)
    assert o.log_tail.startswith("the Dask workers running it died 4 times (the scheduler's "
                                 "distributed.scheduler.allowed-failures); re-run the sweep to resume it. KilledWorker:")
    assert "\n" not in o.log_tail  # one line: the sweep prints a failure's last line
    lost = dask_executor._outcome(SimpleNamespace(status="cancelled"), spec)
    assert lost.status == "failed" and lost.log_tail == "its Dask task was cancelled on the cluster"


# ---------------------------------------------------------------------------
# On a LocalCluster.


@pytest.fixture
def local_cluster() -> Iterator[Any]:
    """Two worker processes of one thread each (two runs at a time), always closed."""
    import dask
    from distributed import LocalCluster

    # A run whose worker dies is rerun on another, up to 3 times (set explicitly: Dask's default is 3 too).
    with dask.config.set({"distributed.scheduler.allowed-failures": 3, "distributed.comm.timeouts.connect": "60s"}):
        cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                          silence_logs=logging.CRITICAL)  # a killed worker's tracebacks are expected
    try:
        yield cl
    finally:
        cl.close(timeout=60)


def _timeless_manifest(path: Path) -> dict[str, Any]:
    m = json.loads(path.read_text())
    for key in ("created", "updated"):
        m.pop(key)
    for r in m["runs"].values():
        r.pop("wall_s")
    return m


def _progress(stdout: str) -> list[str]:
    """The `[i/n] NAME STATUS in Ts: RESULT` lines without their order and times."""
    return sorted(re.sub(r"^\[\d+/(\d+)\] (\S+ \S+) in [\d.]+s", r"\1 \2", line)
                  for line in stdout.splitlines() if line.startswith("["))


def _timeless_report(sweep_dir: Path, out: Path) -> tuple[list[str], list[dict[str, str]]]:
    """results.md without its time and speed-up columns, and results.csv without its time and speed-up fields."""
    assert report.main([str(sweep_dir), "--out", str(out), "--no-plots"]) == 0
    lines, drop = [], set()
    for line in (out / "results.md").read_text().splitlines():
        if line.startswith("|"):
            cells = line.split(" | ")
            if "total (s)" in line:
                drop = {i for i, c in enumerate(cells) if c.endswith("(s)") or c.startswith("speed-up")}
            line = " | ".join(c for i, c in enumerate(cells) if i not in drop)
        lines.append(line)
    with open(out / "results.csv") as fh:
        rows = [{k: v for k, v in r.items() if "time" not in k and "speedup" not in k} for r in csv.DictReader(fh)]
    return lines, rows


@needs_dask
def test_a_dask_sweep_is_the_local_sweep(local_cluster: Any, tmp_path: Path, data_root: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The same grid into two directories: the same manifest, runs, logs, progress lines and report."""
    grid = ["--dataset", "fashion-mnist", "--method", "full", "craig", "--sigma", "1", "3", *TINY,
            "--noise", "reproducible", "--data-dir", str(data_root), "--threads", "1"]  # seeded noise: equal results
    local, dask = tmp_path / "local", tmp_path / "dask"
    r_local = crepe_sweep("--out", str(local), *grid, "--jobs", "2")
    assert r_local.returncode == 0, r_local.stdout + r_local.stderr
    r_dask = crepe_sweep("--out", str(dask), *grid, "--executor", "dask", "--scheduler", local_cluster.scheduler_address)
    assert r_dask.returncode == 0, r_dask.stdout + r_dask.stderr
    assert f"the Dask cluster at {local_cluster.scheduler_address}: 2 workers, 2 threads; 1 thread per run" in r_dask.stdout

    manifest = _timeless_manifest(dask / "sweep.json")
    assert manifest == _timeless_manifest(local / "sweep.json")
    assert len(manifest["runs"]) == 4 and all(r["status"] == "complete" for r in manifest["runs"].values())
    assert _progress(r_dask.stdout) == _progress(r_local.stdout)
    assert r_dask.stdout.splitlines()[-1] == r_local.stdout.splitlines()[-1].replace(str(local), str(dask))
    for name in manifest["runs"]:  # each run ran the same command, logged in the same place
        first = (dask / "logs" / f"{name}.log").read_text().splitlines()[0]
        assert first == (local / "logs" / f"{name}.log").read_text().splitlines()[0].replace(str(local), str(dask))
        assert json.loads((dask / name / "summary.json").read_text())["status"] == "complete"
    assert _timeless_report(dask, tmp_path / "r-dask") == _timeless_report(local, tmp_path / "r-local")

    # A worker that does not see the sweep directory fails the run, saying why, instead of training elsewhere.
    from distributed import Client

    spec = make_plan(grid={"method": ["full"]}).runs[0]
    with Client(local_cluster.scheduler_address, set_as_default=False) as client:
        o = client.submit(dask_executor.run, spec, sweep_dir=str(tmp_path / "elsewhere"), data_dir=None, threads=1,
                          eval_every=1, stop="unused", pure=False).result(timeout=60)
    assert o.status == "failed" and "does not see the sweep directory" in o.log_tail
    assert not (tmp_path / "elsewhere").exists()


def _training_process(run_dir: Path, proc: subprocess.Popen[str]) -> Any:
    """The `crepe train` process of `run_dir`, once its first epoch is in metrics.jsonl."""
    import psutil  # a dependency of distributed

    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 150
    while not metrics.is_file() or not metrics.read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached its first epoch"
        time.sleep(0.05)
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "train" in cmd and str(run_dir) in cmd:
            return p
    raise AssertionError(f"no crepe train process for {run_dir}")


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@needs_dask
def test_a_worker_killed_mid_run_loses_nothing(local_cluster: Any, tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "s"
    run = out / LONG_RUN
    argv = ["--out", str(out), *LONG, "--data-dir", str(data_root), "--threads", "1",
            "--executor", "dask", "--scheduler", local_cluster.scheduler_address]
    proc = subprocess.Popen([sys.executable, "-m", "crepe", "sweep", *argv], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        train = _training_process(run, proc)
        worker = train.parent()
        assert worker.ppid() == os.getpid()  # a worker process of this test's LocalCluster (its nannies run here)
        worker.send_signal(signal.SIGKILL)
        done = len(_epochs(run))
        train.wait(timeout=30)  # it dies with its worker (PR_SET_PDEATHSIG): no orphan writes the folder
        stdout, stderr = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert 1 <= done < 3  # killed mid-run
    assert f"[1/1] {LONG_RUN} resumed and finished" in stdout  # the scheduler's rerun, on a live worker
    assert _epochs(run) == [1, 2, 3]  # each epoch once: resumed from the checkpoint, not retrained
    log = (out / "logs" / f"{LONG_RUN}.log").read_text()
    assert f"--resume {run}" in log.splitlines()[0] and f"crepe train: resumed {run} after epoch" in log
    rec = json.loads((out / "sweep.json").read_text())["runs"][LONG_RUN]
    assert (rec["status"], rec["returncode"], rec["resumed"]) == ("complete", 0, True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and len(summary["ledger"]) >= 1


@needs_dask
def test_ctrl_c_stops_the_runs_on_the_workers(local_cluster: Any, tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "s"
    run = out / LONG_RUN
    argv = ["--out", str(out), *LONG, "--data-dir", str(data_root), "--threads", "1",
            "--executor", "dask", "--scheduler", local_cluster.scheduler_address]
    # The default SIGINT disposition, as a terminal gives (see test_sweep.test_a_killed_sweep_resumes_mid_run).
    proc = subprocess.Popen([sys.executable, "-m", "crepe", "sweep", *argv], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        train = _training_process(run, proc)
        proc.send_signal(signal.SIGINT)  # the driver alone: the run is the worker's child
        _, stderr = proc.communicate(timeout=120)
        train.wait(timeout=30)  # stopped by its task
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "crepe sweep: interrupted; re-run the same command to resume" in stderr
    assert json.loads((out / "sweep.json").read_text())["runs"][LONG_RUN]["status"] == "interrupted"
    assert not (run / "summary.json").exists() and (run / "checkpoint.pt").is_file()
    assert 1 <= len(_epochs(run)) < 3
    again = crepe_sweep(*argv)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{LONG_RUN} resumed and finished" in again.stdout
    assert _epochs(run) == [1, 2, 3]


@needs_dask
def test_sharded_selection_on_dask_workers_is_the_one_process_selection() -> None:
    """crepe.select(engine="sharded", workers=client): one task per shard, on two worker processes."""
    import numpy as np
    from distributed import Client, LocalCluster

    import crepe.select

    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((3000, 10)).astype(np.float32), rng.integers(0, 2, 3000)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      death_timeout=60) as cluster, Client(cluster, timeout=60) as client:
        for merge in (False, True):
            there = crepe.select(X, y, fraction=0.05, engine="sharded", shard_size=400, merge=merge, seed=3,
                                 workers=client)
            here = crepe.select(X, y, fraction=0.05, engine="sharded", shard_size=400, merge=merge, seed=3)
            for f in ("indices", "weights", "gains", "objective"):
                np.testing.assert_array_equal(getattr(there, f), getattr(here, f))
        tasks = client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])
        assert tasks == [] or all(isinstance(t, str) for t in tasks)
