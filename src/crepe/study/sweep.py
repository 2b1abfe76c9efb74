"""`crepe sweep`: run a grid of `crepe train` configurations, one run directory each.

Every configuration runs as its own `python -m crepe train` subprocess: a crash
stays in its run, `--jobs N` runs N at a time, and this module loads torch only
to check target epsilons (below). The sweep directory holds

    SWEEP_DIR/sweep.json          the manifest: grid, fixed settings, per-run status
    SWEEP_DIR/<run name>/         one `crepe train` run directory per configuration
    SWEEP_DIR/logs/<run name>.log stdout and stderr of the run's last attempt

The options come from their declarations (crepe.config, via crepe.study.grid):
every grid option is an axis (several values), every other option a fixed
setting (one value). Re-running a sweep skips runs whose summary.json says
"complete", continues interrupted runs with `crepe train --resume`, and retries
failed ones. A failed run is recorded (exit code and the tail of its log) and
does not stop the others. A run calibrated to a target epsilon that its
schedule cannot reach is never started: each invocation (--dry-run too) first
calibrates the runs with a target in-process, as `crepe train` would, and the
manifest records those it would refuse as "unreachable" with the smallest
reachable epsilon (`crepe report` lists them). The manifest fixes the grid:
asking for a different grid in an existing sweep directory is an error unless
`--extend` is given (which only adds runs). Ctrl-C or SIGTERM stops the runs
(each resumable from its last epoch), records them, and exits 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crepe.parser import Parser
from crepe.config import Spec, UsageError, check_choice, options
from crepe.study import command
from crepe.study import grid as opts
from crepe.study.grid import PRIVACY, REPLICATE, SOLVES, Setting, fmt
from crepe.training import rundir

MANIFEST = "sweep.json"
LOGS = "logs"
FORMAT_VERSION = 1
TARGET = "target_epsilon"  # the option that calibrates a run's sigma: such a run may be unreachable
# What the manifest records of a run that is never started because its target is unreachable.
UNREACHABLE_FIELDS = ("target_epsilon", "smallest_epsilon", "settings")

# The axes every run name shows, in this order; other axes appear only when the
# sweep gives them more than one value (and the run uses them).
NAME_AXES = ("dataset", "model", "method", PRIVACY, REPLICATE)

DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "dataset": ("mnist",),
    "model": ("cnn",),
    "method": ("full", "random", "craig"),
    PRIVACY: ("dp",),
    "sigma": (1.0,),
    REPLICATE: (0,),
}

PRESETS: dict[str, dict[str, Any]] = {
    # The seed's protocol (DESIGN.md section 3).
    "paper": {
        "about": "the seed's protocol: MNIST; cnn and resnet; full, random, craig; DP at sigma 1, 3, 5 and "
        "non-DP; 3 seeds; 50 epochs, a 10% coreset re-selected every 20. Hours on 2 cores (its CNN half "
        "with 2 seeds took 19 min with --jobs 2 on the offline 8,000-image MNIST split; ResNet runs cost ~4x)",
        "grid": {
            "dataset": ("mnist",),
            "model": ("cnn", "resnet"),
            "method": ("full", "random", "craig"),
            PRIVACY: ("dp", "nodp"),
            "sigma": (1.0, 3.0, 5.0),
            REPLICATE: (0, 1, 2),
        },
        "fixed": {"epochs": 50, "max-grad-norm": 1.0, "delta": 1e-5},
        "grid_fixed": {"fraction": (0.1,), "select-every": (20,)},
    },
    # The same study scaled to about 15 minutes on 2 idle CPU cores (measured in
    # docs/results.md).
    "quick": {
        "about": "the paper's study made small: full Fashion-MNIST (60,000 / 10,000), cnn; full, random, "
        "craig; DP at sigma 1 and 3 and non-DP; 2 seeds; 4 epochs, a 10% coreset re-selected every 2. "
        "About 12-15 min on 2 cores with --jobs 2 (docs/results.md)",
        "grid": {
            "dataset": ("fashion-mnist",),
            "model": ("cnn",),
            "method": ("full", "random", "craig"),
            PRIVACY: ("dp", "nodp"),
            "sigma": (1.0, 3.0),
            REPLICATE: (0, 1),
        },
        "fixed": {"epochs": 4, "max-grad-norm": 1.0, "delta": 1e-5},
        "grid_fixed": {"fraction": (0.1,), "select-every": (2,)},
    },
}


# ---------------------------------------------------------------------------
# The plan: grid -> named run specifications.


def _settings() -> dict[str, Setting]:
    return {**opts.axes(), **opts.fixed()}


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the sweep: its directory name and `crepe train` flags."""

    name: str
    settings: tuple[tuple[str, Any], ...]  # (key, value): grid axes then fixed settings

    def train_args(self) -> list[str]:
        """The `crepe train` flags of this run (without --out, --data-dir, --threads)."""
        known = _settings()
        return [a for key, value in self.settings for a in opts.train_args(known[key], value)]

    def given(self) -> dict[str, Any]:
        """This run's options as `crepe train` receives them: TrainConfig field -> value."""
        known = _settings()
        return {known[k].name: (v == "dp" if k == PRIVACY else v) for k, v in self.settings}

    @property
    def target(self) -> float | None:
        """The target epsilon this run is calibrated to, if any."""
        value: float | None = self.given().get(TARGET)
        return value

    def cost(self) -> float:
        """A rough relative cost, to start the longest runs first."""
        v = dict(self.settings)
        per_example = 4.0 if v.get("model") == "resnet" else 1.0
        method = v.get("method")
        # --compute steps: a small set trains the optimiser steps of the full run (its share of the data is 1)
        trained = 1.0 if v.get("compute") == "steps" else float(v.get("fraction", 0.1))
        # private-set: generation (per-example gradients of a ConvNet on Poisson batches) ~ a full epoch or two
        share = 1.0 if method == "full" else 2.0 if method == "private-set" else trained + 0.05
        dp = 1.5 if v.get(PRIVACY) == "dp" else 1.0
        return per_example * share * dp


