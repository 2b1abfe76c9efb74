"""`crepe sweep`: run a grid of `crepe train` configurations, one run directory each.

Every configuration runs as its own `python -m crepe train` subprocess: a crash
stays in its run, `--jobs N` runs N at a time, and this module needs nothing of
torch. The sweep directory holds

    SWEEP_DIR/sweep.json          the manifest: grid, fixed settings, per-run status
    SWEEP_DIR/<run name>/         one `crepe train` run directory per configuration
    SWEEP_DIR/logs/<run name>.log stdout and stderr of the run's last attempt

Re-running a sweep skips runs whose summary.json says "complete", continues
interrupted runs with `crepe train --resume`, and retries failed ones. A failed
run is recorded (exit code and the tail of its log) and does not stop the
others. The manifest fixes the grid: asking for a different grid in an existing
sweep directory is an error unless `--extend` is given (which only adds runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crepe.config import METHODS, options

_O = options()
DATASETS, MODELS, OPTIMIZERS, PROXIES = (_O[k].choices for k in ("dataset", "model", "optimizer", "proxy"))
SCOPES, WEIGHTINGS, ACCOUNTANTS = (_O[k].choices for k in ("selection_scope", "weights", "accountant"))

MANIFEST = "sweep.json"
LOGS = "logs"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Value parsers: each returns the canonical value or raises ValueError.


def _choice(*valid: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in valid:
            raise ValueError(f"{text!r} is not valid; valid: {', '.join(valid)}")
        return text

    parse.valid = valid  # type: ignore[attr-defined]
    return parse


def _finite_float(text: str, *, zero_ok: bool) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not zero_ok):
        raise ValueError(f"{text!r} must be a finite number {'>=' if zero_ok else '>'} 0")
    return x


def _positive_float(text: str) -> float:  # argparse names the type in its messages
    return _finite_float(text, zero_ok=False)


def _nonneg_float(text: str) -> float:
    return _finite_float(text, zero_ok=True)


def _fraction(text: str) -> float:
    x = _positive_float(text)
    if x > 1:
        raise ValueError(f"{text!r} must lie in (0, 1]")
    return x


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            x = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if x < low:
            raise ValueError(f"{text!r} must be >= {low}")
        return x

    return parse


def _text(text: str) -> str:
    return text


@dataclass(frozen=True)
class Option:
    """One `crepe train` setting that a sweep can set."""

    flag: str  # the `crepe train` flag
    parse: Callable[[str], Any]
    help: str


# Settings a sweep can vary (several values: one run per combination). Keys are
# the sweep's option names; `seed` is spelled `--seeds` on the command line.
GRID_AXES: dict[str, Option] = {
    "dataset": Option("--dataset", _choice(*DATASETS), "datasets"),
    "model": Option("--model", _choice(*MODELS), "models"),
    "method": Option("--method", _choice(*METHODS), "selection methods"),
    "privacy": Option("", _choice("dp", "nodp"), "dp (DP-SGD at each --sigma) and/or nodp (non-private reference, one run per other setting)"),
    "sigma": Option("--sigma", _positive_float, "DP-SGD noise multipliers (dp runs only)"),
    "seed": Option("--seed", _int_at_least(0), "seeds (spelled --seeds)"),
    "fraction": Option("--fraction", _fraction, "coreset fractions (craig/random only)"),
    "proxy": Option("--proxy", _choice(*PROXIES), "gradient proxies for selection"),
    "weights": Option("--weights", _choice(*WEIGHTINGS), "coreset weighting"),
    "selection-scope": Option("--selection-scope", _choice(*SCOPES), "selection scope"),
}

# Settings held fixed for the whole sweep (one value, passed to every run).
FIXED: dict[str, Option] = {
    "epochs": Option("--epochs", _int_at_least(1), "epochs per run"),
    "select-every": Option("--select-every", _int_at_least(1), "re-select the coreset every N epochs"),
    "train-subset": Option("--train-subset", _int_at_least(1), "first N training examples (seeded subset)"),
    "test-subset": Option("--test-subset", _int_at_least(1), "N test examples"),
    "batch-size": Option("--batch-size", _int_at_least(1), "expected (Poisson) batch size"),
    "lr": Option("--lr", _positive_float, "learning rate"),
    "optimizer": Option("--optimizer", _choice(*OPTIMIZERS), "optimizer"),
    "max-grad-norm": Option("--max-grad-norm", _positive_float, "DP-SGD clipping norm C"),
    "delta": Option("--delta", _positive_float, "delta of the reported epsilon"),
    "accountant": Option("--accountant", _choice(*ACCOUNTANTS), "privacy accountant"),
    "select-clip": Option("--select-clip", _positive_float, "clipping norm of the selection proxies"),
    "select-sigma": Option("--select-sigma", _nonneg_float, "proxy noise multiplier (default: the run's sigma)"),
}

# Axes a method does not use: a second value makes no extra run of that method.
IRRELEVANT: dict[str, tuple[str, ...]] = {
    "full": ("fraction", "proxy", "weights", "selection-scope"),
    "random": ("proxy",),
    "craig": (),
}

# The axes every run name shows, in this order; other axes appear only when the
# sweep gives them more than one value.
NAME_AXES = ("dataset", "model", "method", "privacy", "seed")

DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "dataset": ("mnist",),
    "model": ("cnn",),
    "method": ("full", "random", "craig"),
    "privacy": ("dp",),
    "sigma": (1.0,),
    "seed": (0,),
}

PRESETS: dict[str, dict[str, Any]] = {
    # The seed's protocol (DESIGN.md section 3).
    "paper": {
        "grid": {
            "dataset": ("mnist",),
            "model": ("cnn", "resnet"),
            "method": ("full", "random", "craig"),
            "privacy": ("dp", "nodp"),
            "sigma": (1.0, 3.0, 5.0),
            "seed": (0, 1, 2),
        },
        "fixed": {
            "epochs": 50,
            "select-every": 20,
            "max-grad-norm": 1.0,
            "delta": 1e-5,
        },
        "grid_fixed": {"fraction": (0.1,)},
    },
    # The same study scaled to about 15 minutes on 2 idle CPU cores (measured in
    # docs/results.md): full Fashion-MNIST (60,000 / 10,000), CNN only, 4 epochs
    # with the 10% coreset re-selected every 2 (2 selection rounds), sigma 1 and 3,
    # two seeds.
    "quick": {
        "grid": {
            "dataset": ("fashion-mnist",),
            "model": ("cnn",),
            "method": ("full", "random", "craig"),
            "privacy": ("dp", "nodp"),
            "sigma": (1.0, 3.0),
            "seed": (0, 1),
        },
        "fixed": {
            "epochs": 4,
            "select-every": 2,
            "max-grad-norm": 1.0,
            "delta": 1e-5,
        },
        "grid_fixed": {"fraction": (0.1,)},
    },
}


# ---------------------------------------------------------------------------
# The plan: grid -> named run specifications.


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the sweep: its directory name and `crepe train` flags."""

    name: str
    settings: tuple[tuple[str, Any], ...]  # (key, value): grid axes then fixed settings

    def train_args(self) -> list[str]:
        """The `crepe train` flags of this run (without --out, --data-dir, --threads)."""
        args: list[str] = []
        values = dict(self.settings)
        for key, value in self.settings:
            if key == "privacy":
                if value == "nodp":
                    args.append("--no-dp")
                continue
            if key == "sigma" and values.get("privacy") == "nodp":
                continue
            opt = GRID_AXES.get(key) or FIXED[key]
            args += [opt.flag, _fmt(value)]
        return args

    def cost(self) -> float:
        """A rough relative cost, to start the longest runs first."""
        v = dict(self.settings)
        per_example = 4.0 if v.get("model") == "resnet" else 1.0
        share = 1.0 if v.get("method") == "full" else float(v.get("fraction", 0.1)) + 0.05
        dp = 1.5 if v.get("privacy") == "dp" else 1.0
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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _name(values: dict[str, Any], grid: dict[str, tuple[Any, ...]]) -> str:
    parts: list[str] = []
    for key in NAME_AXES:
        if key == "privacy":
            parts.append("nodp" if values["privacy"] == "nodp" else f"sigma{_fmt(values['sigma'])}")
        elif key == "seed":
            parts.append(f"seed{values['seed']}")
        else:
            parts.append(str(values[key]))
    for key in GRID_AXES:
        if key in NAME_AXES or key == "sigma" or len(grid.get(key, ())) < 2 or key in IRRELEVANT[values["method"]]:
            continue
        parts.append(f"{key}{_fmt(values[key])}")
    # seed last reads better: dataset_model_method_sigma1_[extras_]seed0
    seed = parts.pop(NAME_AXES.index("seed"))
    return "_".join(parts + [seed])


