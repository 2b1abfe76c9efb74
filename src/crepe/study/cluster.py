"""Sweeps on a Dask cluster (`crepe sweep --executor dask --scheduler ADDRESS`): a task per run.

Each run is one Dask task (`run`, below) that runs, on a worker, the very
`crepe train` subprocess the local executor runs (crepe.study.runner.Runner: its
command, its log SWEEP_DIR/logs/<run>.log, its outcome), in the run's folder
under the sweep directory. So the sweep directory (and --data-dir) must be on
storage every worker reaches at the same path as the `crepe sweep` process;
a task that finds no sweep.json there reports the run failed instead of
training into a folder nobody reads. The `crepe sweep` process (the driver)
alone writes sweep.json, as the outcomes come back (crepe.study.runner.execute).

How many runs run at once is the cluster's: each worker runs as many tasks as
it has threads (`dask worker ADDRESS --nthreads 1` for one run per worker);
`--jobs` is refused with this executor. Each run gets --threads as given, or
its worker's cores // its worker's threads.

A worker that dies mid-run takes its `crepe train` with it (the child is
started with PR_SET_PDEATHSIG on Linux, so no orphan keeps writing the folder),
and the scheduler reruns the task on another worker, as for any task whose
worker died, up to the scheduler's `distributed.scheduler.allowed-failures`
(Dask's default 3: four tries in all; set on the scheduler, not here). The rerun
finds config.json and resumes from the run's last checkpoint (`crepe train
--resume`), as the local executor resumes an interrupted run. Tasks are
submitted with retries=0: a task that raises is a bug or a broken worker, and is
recorded as a failed run. A run whose workers died more often than allowed is
recorded failed (KilledWorker), resumable by re-running the sweep.

Ctrl-C or SIGTERM of the driver sets a Dask Event that every running task polls:
the task terminates its `crepe train` (resumable from its last epoch) and
returns "interrupted"; tasks not yet started return at once without touching
their folder; then the futures are cancelled and the driver records each run's
state from its folder, as with the local executor.

Needs the [dask] extra (`distributed`); imported only for `--executor dask`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crepe.config import UsageError
from crepe.study.plan import MANIFEST, RunSpec
from crepe.study.runner import Outcome, Runner, default_threads, run_state
from crepe.study.tables import count

if TYPE_CHECKING:
    from distributed import Client, Event, Future

REQUIREMENT = "dask[distributed]==2026.8.0"  # the [dask] extra of pyproject.toml (a test holds them equal)
CONNECT_TIMEOUT_S = 30.0
POLL_S = 1.0  # how often a running task asks whether the sweep was interrupted
STOP_WAIT_S = 60.0  # how long an interrupted driver waits for its runs to stop (each: terminate, 20 s, kill)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def require() -> None:
    """UsageError naming the install command if Dask's distributed is missing."""
    try:
        import distributed  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name not in ("dask", "distributed"):
            raise
        raise UsageError(f"--executor dask needs Dask, which is not installed: pip install '{REQUIREMENT}' "
                         "(or crepe's extra: pip install '.[dask]' in its checkout)") from None


def connect(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """A client of the scheduler at `address`; UsageError if none answers within `timeout` seconds."""
    require()
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError) as e:  # refused or timed out (OSError), or not an address (ValueError)
        raise UsageError(f"--scheduler {address}: no Dask scheduler answered within {timeout:g} s ({e}); start one "
                         f"with `dask scheduler` and its workers with `dask worker {address}`") from None


# ---------------------------------------------------------------------------
# On a worker.