@dataclass(frozen=True)
class Plan:
    """A validated sweep: the grid, the fixed settings, and the runs they make."""

    grid: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any]
    preset: str | None = None
    runs: tuple[RunSpec, ...] = field(default=())

    def identity(self) -> dict[str, Any]:
        """What must match between two invocations on one sweep directory."""
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "fixed": dict(self.fixed)}


def _solving_axes() -> list[tuple[str, str]]:
    """(solver, solved) sweep keys where one grid option solves another grid option (target
    epsilon -> sigma): a sweep has one axis or the other. A solver whose solved option is a fixed
    setting (select share -> select sigma) is an ordinary axis; `crepe train` refuses both given."""
    keys = {st.name: k for k, st in opts.axes().items()}
    return [(keys[a], keys[b]) for a, b in SOLVES.items() if a in keys and b in keys]


def _name(values: dict[str, Any], grid: dict[str, tuple[Any, ...]], unused: set[str]) -> str:
    parts = [str(values[k]) for k in NAME_AXES[:3]]
    (target, sigma), = _solving_axes()  # shown as the privacy part
    if values[PRIVACY] == "nodp":
        parts.append("nodp")
    elif target in values:
        parts.append(f"eps{fmt(values[target])}")
    else:
        parts.append(f"sigma{fmt(values[sigma])}" if sigma in values else "dp")
    for key in grid:
        if key in NAME_AXES or key in (target, sigma) or len(grid[key]) < 2 or key in unused:
            continue
        parts.append(f"{key}{fmt(values[key])}")
    # seed last reads better: dataset_model_method_sigma1_[extras_]seed0
    return "_".join(parts + [f"seed{values[REPLICATE]}"])


