"""Executing a sweep's plan: one `crepe train` subprocess per run, `jobs` at a time.

Every configuration runs as its own `python -m crepe train` subprocess: a crash
stays in its run, `--jobs N` runs N at a time, and this module loads torch only
to check target epsilons (below). Where the subprocesses run is an executor's
business: Local (here: threads on this machine, each waiting on one subprocess)
or crepe.study.cluster.Dask (a task per run on a Dask cluster); both run the
command Runner builds, and only execute, in the `crepe sweep` process, writes
the manifest. The sweep directory holds

    SWEEP_DIR/sweep.json          the manifest: grid, fixed settings, per-run status
    SWEEP_DIR/<run name>/         one `crepe train` run directory per configuration
    SWEEP_DIR/logs/<run name>.log stdout and stderr of the run's last attempt

execute skips runs whose summary.json says "complete", continues interrupted
runs with `crepe train --resume`, and retries failed ones. A failed run is
recorded (exit code and the tail of its log) and does not stop the others. A
run calibrated to a target epsilon that its schedule cannot reach is never
started: check_runs first calibrates the runs with a target in-process, as
`crepe train` would, and the manifest records those it would refuse as
"unreachable" with the smallest reachable epsilon. An interrupt stops the runs
(each resumable from its last epoch), records them, and is raised again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crepe.config import TrainConfig, UsageError
from crepe.study.grid import REPLICATE, fmt
from crepe.study.plan import MANIFEST, Plan, RunSpec, load_manifest
from crepe.study.tables import count
from crepe.training import rundir

LOGS = "logs"
FORMAT_VERSION = 1
# What the manifest records of a run that is never started because its target is unreachable.
UNREACHABLE_FIELDS = ("target_epsilon", "smallest_epsilon", "settings")


def run_state(run_dir: Path) -> str:
    """'complete', 'interrupted' (a run exists but has not finished), or 'new'."""
    if rundir.is_complete(run_dir):
        return "complete"
    if (run_dir / rundir.CONFIG).is_file():
        return "interrupted"
    return "new"


# ---------------------------------------------------------------------------
# Targets a schedule cannot reach.


def _floor(given: dict[str, Any],
           sizes_of: Callable[[TrainConfig], tuple[list[int], int | None, int | None]]) -> float | None:
    """The smallest reachable epsilon if `crepe train` would refuse this run's target as unreachable, else None."""
    from crepe.privacy.calibration import Unreachable
    from crepe.training.plan import check_reachable

    try:
        check_reachable(given, sizes_of)
    except Unreachable as e:
        return e.floor
    except UsageError:  # not this check's to report: the run fails with the message in its log
        return None
    return None


