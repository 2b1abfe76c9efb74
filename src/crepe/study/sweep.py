"""`crepe sweep`: run a grid of `crepe train` configurations, one run directory each.

The command line of a sweep: its flags come from the option declarations (every
grid option takes several values, every other option one); the plan comes from
them (crepe.study.plan) or, on a plain re-run, from the sweep directory's
manifest. Asking for a different grid in an existing sweep directory is an
error unless `--extend` is given (which only adds runs). `--dry-run` prints the
runs and their commands (unreachable targets checked, nothing run); otherwise
crepe.study.runner executes the plan, on this machine (`--executor local`, the
default, `--jobs` at a time) or as a task per run on a Dask cluster
(`--executor dask --scheduler ADDRESS`, crepe.study.cluster; the sweep directory
on storage the workers share). Ctrl-C or SIGTERM stops the runs (each
resumable from its last epoch), records them, and exits 130 / 143.
"""

from __future__ import annotations

import argparse
import difflib
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from crepe.config import Spec, UsageError, options
from crepe.parser import Parser
from crepe.study import command
from crepe.study import grid as opts
from crepe.study.grid import Setting, fmt
from crepe.study.plan import (DEFAULT_GRID, MANIFEST, PRESETS, Plan, diff, load_manifest, make_plan, merge_plans,
                               plan_from_manifest)
from crepe.study.runner import LOGS, Runner, check_runs, default_threads, execute, unreachable_text


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
    p.add_argument("--jobs", help="runs at a time, with --executor local (default: 1)")
    p.add_argument("--threads", help="torch threads per run (default: cores // jobs; with --executor dask, each "
                   "worker's cores // its threads)")
    p.add_argument("--executor", default="local", metavar="{local,dask}", help=f"{EXECUTOR.help} (default: local)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler of --executor dask, e.g. "
                   "tcp://10.0.0.5:8786 (required there, refused otherwise)")
    p.add_argument("--eval-every", help="each run's test accuracy every N epochs and after the last (default: 1)")
    p.add_argument("--extend", action="store_true", help="add the requested grid values to an existing sweep")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands; run nothing")
    return p


JOBS = Spec(help="runs at a time", kind="int", low=1, flag="--jobs")
EXECUTOR = Spec(
    help="where the runs run: local (subprocesses on this machine, --jobs at a time) or dask (a task per run on the "
    "Dask cluster at --scheduler, as many at once as its workers have threads; needs the [dask] extra). With dask the "
    "sweep directory and --data-dir must be on storage every worker reaches at the same path (a shared file system); "
    "a run whose worker dies is rerun by the scheduler and resumes from its last checkpoint",
    choices=("local", "dask"), flag="--executor",
)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (exit status 143 instead of 130)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: list[str]) -> int:
    return command("crepe sweep", _main, argv)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.data_dir is not None:  # sweep.json and every run's config hold it absolute: they work from anywhere
        args.data_dir = str(Path(args.data_dir).resolve())
    given = vars(args)
    if unknown:
        flags = [st.spec.flag for st in opts.settings().values()] + [f"--{f}" for f in opts.SWEEP_FLAGS]
        close = difflib.get_close_matches(unknown[0], flags, n=1)
        hint = f"did you mean {close[0]}?" if close else "see crepe sweep --help"
        raise UsageError(f"unknown option(s) {' '.join(unknown)} ({hint})")
    executor = EXECUTOR.parse(args.executor)
    if executor == "local" and args.scheduler is not None:
        raise UsageError("--scheduler is for --executor dask (--executor local runs on this machine)")
    if executor == "dask":
        if args.scheduler is None:
            raise UsageError("--executor dask needs --scheduler ADDRESS (the Dask scheduler's, e.g. tcp://10.0.0.5:8786)")
        if args.jobs is not None:
            raise UsageError("--jobs is for --executor local: on a Dask cluster each worker runs as many runs at once "
                             "as it has threads (dask worker --nthreads N)")
        from crepe.study import cluster

        cluster.require()
    jobs = 1 if args.jobs is None else JOBS.parse(args.jobs)
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
                        + "\n".join(diff(old.identity(), plan.identity()))
                        + "\nre-run with no grid options to continue it, add --extend to add runs to it, "
                        "or use another --out"
                    )
                plan = merge_plans(old, plan)
    if args.dry_run:
        data_dir = args.data_dir if args.data_dir is not None else (existing or {}).get("data_dir")
        # with dask and no --threads, each worker gives its runs their --threads
        runner = Runner(sweep_dir=sweep_dir, data_dir=data_dir,
                        threads=threads if executor == "dask" else threads or default_threads(jobs),
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
        if executor == "dask":
            with cluster.connect(args.scheduler) as client:  # before anything is written
                manifest = execute(plan, sweep_dir=sweep_dir, threads=threads, data_dir=args.data_dir,
                                   eval_every=eval_every, executor=lambda runner: cluster.Dask(client, runner))
        else:
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