def _die_with_parent() -> Callable[[], None] | None:
    """Between fork and exec: have the kernel SIGKILL the child when the thread that started it
    ends (it waits on the child until then: that is the worker dying). Linux only (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the worker died before the line above
            os._exit(1)

    return preexec


class _WorkerRunner(Runner):
    """A Runner on a Dask worker: its `crepe train` dies with the worker and stops when the sweep is interrupted."""

    def __init__(self, *, stop: Event, **kw: Any):
        super().__init__(**kw)
        self._stop = stop

    def _preexec(self) -> Callable[[], None] | None:
        return _die_with_parent()

    def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
            if self.stopped():
                self.stop()  # terminates it (Runner.stop); the next wait returns at once

    def stopped(self) -> bool:
        try:
            return bool(self._stop.is_set())
        except OSError:  # the scheduler out of reach: keep training (if the worker goes, the run goes with it)
            return False


def run(spec: RunSpec, *, sweep_dir: str, data_dir: str | None, threads: int | None, eval_every: int,
        stop: str) -> Outcome:
    """The task of one run: Runner.run_one on this worker, unless the sweep directory is not
    reachable here or the sweep (Event `stop`) was interrupted before the run started."""
    from distributed import Event, get_worker

    worker = get_worker()
    nthreads = worker.state.nthreads
    runner = _WorkerRunner(stop=Event(stop), sweep_dir=Path(sweep_dir), data_dir=data_dir, eval_every=eval_every,
                           threads=threads or default_threads(nthreads), jobs=nthreads, python=sys.executable)
    if not (runner.sweep_dir / MANIFEST).is_file():  # the driver wrote it before submitting
        return Outcome(spec.name, "failed", None, 0.0, False,
                       f"worker {worker.address} does not see the sweep directory {sweep_dir} (no {MANIFEST} there): "
                       "it must be on storage shared by `crepe sweep` and every worker, at the same path")
    if runner.stopped():  # leave its folder and log as they are
        return Outcome(spec.name, "interrupted", None, 0.0, run_state(runner.sweep_dir / spec.name) == "interrupted", "")
    return runner.run_one(spec)


# ---------------------------------------------------------------------------
# In the driver (`crepe sweep`).


def _outcome(fut: Future, spec: RunSpec) -> Outcome:
    """The outcome of a run's finished future: the task's own, or a failed run saying what became of the task."""
    if fut.status == "finished":
        o: Outcome = fut.result()
        return o
    if fut.status == "error":
        from distributed import KilledWorker

        e = fut.exception()
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, KilledWorker):  # the run itself is as its last worker left it: resumable
            text = (f"the Dask workers running it died {e.allowed_failures + 1} times (the scheduler's "
                    "distributed.scheduler.allowed-failures); re-run the sweep to resume it. " + text)
        return Outcome(spec.name, "failed", None, 0.0, False, " ".join(text.split()))
    return Outcome(spec.name, "failed", None, 0.0, False, f"its Dask task was {fut.status} on the cluster")


class Dask:
    """The executor of `--executor dask`: a task per run, submitted to `client`'s cluster."""

    parallel = True

    def __init__(self, client: Client, runner: Runner):
        self.client = client
        self.runner = runner
        self._token = uuid.uuid4().hex[:8]  # keys and the stop event are this invocation's own
        self._futures: dict[Future, RunSpec] = {}

    @property
    def _stop_name(self) -> str:
        return f"crepe-sweep-stop-{self._token}"

    def describe(self) -> str:
        nthreads = self.client.nthreads()
        per_run = (f"{count(self.runner.threads, 'thread')} per run" if self.runner.threads is not None
                   else "per run, its worker's cores // the worker's threads")
        return (f"the Dask cluster at {self.client.scheduler.address}: {count(len(nthreads), 'worker')}, "
                f"{count(sum(nthreads.values()), 'thread')}; {per_run}")

    def outcomes(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]:
        from distributed import as_completed

        r = self.runner
        sweep_dir = str(r.sweep_dir.resolve())  # a worker's working directory is not this one
        for spec in specs:  # in this order: Dask starts earlier submissions first
            fut = self.client.submit(run, spec, sweep_dir=sweep_dir, data_dir=r.data_dir, threads=r.threads,
                                     eval_every=r.eval_every, stop=self._stop_name,
                                     key=f"crepe-train-{spec.name}-{self._token}", pure=False, retries=0)
            self._futures[fut] = spec
        for fut in as_completed(list(self._futures), loop=self.client.loop):
            yield _outcome(fut, self._futures[fut])

    def stop(self) -> None:
        from distributed import Event, as_completed

        event = Event(self._stop_name, client=self.client)
        event.set()
        pending = [f for f in self._futures if not f.done()]
        try:
            for _ in as_completed(pending, loop=self.client.loop, timeout=STOP_WAIT_S):
                pass
        except TimeoutError:  # what still runs is recorded as its folder is
            pass
        self.client.cancel(list(self._futures))
        event.clear()  # the scheduler forgets it

    def close(self) -> None:
        self.client.cancel(list(self._futures))