def parse_values(key: str, texts: Sequence[str]) -> tuple[Any, ...]:
    """Parse and validate the values of one grid axis; ValueError names the axis."""
    if key not in GRID_AXES:
        raise ValueError(f"unknown grid key {key!r}; valid grid keys: {', '.join(GRID_AXES)}")
    if not texts:
        raise ValueError(f"grid key {key!r} needs at least one value")
    out: list[Any] = []
    for text in texts:
        try:
            value = GRID_AXES[key].parse(str(text))
        except ValueError as e:
            raise ValueError(f"bad value for grid key {key!r}: {e}") from None
        if value not in out:  # keep the user's order, drop repeats
            out.append(value)
    return tuple(out)


def parse_fixed(key: str, text: Any) -> Any:
    if key not in FIXED:
        raise ValueError(f"unknown setting {key!r}; valid settings: {', '.join(FIXED)}")
    try:
        return FIXED[key].parse(str(text))
    except ValueError as e:
        raise ValueError(f"bad value for {key!r}: {e}") from None


def make_plan(
    *,
    grid: Mapping[str, Sequence[Any]],
    fixed: dict[str, Any] | None = None,
    preset: str | None = None,
) -> Plan:
    """Validate a grid (values as text or already typed) and expand it into runs.

    Axes not given take DEFAULT_GRID (or the preset's) values; settings not given
    are left to `crepe train`'s defaults. nodp runs ignore the sigma axis.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    base_grid: dict[str, tuple[Any, ...]] = dict(DEFAULT_GRID)
    base_fixed: dict[str, Any] = {}
    if preset is not None:
        base_grid.update(PRESETS[preset]["grid"])
        base_grid.update(PRESETS[preset].get("grid_fixed", {}))
        base_fixed.update(PRESETS[preset]["fixed"])
    for key, texts in grid.items():
        base_grid[key] = parse_values(key, [_fmt(t) for t in texts])
    for key, text in (fixed or {}).items():
        base_fixed[key] = parse_fixed(key, _fmt(text))
    g = {k: base_grid[k] for k in GRID_AXES if k in base_grid}  # canonical key order
    f = {k: base_fixed[k] for k in FIXED if k in base_fixed}

    runs: dict[str, RunSpec] = {}
    keys = list(g)
    for combo in itertools.product(*(g[k] for k in keys)):
        values = dict(zip(keys, combo))
        unused = set(IRRELEVANT[values["method"]])
        if values["privacy"] == "nodp":
            unused.add("sigma")
        name = _name(values, g)
        if name in runs:  # e.g. nodp runs repeat once per sigma: keep the first
            continue
        # Settings a run does not use keep their first grid value in the flags
        # (so every run's config records one), but never make extra runs.
        settings = tuple((k, g[k][0] if k in unused else values[k]) for k in keys if not (k == "sigma" and values["privacy"] == "nodp"))
        runs[name] = RunSpec(name=name, settings=settings + tuple(f.items()))
    return Plan(grid=g, fixed=f, preset=preset, runs=tuple(runs.values()))


# ---------------------------------------------------------------------------
# Run directories and the manifest.


def run_state(run_dir: Path) -> str:
    """'complete', 'interrupted' (a run exists but has not finished), or 'new'."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("status") == "complete":
                return "complete"
        except (json.JSONDecodeError, OSError, AttributeError):
            pass
    if (run_dir / "config.json").is_file():
        return "interrupted"
    return "new"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load_manifest(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it") from None
    if not isinstance(manifest, dict) or "grid" not in manifest or "fixed" not in manifest:
        raise ValueError(f"{path} is not a crepe sweep manifest (no 'grid'/'fixed')")
    return manifest


def plan_from_manifest(manifest: dict[str, Any]) -> Plan:
    return make_plan(grid=manifest["grid"], fixed=manifest["fixed"], preset=None)


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
        raise ValueError(
            "--extend can add grid values but not change fixed settings (runs would "
            "differ in settings their names do not show):\n"
            + "\n".join(_diff({"grid": {}, "fixed": old.fixed}, {"grid": {}, "fixed": new.fixed}))
        )
    grid = {k: tuple(dict.fromkeys(old.grid.get(k, ()) + new.grid.get(k, ()))) for k in GRID_AXES if k in old.grid or k in new.grid}
    merged = make_plan(grid=grid, fixed=old.fixed)
    # Names depend on which axes have several values: an extension must not rename existing runs.
    renamed = {r.name for r in make_plan(grid=old.grid, fixed=old.fixed).runs} - {r.name for r in merged.runs}
    if renamed:
        raise ValueError(
            "--extend would rename existing runs (a new axis got a second value): "
            + ", ".join(sorted(renamed)[:5])
            + "; use a new sweep directory"
        )
    return merged


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

    def __init__(self, *, sweep_dir: Path, data_dir: str | None, threads: int, jobs: int, python: str):
        self.sweep_dir = sweep_dir
        self.data_dir = data_dir
        self.threads = threads
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
        s = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
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
            python: str | None = None, out: Any = None) -> dict[str, Any]:
    """Run every not-yet-complete run of `plan`, updating the manifest as runs end.

    Returns the manifest. Runs that fail are recorded there and in the returned
    manifest's "failures"; they never stop the others.
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
    for spec in plan.runs:
        rec = dict(records.get(spec.name, {}))
        rec["args"] = spec.train_args()
        rec["status"] = run_state(sweep_dir / spec.name)
        manifest["runs"][spec.name] = rec

    def save() -> None:
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["failures"] = {n: {"returncode": r.get("returncode"), "log": r.get("log"), "tail": r.get("tail")}
                                for n, r in manifest["runs"].items() if r["status"] == "failed"}
        _write_json(sweep_dir / MANIFEST, manifest)

    todo = [s for s in plan.runs if manifest["runs"][s.name]["status"] != "complete"]
    skipped = len(plan.runs) - len(todo)
    threads = threads or default_threads(jobs)
    runner = Runner(sweep_dir=sweep_dir, data_dir=data_dir, threads=threads, jobs=jobs, python=python or sys.executable)
    print(f"crepe sweep: {len(plan.runs)} runs in {sweep_dir} ({skipped} complete, {len(todo)} to run; "
          f"{jobs} job(s) x {threads} thread(s))", file=out, flush=True)
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
    except KeyboardInterrupt:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crepe sweep",
        allow_abbrev=False,
        description="Run a grid of `crepe train` configurations, one run directory each, "
        "skipping complete runs and resuming interrupted ones.",
        epilog="Grid keys: " + ", ".join(("seeds" if k == "seed" else k) for k in GRID_AXES)
        + ". Fixed settings: " + ", ".join(FIXED) + ". Presets: " + ", ".join(PRESETS) + ".",
    )
    p.add_argument("--out", required=True, type=Path, help="sweep directory (created if missing)")
    p.add_argument("--preset", help=f"start from a preset grid: {', '.join(PRESETS)}")
    for key, opt in GRID_AXES.items():
        flag = "--seeds" if key == "seed" else f"--{key}"
        p.add_argument(flag, dest=f"grid_{key}", nargs="+", metavar="V", help=f"grid: {opt.help}"
                       + (f" ({', '.join(opt.parse.valid)})" if hasattr(opt.parse, "valid") else ""))
    for key, opt in FIXED.items():
        p.add_argument(f"--{key}", dest=f"fixed_{key}", metavar="V", help=opt.help)
    p.add_argument("--data-dir", help="folder of the IDX .gz files, passed to every run (not part of the grid)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs)")
    p.add_argument("--extend", action="store_true", help="add the requested grid values to an existing sweep")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands; run nothing")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            raise ValueError(
                f"unknown option(s) {' '.join(unknown)}; grid keys: "
                + ", ".join(("--seeds" if k == "seed" else f"--{k}") for k in GRID_AXES)
                + "; fixed settings: " + ", ".join(f"--{k}" for k in FIXED)
            )
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        grid = {k: getattr(args, f"grid_{k}") for k in GRID_AXES if getattr(args, f"grid_{k}") is not None}
        fixed = {k: getattr(args, f"fixed_{k}") for k in FIXED if getattr(args, f"fixed_{k}") is not None}
        sweep_dir: Path = args.out
        if sweep_dir.exists() and not sweep_dir.is_dir():
            raise ValueError(f"{sweep_dir} exists and is not a directory")
        existing = load_manifest(sweep_dir)
        if existing is None and sweep_dir.is_dir() and any(p.name != LOGS for p in sweep_dir.iterdir()):
            raise ValueError(f"{sweep_dir} is not empty and has no {MANIFEST}: refusing to use it as a sweep directory")
        asked = bool(grid or fixed or args.preset)
        if existing is not None and not asked:
            plan = plan_from_manifest(existing)  # plain re-run: the recorded grid
            plan = Plan(grid=plan.grid, fixed=plan.fixed, preset=existing.get("preset"), runs=plan.runs)
        else:
            plan = make_plan(grid=grid, fixed=fixed, preset=args.preset)
            if existing is not None:
                old = plan_from_manifest(existing)
                if old.identity() != plan.identity():
                    if not args.extend:
                        raise ValueError(
                            f"{sweep_dir} already holds a sweep with a different grid:\n"
                            + "\n".join(_diff(old.identity(), plan.identity()))
                            + "\nre-run with no grid options to continue it, add --extend to add runs to it, "
                            "or use another --out"
                        )
                    plan = merge_plans(old, plan)
    except ValueError as e:
        print(f"crepe sweep: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        runner = Runner(sweep_dir=sweep_dir, data_dir=args.data_dir, threads=args.threads or default_threads(args.jobs),
                        jobs=args.jobs, python=sys.executable)
        for spec in plan.runs:
            state = run_state(sweep_dir / spec.name)
            print(f"{spec.name} [{state}]: {' '.join(runner.command(spec, resume=state == 'interrupted')[2:])}")
        return 0
    try:
        manifest = execute(plan, sweep_dir=sweep_dir, jobs=args.jobs, threads=args.threads, data_dir=args.data_dir)
    except KeyboardInterrupt:
        print("crepe sweep: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    failures = manifest["failures"]
    n = len(manifest["runs"])
    complete = sum(r["status"] == "complete" for r in manifest["runs"].values())
    print(f"crepe sweep: {complete}/{n} runs complete in {sweep_dir}")
    if failures:
        print(f"crepe sweep: {len(failures)} run(s) failed (details in {sweep_dir / MANIFEST} and {sweep_dir / LOGS}/):",
              file=sys.stderr)
        for name, f in failures.items():
            last = (f.get("tail") or "").splitlines()[-1:] or [""]
            print(f"  {name}: exit {f['returncode']}: {last[0]}", file=sys.stderr)
        return 1
    return 0