def unreachable(specs: Sequence[RunSpec], *, data_dir: str | None) -> dict[str, float]:
    """name -> smallest reachable epsilon, for each run whose schedule cannot reach its target epsilon.

    Each run with a target is planned in-process exactly as `crepe train` plans it
    (crepe.training.plan: its config, then its plan solved from the class counts and users); runs that differ
    only in their seed share one check (calibration does not depend on the seed), and each dataset's
    split is loaded once. Imports torch only when a run has a target.
    """
    sizes: dict[tuple[Any, ...], tuple[list[int], int | None, int | None]] = {}

    def sizes_of(cfg: TrainConfig) -> tuple[list[int], int | None, int | None]:
        """Class counts, users U and their public k, once per split (synthetic writers: k as they
        set it, 2 ceil(n / U) unless --max-per-user, from the split before writers drop examples)."""
        from crepe.training.inputs import hold_out, load_dataset
        from crepe.training.plan import class_counts

        split = (cfg.dataset, cfg.data_dir, cfg.train_subset, cfg.held_out_classes)
        if split not in sizes:
            ds = hold_out(load_dataset(cfg), cfg.held_out_classes)
            sizes[split] = (class_counts(ds.y_train), ds.users, ds.max_per_user)
        counts, users, k = sizes[split]
        if cfg.users == "synthetic":
            return counts, cfg.user_count, cfg.max_per_user or 2 * -(-sum(counts) // cfg.user_count)
        return counts, users, k if cfg.max_per_user is None else cfg.max_per_user

    floors: dict[tuple[tuple[str, Any], ...], float | None] = {}
    out: dict[str, float] = {}
    for spec in (s for s in specs if s.target is not None):
        given = spec.given() | ({} if data_dir is None else {"data_dir": data_dir})
        cell = tuple((k, v) for k, v in given.items() if k != REPLICATE)
        if cell not in floors:
            floors[cell] = _floor(given, sizes_of)
        floor = floors[cell]
        if floor is not None:
            out[spec.name] = floor
    return out


def check_runs(plan: Plan, *, sweep_dir: Path, data_dir: str | None, out: Any) -> tuple[dict[str, str], dict[str, float]]:
    """Each run's state (run_state), and the smallest reachable epsilon of each not-complete run
    whose target is unreachable (those never start)."""
    states = {spec.name: run_state(sweep_dir / spec.name) for spec in plan.runs}
    pending = [spec for spec in plan.runs if states[spec.name] != "complete"]
    if any(spec.target is not None for spec in pending):
        print("crepe sweep: checking that each run can reach its target epsilon", file=out, flush=True)
    return states, unreachable(pending, data_dir=data_dir)


def unreachable_text(spec: RunSpec, floor: float) -> str:
    return f"target epsilon {fmt(spec.target)} is unreachable (the smallest reachable is {floor:.4g})"


# ---------------------------------------------------------------------------
# Execution.


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # complete | failed | interrupted
    returncode: int | None
    wall_s: float
    resumed: bool
    log_tail: str


def _tail(path: Path, *, lines: int = 20, chars: int = 4000) -> str:
    try:
        data = path.read_bytes()[-64_000:].decode("utf-8", "replace")
    except OSError:
        return ""
    # Progress bars redraw with \r: keep the last state of each line.
    kept = [seg.split("\r")[-1] for seg in data.splitlines()]
    kept = [k for k in kept if k.strip()]
    return "\n".join(kept[-lines:])[-chars:]


def default_threads(jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // jobs)


class Runner:
    """Runs RunSpecs as `crepe train` subprocesses, `jobs` at a time.

    threads None passes no --threads (the command as `--dry-run` shows it when each
    Dask worker decides; crepe.study.cluster). Subclasses may change how a subprocess
    starts (_preexec) and is waited for (_wait); the command, its log and its outcome
    are this class's alone."""

    def __init__(self, *, sweep_dir: Path, data_dir: str | None, threads: int | None, jobs: int, python: str,
                 eval_every: int = 1):
        self.sweep_dir = sweep_dir
        self.data_dir = data_dir
        self.threads = threads
        self.eval_every = eval_every
        self.jobs = jobs
        self.python = python
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def command(self, spec: RunSpec, *, resume: bool) -> list[str]:
        run_dir = self.sweep_dir / spec.name
        cmd = [self.python, "-m", "crepe", "train"]
        if resume:  # the run's config.json holds its settings; only machine flags may change
            cmd += ["--resume", str(run_dir)]
        else:
            cmd += ["--out", str(run_dir)] + spec.train_args()
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        if self.data_dir is not None:
            cmd += ["--data-dir", self.data_dir]
        if self.eval_every != 1:
            cmd += ["--eval-every", str(self.eval_every)]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # spinning OpenMP threads starve parallel jobs
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["MKL_NUM_THREADS"] = str(self.threads)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run_one(self, spec: RunSpec) -> Outcome:
        run_dir = self.sweep_dir / spec.name
        state = run_state(run_dir)
        resume = state == "interrupted"  # config.json but no complete summary: `crepe train --resume`
        log = self.sweep_dir / LOGS / f"{spec.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "wb") as fh:
            fh.write(("$ " + " ".join(self.command(spec, resume=resume)) + "\n").encode())
            fh.flush()
            with self._lock:
                if self._stopping:
                    return Outcome(spec.name, "interrupted", None, 0.0, resume, "")
                proc = subprocess.Popen(
                    self.command(spec, resume=resume), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(),
                    preexec_fn=self._preexec(),
                )
                self._procs.add(proc)
            try:
                rc = self._wait(proc)
            finally:
                with self._lock:
                    self._procs.discard(proc)
        wall = time.perf_counter() - start
        if self._stopping:
            status = "interrupted"
        elif rc == 0 and run_state(run_dir) == "complete":
            status = "complete"
        else:
            status = "failed"
        return Outcome(spec.name, status, rc, wall, resume, "" if status == "complete" else _tail(log))

    def _preexec(self) -> Callable[[], None] | None:
        """What the child runs between fork and exec (None: nothing)."""
        return None

    def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        return proc.wait()

    def stop(self) -> None:
        """Terminate the runs this runner started (they stay resumable)."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _summary_line(run_dir: Path) -> str:
    try:
        s = rundir.read_summary(run_dir) or {}
    except UsageError:
        return ""
    acc = s.get("test_acc")
    eps = s.get("eps_total")
    acc_s = f"test acc {100 * acc:.2f}%" if isinstance(acc, (int, float)) else ""
    eps_s = f"eps {eps:.3g}" if isinstance(eps, (int, float)) and eps is not None else "eps inf"
    return f": {acc_s}, {eps_s}"


def _build_extension_once(python: str) -> None:
    """Import the C++ extension once before starting parallel runs: an editable
    install rebuilds it on import, and N runs must not rebuild it at once.
    A broken build is left for the runs themselves to report."""
    subprocess.run([python, "-c", "import crepe._core"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL, check=False)


class Executor(Protocol):
    """Where a sweep's runs run. execute calls outcomes once, then stop (on an interrupt) and close."""

    parallel: bool  # runs at once: start the costliest first, and build the extension before

    def describe(self) -> str: ...  # the end of the sweep's first line: "2 jobs x 1 thread"

    def outcomes(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]: ...  # each run's, as it ends

    def stop(self) -> None: ...  # the runs still going stop (each stays resumable); returns once they have

    def close(self) -> None: ...


class Local:
    """The default executor: `runner.jobs` threads on this machine, each waiting on one `crepe train`."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.parallel = runner.jobs > 1
        self._pool = ThreadPoolExecutor(max_workers=runner.jobs)

    def describe(self) -> str:
        threads = self.runner.threads or default_threads(self.runner.jobs)  # execute has given it so
        return f"{count(self.runner.jobs, 'job')} x {count(threads, 'thread')}"

    def outcomes(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]:
        futures: dict[Future[Outcome], RunSpec] = {self._pool.submit(self.runner.run_one, s): s for s in specs}
        for fut in as_completed(futures):
            yield fut.result()

    def stop(self) -> None:
        self.runner.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def execute(plan: Plan, *, sweep_dir: Path, jobs: int = 1, threads: int | None = None, data_dir: str | None = None,
            python: str | None = None, out: Any = None, eval_every: int = 1,
            executor: Callable[[Runner], Executor] | None = None) -> dict[str, Any]:
    """Run every not-yet-complete run of `plan`, updating the manifest as runs end.

    Returns the manifest. Runs that fail are recorded there and in the returned
    manifest's "failures"; they never stop the others. Runs whose schedule cannot
    reach their target epsilon are never started: they are recorded with status
    "unreachable" and their smallest reachable epsilon, and listed in "unreachable".
    executor makes the executor from the runs' Runner (default: Local, `jobs` at a
    time with `threads` each, cores // jobs if None); for any other, `threads` None
    is left to it and `jobs` unused.
    """
    out = out or sys.stdout
    sweep_dir.mkdir(parents=True, exist_ok=True)
    old = load_manifest(sweep_dir)
    records: dict[str, Any] = dict(old.get("runs", {})) if old else {}
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "tool": "crepe sweep",
        "preset": plan.preset if plan.preset is not None else (old or {}).get("preset"),
        "grid": {k: list(v) for k, v in plan.grid.items()},
        "fixed": dict(plan.fixed),
        "data_dir": data_dir if data_dir is not None else (old or {}).get("data_dir"),
        "created": (old or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "runs": {},
    }
    if data_dir is None:
        data_dir = manifest["data_dir"]
    states, floors = check_runs(plan, sweep_dir=sweep_dir, data_dir=data_dir, out=out)
    for spec in plan.runs:
        rec = {k: v for k, v in records.get(spec.name, {}).items() if k not in UNREACHABLE_FIELDS}
        rec["args"] = spec.train_args()
        rec["status"] = states[spec.name]
        if spec.name in floors:  # checked on every invocation: a changed schedule or accountant may reach it now
            rec.update(status="unreachable", target_epsilon=spec.target, smallest_epsilon=floors[spec.name],
                       settings=dict(spec.settings))
        manifest["runs"][spec.name] = rec

    def save() -> None:
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["failures"] = {n: {"returncode": r.get("returncode"), "log": r.get("log"), "tail": r.get("tail")}
                                for n, r in manifest["runs"].items() if r["status"] == "failed"}
        manifest["unreachable"] = {n: {k: r[k] for k in UNREACHABLE_FIELDS[:2]}
                                   for n, r in manifest["runs"].items() if r["status"] == "unreachable"}
        rundir.atomic_write_json(sweep_dir / MANIFEST, manifest)

    todo = [s for s in plan.runs if states[s.name] != "complete" and s.name not in floors]
    skipped = sum(state == "complete" for state in states.values())
    if executor is None:
        threads = threads or default_threads(jobs)
    runner = Runner(sweep_dir=sweep_dir, data_dir=data_dir, threads=threads, jobs=jobs, python=python or sys.executable,
                    eval_every=eval_every)
    ex = Local(runner) if executor is None else executor(runner)
    print(f"crepe sweep: {count(len(plan.runs), 'run')} in {sweep_dir} ({skipped} complete, {len(todo)} to run, "
          f"{len(floors)} unreachable; {ex.describe()})", file=out, flush=True)
    for spec in plan.runs:
        if spec.name in floors:
            print(f"crepe sweep: {spec.name} not run: {unreachable_text(spec, floors[spec.name])}", file=out, flush=True)
    save()
    if ex.parallel and todo:
        _build_extension_once(runner.python)
    order = sorted(todo, key=lambda s: -s.cost()) if ex.parallel else todo
    done = 0
    try:
        for o in ex.outcomes(order):
            done += 1
            rec = manifest["runs"][o.name]
            rec.update(status=o.status, returncode=o.returncode, wall_s=round(o.wall_s, 2), resumed=o.resumed,
                       attempts=int(rec.get("attempts", 0)) + 1, log=f"{LOGS}/{o.name}.log")
            if o.status == "complete":
                rec.pop("tail", None)
                detail = _summary_line(sweep_dir / o.name)
            else:
                rec["tail"] = o.log_tail
                last = o.log_tail.splitlines()[-1] if o.log_tail else ""
                detail = f": exit {o.returncode}; {last}"
            save()
            verb = "resumed and finished" if o.resumed and o.status == "complete" else o.status
            print(f"[{done}/{len(order)}] {o.name} {verb} in {o.wall_s:.1f}s{detail}", file=out, flush=True)
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, SIGTERM, or output piped into a closed `head`
        ex.stop()
        for s in order:
            r = manifest["runs"][s.name]
            if r["status"] not in ("complete", "failed"):
                r["status"] = run_state(sweep_dir / s.name)
        save()
        raise
    finally:
        ex.close()
    return manifest


