"""`crepe report`: tables and plots of a sweep's runs (accuracy, time, privacy).

Reads every run directory under SWEEP_DIR (crepe.study.results: runs that differ
only in their seed make a row; runs calibrated to different target epsilons are
never averaged; the runs must share one protocol) and writes

    OUT/results.md         Markdown table: mean +- std and 95% interval over seeds; the cells a
                           sweep never ran because their target epsilon is unreachable
    OUT/results.csv        the same numbers, machine-readable (crepe.study.tables)
    OUT/acc_vs_eps.png     test accuracy vs epsilon_total (sweeps with a σ-set DP row only)
    OUT/acc_vs_time.png    test accuracy vs wall time
    OUT/acc_per_epoch.png  test accuracy per epoch
    OUT/diagnostics.png    clipping diagnostics per epoch (runs with --diagnostics only; crepe.study.plots)
    OUT/verdict.md, acc_vs_time_at_eps.png, frontier.png, ...  the study at equal epsilon (runs with a
                           target ε only; frontier.png: two targets or more; crepe.study.verdict)

Each figure is written only where it says something about the sweep: the rule of each is in the
docstring of its module (plots.figure_names, verdict.figure_names).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crepe.parser import Parser
from crepe.study import command, plots, verdict
from crepe.study.plan import load_manifest
from crepe.study.results import Row, aggregate, find_runs
from crepe.study.tables import markdown, unreachable_section, write_csv


def figures(rows: Sequence[Row]) -> dict[str, Any]:
    """file name -> matplotlib Figure of each plot of a report (the caller saves and closes them)."""
    plt = plots.pyplot()
    return {**plots.figures(plt, rows), **verdict.figures(plt, rows)}


def plot_all(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in figures(rows).items():
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def report(sweep_dir: Path, out_dir: Path | None = None, *, plots: bool = True) -> dict[str, Path]:
    """Write the tables, CSVs and plots of a sweep; returns their paths."""
    runs, skipped = find_runs(sweep_dir)
    rows = aggregate(runs)
    unreachable = unreachable_section(load_manifest(sweep_dir))
    out_dir = out_dir or (sweep_dir / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    md.write_text(markdown(rows, runs, skipped, unreachable))
    csv_path = out_dir / "results.csv"
    write_csv(rows, csv_path)
    paths = {"markdown": md, "csv": csv_path, **verdict.write(rows, out_dir, unreachable)}
    if plots:
        for p in plot_all(rows, out_dir):
            paths[p.stem] = p
    return paths


def main(argv: list[str]) -> int:
    return command("crepe report", _main, argv)


def _main(argv: list[str]) -> int:
    p = Parser(prog="crepe report", description="Tables and plots of a `crepe sweep` directory.")
    p.add_argument("sweep_dir", type=Path, help="directory written by `crepe sweep --out`")
    p.add_argument("--out", type=Path, help="output directory (default: SWEEP_DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="write only the table and CSV")
    args = p.parse_args(argv)
    paths = report(args.sweep_dir, args.out, plots=not args.no_plots)
    print(paths["markdown"].read_text())
    for what, path in paths.items():
        print(f"wrote {path}", file=sys.stderr)
    return 0