def parse_values(key: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """Parse and validate the values of one grid axis; UsageError names the flag."""
    axes = opts.axes()
    if key not in axes:
        raise UsageError(f"unknown grid key {key!r}; valid grid keys: {', '.join(axes)}")
    if not values:
        raise UsageError(f"{axes[key].spec.flag} needs at least one value")
    out: list[Any] = []
    for v in values:
        value = opts.parse(axes[key], v)
        if value not in out:  # keep the user's order, drop repeats
            out.append(value)
    return tuple(out)


def parse_fixed(key: str, value: Any) -> Any:
    settings = opts.fixed()
    if key not in settings:
        raise UsageError(f"unknown setting {key!r}; valid settings: {', '.join(settings)}")
    return opts.parse(settings[key], value)


def make_plan(
    *,
    grid: Mapping[str, Sequence[Any]],
    fixed: dict[str, Any] | None = None,
    preset: str | None = None,
) -> Plan:
    """Validate a grid (values as text or already typed) and expand it into runs.

    Axes not given take DEFAULT_GRID (or the preset's) values; settings not given
    are left to `crepe train`'s defaults. nodp runs drop the DP-only axes
    (sigma, target epsilon, clipping); a target-epsilon axis replaces the sigma
    axis. Every run's options are checked as `crepe train` would check them, so
    a bad combination is refused before anything runs. UsageError if bad.
    """
    if preset is not None:
        check_choice("preset", preset, tuple(PRESETS))
    axes, settings = opts.axes(), opts.fixed()
    base_grid: dict[str, tuple[Any, ...]] = dict(DEFAULT_GRID)
    base_fixed: dict[str, Any] = {}
    if preset is not None:
        base_grid.update(PRESETS[preset]["grid"])
        base_grid.update(PRESETS[preset].get("grid_fixed", {}))
        base_fixed.update({k: parse_fixed(k, v) for k, v in PRESETS[preset]["fixed"].items()})  # an option turned axis fails here
    asked = {key: parse_values(key, values) for key, values in grid.items()}
    for a, b in _solving_axes():  # one of the two axes: what the user asked for wins
        if a in asked and b in asked:
            raise UsageError(f"{axes[a].spec.flag} solves {axes[b].name}: give {axes[b].spec.flag} or {axes[a].spec.flag}, not both")
        base_grid.pop(b if a in asked else a if b in asked else "", None)
        if a in base_grid:
            base_grid.pop(b, None)
    base_grid.update(asked)
    for key, value in (fixed or {}).items():
        base_fixed[key] = parse_fixed(key, value)
    g = {k: parse_values(k, base_grid[k]) for k in axes if k in base_grid}  # canonical key order
    f = {k: base_fixed[k] for k in settings if k in base_fixed}

    runs: dict[str, RunSpec] = {}
    keys = list(g)
    for combo in itertools.product(*(g[k] for k in keys)):
        values = dict(zip(keys, combo))
        method, dp = values.get("method", opts.default("method")), values.get(PRIVACY, "dp") == "dp"
        unused = {k for k in keys if opts.unused(axes[k].name, method=method, dp=dp)}
        name = _name(values, g, unused)
        if name in runs:  # e.g. nodp runs repeat once per sigma: keep the first
            continue
        # Settings a run does not use (its method ignores them, or a non-private run the
        # DP-only ones) are left out of its flags: crepe train refuses them.
        known = _settings()
        chosen = {k: values[k] for k in keys if k not in unused}
        chosen |= {k: v for k, v in f.items() if not opts.unused(known[k].name, method=method, dp=dp)}
        spec = RunSpec(name=name, settings=tuple(chosen.items()))
        opts.run_config(spec.given(), f"run {name}")
        runs[name] = spec
    return Plan(grid=g, fixed=f, preset=preset, runs=tuple(runs.values()))


# ---------------------------------------------------------------------------
# Run directories and the manifest.


def run_state(run_dir: Path) -> str:
    """'complete', 'interrupted' (a run exists but has not finished), or 'new'."""
    if rundir.is_complete(run_dir):
        return "complete"
    if (run_dir / rundir.CONFIG).is_file():
        return "interrupted"
    return "new"


def load_manifest(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = rundir.read_json(path)
    if not isinstance(manifest, dict) or "grid" not in manifest or "fixed" not in manifest:
        raise UsageError(f"{path} is not a crepe sweep manifest (no 'grid'/'fixed'); fix or remove it")
    return manifest


def plan_from_manifest(manifest: dict[str, Any]) -> Plan:
    axes = opts.axes()
    grid = dict(manifest["grid"])
    fixed = {}
    for key, value in manifest["fixed"].items():
        if key in axes and key not in grid:  # an option declared a grid axis since (select-every): one value
            grid[key] = [value]
        else:
            fixed[key] = value
    return make_plan(grid=grid, fixed=fixed, preset=None)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for part in ("grid", "fixed"):
        for key in sorted(set(old[part]) | set(new[part])):
            a, b = old[part].get(key), new[part].get(key)
            if a != b:
                lines.append(f"  {part} {key}: existing {a!r}, requested {b!r}")
    return lines


def merge_plans(old: Plan, new: Plan) -> Plan:
    """--extend: the union of both grids; the fixed settings must agree."""
    if old.fixed != new.fixed:
        raise UsageError(
            "--extend can add grid values but not change fixed settings (runs would "
            "differ in settings their names do not show):\n"
            + "\n".join(_diff({"grid": {}, "fixed": old.fixed}, {"grid": {}, "fixed": new.fixed}))
        )
    grid = {k: tuple(dict.fromkeys(old.grid.get(k, ()) + new.grid.get(k, ()))) for k in opts.axes()
            if k in old.grid or k in new.grid}
    merged = make_plan(grid=grid, fixed=old.fixed)
    # Names depend on which axes have several values: an extension must not rename existing runs.
    renamed = {r.name for r in make_plan(grid=old.grid, fixed=old.fixed).runs} - {r.name for r in merged.runs}
    if renamed:
        raise UsageError(
            "--extend would rename existing runs (a new axis got a second value): "
            + ", ".join(sorted(renamed)[:5])
            + "; use a new sweep directory"
        )
    return merged


# ---------------------------------------------------------------------------
# Targets a schedule cannot reach.


@contextlib.contextmanager
def _each_dataset_loaded_once() -> Iterator[None]:
    """Within the block crepe.data.load returns one cached result per (dataset, folder, subsets):
    new_run_config loads the data of each run it calibrates (~1 s for Fashion-MNIST) to count its labels."""
    from crepe import data

    real = data.load
    data.load = functools.lru_cache(maxsize=None)(real)  # type: ignore[assignment]
    try:
        yield
    finally:
        data.load = real  # type: ignore[assignment]


def _floor(given: dict[str, Any]) -> float | None:
    """The smallest reachable epsilon if `crepe train` would refuse this run's target as unreachable, else None."""
    from crepe.training.plan import new_run_config
    from crepe.privacy.calibration import Unreachable

    try:
        new_run_config(given)
    except Unreachable as e:
        return e.floor
    except UsageError:  # not this check's to report: the run fails with the message in its log
        return None
    return None


def unreachable(specs: Sequence[RunSpec], *, data_dir: str | None) -> dict[str, float]:
    """name -> smallest reachable epsilon, for each run whose schedule cannot reach its target epsilon.

    Each run with a target is calibrated in-process exactly as `crepe train` would calibrate it
    (crepe.training.plan.new_run_config); runs that differ only in their seed share one check (calibration
    does not depend on the seed). Imports torch only when a run has a target.
    """
    floors: dict[tuple[tuple[str, Any], ...], float | None] = {}
    out: dict[str, float] = {}
    with _each_dataset_loaded_once():  # crepe.data is torch-free until a dataset loads
        for spec in (s for s in specs if s.target is not None):
            given = spec.given() | ({} if data_dir is None else {"data_dir": data_dir})
            cell = tuple((k, v) for k, v in given.items() if k != REPLICATE)
            if cell not in floors:
                floors[cell] = _floor(given)
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
    """Runs RunSpecs as `crepe train` subprocesses, `jobs` at a time."""

    def __init__(self, *, sweep_dir: Path, data_dir: str | None, threads: int, jobs: int, python: str,
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
            cmd += ["--resume", str(run_dir), "--threads", str(self.threads)]
        else:
            cmd += ["--out", str(run_dir)] + spec.train_args() + ["--threads", str(self.threads)]
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
                    self.command(spec, resume=resume), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env()
                )
                self._procs.add(proc)
            try:
                rc = proc.wait()
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


def execute(plan: Plan, *, sweep_dir: Path, jobs: int = 1, threads: int | None = None, data_dir: str | None = None,
            python: str | None = None, out: Any = None, eval_every: int = 1) -> dict[str, Any]:
    """Run every not-yet-complete run of `plan`, updating the manifest as runs end.

    Returns the manifest. Runs that fail are recorded there and in the returned
    manifest's "failures"; they never stop the others. Runs whose schedule cannot
    reach their target epsilon are never started: they are recorded with status
    "unreachable" and their smallest reachable epsilon, and listed in "unreachable".
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
    threads = threads or default_threads(jobs)
    runner = Runner(sweep_dir=sweep_dir, data_dir=data_dir, threads=threads, jobs=jobs, python=python or sys.executable,
                    eval_every=eval_every)
    print(f"crepe sweep: {len(plan.runs)} runs in {sweep_dir} ({skipped} complete, {len(todo)} to run, "
          f"{len(floors)} unreachable; {jobs} job(s) x {threads} thread(s))", file=out, flush=True)
    for spec in plan.runs:
        if spec.name in floors:
            print(f"crepe sweep: {spec.name} not run: {unreachable_text(spec, floors[spec.name])}", file=out, flush=True)
    save()
    if jobs > 1 and todo:
        _build_extension_once(python or sys.executable)
    order = sorted(todo, key=lambda s: -s.cost()) if jobs > 1 else todo
    done = 0
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures: dict[Future[Outcome], RunSpec] = {pool.submit(runner.run_one, s): s for s in order}
        for fut in as_completed(futures):
            o = fut.result()
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
        runner.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        for s in order:
            r = manifest["runs"][s.name]
            if r["status"] not in ("complete", "failed"):
                r["status"] = run_state(sweep_dir / s.name)
        save()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return manifest


# ---------------------------------------------------------------------------
# Command line.


def _help(st: Setting, default: Any) -> str:
    s = st.spec
    bounds = "" if s.kind == "bool" else f"; {s.describe_bounds()}"
    shown = "" if default is None else f" (default: {default})"
    return (s.help + bounds + shown).replace("%", "%%")  # argparse formats help with %


def _presets_text() -> str:
    lines = ["presets (--preset NAME; options given override the preset's):"]
    for name, p in PRESETS.items():
        n = len(make_plan(grid={}, preset=name).runs)
        lines += textwrap.wrap(f"{name}: {n} runs: {p['about']}.", width=78, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="crepe sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the preset list's lines
        description=textwrap.fill("Run a grid of `crepe train` configurations, one run directory each, skipping complete "
        "runs and resuming interrupted ones. Grid options take several values (one run per combination); "
        "every other `crepe train` option can be given once, for all runs.", width=78),
        epilog=_presets_text(),
    )
    p.add_argument("--out", required=True, type=Path, help="sweep directory (created if missing)")
    p.add_argument("--preset", metavar="NAME", help=f"start from a preset grid: {', '.join(PRESETS)} (below)")
    grid = p.add_argument_group("grid options (several values each)")
    for key, st in opts.axes().items():
        default = ", ".join(map(fmt, DEFAULT_GRID[key])) if key in DEFAULT_GRID else opts.default(st.name)
        grid.add_argument(st.spec.flag, dest=f"grid:{key}", nargs="+", metavar="V", help=_help(st, default))
    fixed = p.add_argument_group("fixed settings (one value, passed to every run)")
    for key, st in opts.fixed().items():
        if st.spec.kind == "bool":
            fixed.add_argument(st.spec.flag, dest=f"fixed:{key}", action="store_const",
                               const=not opts.default(st.name), help=_help(st, None))
        else:
            fixed.add_argument(st.spec.flag, dest=f"fixed:{key}", metavar="V", help=_help(st, opts.default(st.name)))
    p.add_argument("--data-dir", help="folder of the IDX .gz files, passed to every run (not part of the grid)")
    p.add_argument("--jobs", default="1", help="runs at a time (default: 1)")
    p.add_argument("--threads", help="torch threads per run (default: cores // jobs)")
    p.add_argument("--eval-every", help="each run's test accuracy every N epochs and after the last (default: 1)")
    p.add_argument("--extend", action="store_true", help="add the requested grid values to an existing sweep")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands; run nothing")
    return p


JOBS = Spec(help="runs at a time", kind="int", low=1, flag="--jobs")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (exit status 143 instead of 130)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: list[str]) -> int:
    return command("crepe sweep", _main, argv)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    given = vars(args)
    if unknown:
        flags = [st.spec.flag for st in _settings().values()] + [f"--{f}" for f in opts.SWEEP_FLAGS]
        close = difflib.get_close_matches(unknown[0], flags, n=1)
        hint = f"did you mean {close[0]}?" if close else "see crepe sweep --help"
        raise UsageError(f"unknown option(s) {' '.join(unknown)} ({hint})")
    jobs = JOBS.parse(args.jobs)
    threads = None if args.threads is None else options()["threads"].parse(args.threads)
    eval_every = 1 if args.eval_every is None else options()["eval_every"].parse(args.eval_every)
    grid = {k.split(":", 1)[1]: v for k, v in given.items() if k.startswith("grid:") and v is not None}
    fixed = {k.split(":", 1)[1]: v for k, v in given.items() if k.startswith("fixed:") and v is not None}
    sweep_dir: Path = args.out
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} exists and is not a directory")
    existing = load_manifest(sweep_dir)
    if existing is None and sweep_dir.is_dir() and any(p.name != LOGS for p in sweep_dir.iterdir()):
        raise UsageError(f"{sweep_dir} is not empty and has no {MANIFEST}: refusing to use it as a sweep directory")
    if existing is not None and not (grid or fixed or args.preset):
        plan = plan_from_manifest(existing)  # plain re-run: the recorded grid
        plan = Plan(grid=plan.grid, fixed=plan.fixed, preset=existing.get("preset"), runs=plan.runs)
    else:
        plan = make_plan(grid=grid, fixed=fixed, preset=args.preset)
        if existing is not None:
            old = plan_from_manifest(existing)
            if old.identity() != plan.identity():
                if not args.extend:
                    raise UsageError(
                        f"{sweep_dir} already holds a sweep with a different grid:\n"
                        + "\n".join(_diff(old.identity(), plan.identity()))
                        + "\nre-run with no grid options to continue it, add --extend to add runs to it, "
                        "or use another --out"
                    )
                plan = merge_plans(old, plan)
    if args.dry_run:
        data_dir = args.data_dir if args.data_dir is not None else (existing or {}).get("data_dir")
        runner = Runner(sweep_dir=sweep_dir, data_dir=data_dir, threads=threads or default_threads(jobs),
                        jobs=jobs, python=sys.executable, eval_every=eval_every)
        states, floors = check_runs(plan, sweep_dir=sweep_dir, data_dir=data_dir, out=sys.stderr)
        for spec in plan.runs:
            state = states[spec.name]
            if spec.name in floors:
                print(f"{spec.name} [unreachable]: {unreachable_text(spec, floors[spec.name])}")
            else:
                print(f"{spec.name} [{state}]: {' '.join(runner.command(spec, resume=state == 'interrupted')[2:])}")
        return 0
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        manifest = execute(plan, sweep_dir=sweep_dir, jobs=jobs, threads=threads, data_dir=args.data_dir,
                           eval_every=eval_every)
    except KeyboardInterrupt as e:
        print("crepe sweep: interrupted; re-run the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    failures = manifest["failures"]
    n = len(manifest["runs"])
    complete = sum(r["status"] == "complete" for r in manifest["runs"].values())
    print(f"crepe sweep: {complete}/{n} runs complete in {sweep_dir}")
    if manifest["unreachable"]:
        print(f"crepe sweep: {len(manifest['unreachable'])} run(s) not run: their target epsilon is unreachable "
              f"(listed in {sweep_dir / MANIFEST} and by crepe report)")
    if failures:
        print(f"crepe sweep: {len(failures)} run(s) failed (details in {sweep_dir / MANIFEST} and {sweep_dir / LOGS}/):",
              file=sys.stderr)
        for name, f in failures.items():
            last = (f.get("tail") or "").splitlines()[-1:] or [""]
            print(f"  {name}: exit {f['returncode']}: {last[0]}", file=sys.stderr)
        return 1
    return 0
