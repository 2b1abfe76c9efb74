"""`crepe report`: tables and plots of a sweep's runs (accuracy, time, privacy).

Reads every run directory under SWEEP_DIR, or under several SWEEP_DIRs together (then --out
is required), into rows (crepe.study.results: runs that differ only in their seed make a row;
runs calibrated to different target epsilons are never averaged; the runs must share one
protocol) and writes

    OUT/results.md         Markdown table: mean +- std and 95% interval over seeds; the cells a
                           sweep never ran because their target epsilon is unreachable
    OUT/results.csv        the same numbers, machine-readable (crepe.study.tables)
    OUT/acc_vs_eps.png     test accuracy vs epsilon_total (sweeps with a σ-set DP row only)
    OUT/acc_vs_time.png    test accuracy vs wall time
    OUT/acc_per_epoch.png  test accuracy per epoch
    OUT/diagnostics.png    clipping diagnostics per epoch (runs with --diagnostics only; crepe.study.plots)
    OUT/verdict.md, acc_vs_time_at_eps.png, frontier.png, ...  the study at equal epsilon (runs with a
                           target ε only; frontier.png: two targets or more; crepe.study.verdict)
    OUT/users.md, users.csv, users_verdict.csv, recall_vs_user_eps.png  the user-level study: the
                           configurations at equal user-level ε per U, embedding metrics, a verdict on
                           recall and on test accuracy (runs on data with users only; crepe.study.user_study)

Each figure is written only where it says something about the sweep: the rule of each is in the
docstring of its module (plots.figure_names, verdict.figure_names, user_study.figure_names); a user-level
report draws only the user-level study's (figures).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crepe.parser import Parser
from crepe.config import UsageError
from crepe.study import command, plots, user_study, verdict
from crepe.study.plan import load_manifest
from crepe.study.results import Row, aggregate, find_runs, user_level
from crepe.study.tables import markdown, unreachable_section, write_csv


def figures(rows: Sequence[Row]) -> dict[str, Any]:
    """file name -> matplotlib Figure of each plot of a report (the caller saves and closes them). A
    user-level report (runs on data with users) gets the user-level study's figure only: the others
    tell small-set methods apart (every user-level run is --method full) and put ε_total on one axis,
    which is ε per example for an example-level run beside ε per user for a user-level one."""
    plt = plots.pyplot()
    if user_level([run for r in rows for run in r.runs]):
        return user_study.figures(plt, rows)
    return {**plots.figures(plt, rows), **verdict.figures(plt, rows)}


def plot_all(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in figures(rows).items():
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def report(sweep_dir: Path | Sequence[Path], out_dir: Path | None = None, *, plots: bool = True) -> dict[str, Path]:
    """Write the tables, CSVs and plots of a sweep (or of several together: out_dir required); returns
    their paths."""
    sweeps = [sweep_dir] if isinstance(sweep_dir, Path) else list(sweep_dir)
    if out_dir is None and len(sweeps) != 1:
        raise UsageError(f"a report of {len(sweeps)} sweep directories needs --out (where to write it)")
    runs, skipped = find_runs(sweeps[0] if len(sweeps) == 1 else sweeps)
    rows = aggregate(runs)
    unreachable = [line for s in sweeps
                   for line in unreachable_section(load_manifest(s), None if len(sweeps) == 1 else s.name)]
    out_dir = out_dir or (sweeps[0] / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    md.write_text(markdown(rows, runs, skipped, unreachable))
    csv_path = out_dir / "results.csv"
    write_csv(rows, csv_path)
    paths = {"markdown": md, "csv": csv_path, **verdict.write(rows, out_dir, unreachable), **user_study.write(rows, out_dir)}
    if plots:
        for p in plot_all(rows, out_dir):
            paths[p.stem] = p
    return paths


def main(argv: list[str]) -> int:
    return command("crepe report", _main, argv)


def _main(argv: list[str]) -> int:
    p = Parser(prog="crepe report", description="Tables and plots of a `crepe sweep` directory (or of several together).")
    p.add_argument("sweep_dir", type=Path, nargs="+", help="directory written by `crepe sweep --out` (several: one "
                   "report of all their runs, which must share one protocol; --out required)")
    p.add_argument("--out", type=Path, help="output directory (default: SWEEP_DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="write only the tables and CSVs")
    args = p.parse_args(argv)
    paths = report(args.sweep_dir, args.out, plots=not args.no_plots)
    print(paths["markdown"].read_text())
    if "users" in paths:
        print(paths["users"].read_text())
    for what, path in paths.items():
        print(f"wrote {path}", file=sys.stderr)
    return 0

