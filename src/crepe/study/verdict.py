"""The study at equal ε: when does a small private training set pay?

Compares the configurations calibrated to one target ε (--target-epsilon), per
compute budget (--compute) and per dataset and model, from the rows of
crepe.study.results (runs that differ only in their seed; runs calibrated to
different targets are never averaged: the target is part of a row's key and of
a cell's). A method that ignores the budget (full data, private-set) competes in
every budget. `crepe report` writes

    OUT/verdict.md              the verdict per cell and the configurations behind it
    OUT/verdict.csv             the verdict, one line per (dataset, model, target ε, budget)
    OUT/configs_at_eps.csv      every configuration of every cell: accuracy and its 95% interval,
                                ε split, time split, speed-up over full data, Pareto-best
    OUT/frontier.png            test accuracy vs achieved ε_total, one panel per compute budget. Only
                                when the runs span at least two target ε (one target: every point
                                sits at it; no target, a σ-only sweep: acc_vs_eps.png says it)
    OUT/acc_vs_time_at_eps.png  test accuracy vs wall time, one panel per target ε, Pareto-best marked.
                                Whenever a run has a target ε

(the figures' bars: 95% intervals clipped to 0-100 %, dashed below MIN_SEEDS seeds; the y range
fitted to the means and their seed std: crepe.study.plots).

The verdict of a cell: the best configuration (highest mean test accuracy; equal
means: the faster), the runner-up, their difference with its Welch 95% interval,
and whether the difference exceeds the seed noise (the interval excludes 0).
Pareto-best at a target ε: no other configuration at that target is at least as
fast and at least as accurate, and better in one of the two.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crepe import config
from crepe.study import plots, results, tables
from crepe.study.results import FEW, MIN_SEEDS, Row, Stat

TARGET = "target_epsilon"
BUDGET = "compute"  # its values are the compute budgets; a method that ignores it competes in each
PANEL = ("dataset", "model")  # never compared with each other: a panel (and part of a cell) each
TIMES = ("select_time_s", "train_time_s", "eval_time_s", "total_time_s")  # the wall-time split of a configuration
FRONTIER = "frontier.png"
TIME_AT_EPS = "acc_vs_time_at_eps.png"

Cell = tuple[Any, ...]  # PANEL values, target epsilon, budget


# ---------------------------------------------------------------------------
# Cells and statistics.


def budgets(rows: Sequence[Row]) -> list[Any]:
    """The compute budgets of the rows, in declaration order ([None] when no row has one)."""
    order = config.options()[BUDGET].choices
    found = {r.k.get(BUDGET) for r in rows} - {None}
    return sorted(found, key=order.index) or [None]


def in_budget(r: Row, budget: Any) -> bool:
    return r.k.get(BUDGET) in (budget, None)


def study_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows calibrated to a target epsilon that have a test accuracy."""
    return [r for r in rows if r.k.get(TARGET) is not None and r.stats["test_acc"] is not None]


def cells(rows: Sequence[Row]) -> dict[Cell, list[Row]]:
    """(dataset, model, target epsilon, budget) -> the rows that compete there, in report order."""
    study = study_rows(rows)
    out: dict[Cell, list[Row]] = {}
    for panel in _panels(study):
        here = [r for r in study if _panel(r) == panel]
        for target in sorted({r.k[TARGET] for r in here}):
            for b in budgets(study):
                cell = [r for r in here if r.k[TARGET] == target and in_budget(r, b)]
                if cell:
                    out[(*panel, target, b)] = cell
    return out


def _panel(r: Row) -> tuple[str, ...]:
    return tuple(str(r.k.get(a)) for a in PANEL)


def _panels(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    return sorted({_panel(r) for r in rows})


@dataclass(frozen=True)
class Difference:
    """best - runner-up in mean test accuracy, with its Welch 95% interval (None below two seeds a side)."""

    mean: float
    low: float | None
    high: float | None

    @property
    def exceeds_noise(self) -> bool | None:
        """True if the interval excludes 0; None when there is no interval."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


def welch(a: Stat, b: Stat) -> Difference:
    """a.mean - b.mean with the Welch (unequal variances) t interval at 95%."""
    d = a.mean - b.mean
    if a.std is None or b.std is None:
        return Difference(d, None, None)
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    if va + vb == 0:  # identical seeds on both sides: no noise to exceed
        return Difference(d, d, d)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))  # Welch-Satterthwaite
    h = results.t975(df) * math.sqrt(va + vb)
    return Difference(d, d - h, d + h)


@dataclass(frozen=True)
class Verdict:
    cell: Cell
    best: Row
    runner_up: Row | None
    difference: Difference | None


def _rank(r: Row) -> tuple[float, float]:
    """Best first: higher mean accuracy, then shorter total time."""
    t = r.stats["total_time_s"]
    return (-acc_mean(r), t.mean if t is not None else math.inf)


def ranked(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=_rank)


def verdicts(rows: Sequence[Row]) -> list[Verdict]:
    out = []
    for cell, competing in cells(rows).items():
        best, *rest = ranked(competing)
        second = rest[0] if rest else None
        diff = None if second is None else welch(best.stats["test_acc"], second.stats["test_acc"])  # type: ignore[arg-type]
        out.append(Verdict(cell, best, second, diff))
    return out


def pareto_best(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (time, accuracy) points: True where no other point is at least as fast and at least as
    accurate, and strictly better in one of the two."""
    def dominated(p: tuple[float, float]) -> bool:
        return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)

    return [not dominated(p) for p in points]


def pareto_keys(rows: Sequence[Row]) -> set[tuple[tuple[str, Any], ...]]:
    """Keys of the Pareto-best rows among the study rows, per (dataset, model, target epsilon)."""
    study = [r for r in study_rows(rows) if r.stats["total_time_s"] is not None]
    out = set()
    for group in {(_panel(r), r.k[TARGET]) for r in study}:
        members = [r for r in study if (_panel(r), r.k[TARGET]) == group]
        flags = pareto_best([_time_acc(r) for r in members])
        out |= {r.key for r, best in zip(members, flags) if best}
    return out


def _time_acc(r: Row) -> tuple[float, float]:
    return r.stats["total_time_s"].mean, acc_mean(r)  # type: ignore[union-attr]


def acc_mean(r: Row) -> float:
    """Mean test accuracy (study rows have one)."""
    return r.stats["test_acc"].mean  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# Labels and tables.


def label(r: Row, axes: Sequence[str], *, budget: bool = False) -> str:
    """A configuration as text: its method and the varying settings that are not panel, target or
    (unless `budget`) compute budget."""
    shown = [a for a in axes if budget or a != BUDGET]
    return f"{r.k['method']}{results.extra_label(r, shown)}"


def _acc(s: Stat | None) -> str:
    few = s is not None and s.n < MIN_SEEDS
    return tables.pm(s, scale=100) + (f" {FEW}" if few else "")


def _difference(d: Difference | None) -> tuple[str, str]:
    """The difference cell and the seed-noise cell."""
    if d is None:
        return "n/a", "only one configuration"
    text = f"{100 * d.mean:+.2f}"
    if d.low is None or d.high is None:
        return text, "n/a (fewer than 2 seeds)"
    noise = "exceeds seed noise" if d.exceeds_noise else "within seed noise"
    return f"{text} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]", noise


def _cell_heads(rows: Sequence[Row]) -> list[str]:
    """The cell columns worth showing: the panel axes that vary, the target, and the budget."""
    varying = [a for a in PANEL if len({r.k.get(a) for r in rows}) > 1]
    return [*varying, TARGET, BUDGET]


def _cell_text(cell: Cell, heads: Sequence[str]) -> list[str]:
    values = dict(zip((*PANEL, TARGET, BUDGET), cell))
    return [results.axis_cell(a, values[a]) for a in heads]


def markdown(rows: Sequence[Row], unreachable: Sequence[str] = ()) -> str:
    axes = results.varying_axes(rows)
    heads = _cell_heads(study_rows(rows))
    titles = [results.column_title(a) for a in heads]
    lines = [
        "# The study at equal ε",
        "",
        "Per target ε and compute budget (--compute: epochs = --epochs passes over the training set; steps = the "
        "optimiser steps of --epochs passes over all the data), the configurations calibrated to that ε compete; "
        "full data (which ignores the budget) competes in every budget. Test accuracy: mean ± sample std over "
        "seeds. Difference: best − runner-up in accuracy points with its Welch 95% interval; it exceeds the seed "
        f"noise when the interval excludes 0. {tables.CI_NOTE}",
        "",
    ]
    body = []
    for v in verdicts(rows):
        second = v.runner_up
        body.append(_cell_text(v.cell, heads) + [
            label(v.best, axes), _acc(v.best.stats["test_acc"]),
            "–" if second is None else label(second, axes), "–" if second is None else _acc(second.stats["test_acc"]),
            *_difference(v.difference),
        ])
    lines += tables.md_table(titles + ["best", "test acc (%)", "runner-up", "test acc (%)", "difference (points) [95% CI]",
                                       "seed noise"], body)
    lines += ["", "## Configurations", "",
              "Speed-up: total time of full data at the same target ε / this configuration's. Pareto-best: no other "
              "configuration at this target ε (any budget) is at least as fast and as accurate, and better in one.", ""]
    pareto = pareto_keys(rows)
    lines += tables.md_table(titles + [
        "configuration", "seeds", "test acc (%)", "95% CI (%)", "ε_total (ε_select / ε_train)", "select (s)", "train (s)",
        "eval (s)", "total (s)", "speed-up vs full", "Pareto-best"], [
        _cell_text(cell, heads) + [
            label(r, axes), str(len(r.runs)), tables.pm(r.stats["test_acc"], scale=100), tables.ci_cell(r.stats["test_acc"]),
            tables.eps_cell(r), *(tables.pm(r.stats[f], digits=1) for f in TIMES), tables.speedup_cell(r),
            "yes" if r.key in pareto else "",
        ] for cell, competing in cells(rows).items() for r in ranked(competing)])
    lines += unreachable
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _blank(values: Sequence[Any]) -> list[Any]:
    """CSV cells: None as empty."""
    return ["" if x is None else x for x in values]


def write_verdict_csv(rows: Sequence[Row], path: Path) -> None:
    axes = results.varying_axes(rows)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*PANEL, TARGET, BUDGET, "best", "best_test_acc_mean", "best_n_seeds", "runner_up",
                    "runner_up_test_acc_mean", "runner_up_n_seeds", "difference", "difference_ci95_low",
                    "difference_ci95_high", "exceeds_seed_noise"])
        for v in verdicts(rows):
            best, second, d = v.best, v.runner_up, v.difference
            runner_up = ["", "", ""] if second is None else [label(second, axes), _num(acc_mean(second)), len(second.runs)]
            diff = ["", "", "", ""] if d is None else [_num(d.mean), _num(d.low), _num(d.high), *_blank([d.exceeds_noise])]
            w.writerow([*_blank(v.cell), label(best, axes), _num(acc_mean(best)), len(best.runs), *runner_up, *diff])


def write_configs_csv(rows: Sequence[Row], path: Path) -> None:
    """One line per (cell, configuration); the report axes as columns, as in results.csv."""
    pareto = pareto_keys(rows)
    fields = ("test_acc", "eps_total", "eps_select", "eps_train", *TIMES)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_" + a for a in (*PANEL, TARGET, BUDGET)] + list(results.axes()) + [
            "configuration", "n_seeds", "test_acc_std", "test_acc_ci95_low", "test_acc_ci95_high",
            *(f + "_mean" for f in fields), "speedup_vs_full", "pareto_best"])
        for cell, competing in cells(rows).items():
            for r in ranked(competing):
                means = [_num(None if r.stats[f] is None else r.stats[f].mean) for f in fields]  # type: ignore[union-attr]
                w.writerow([*_blank(cell), *_blank([r.k[a] for a in results.axes()]),
                            label(r, results.varying_axes(rows)), len(r.runs), _num(r.stats["test_acc"].std),  # type: ignore[union-attr]
                            *tables.ci_bounds(r.stats["test_acc"]), *means, _num(r.speedup), r.key in pareto])


def write(rows: Sequence[Row], out_dir: Path, unreachable: Sequence[str] = ()) -> dict[str, Path]:
    """verdict.md, verdict.csv and configs_at_eps.csv; nothing when no run has a target epsilon."""
    if not study_rows(rows):
        return {}
    paths = {"verdict": out_dir / "verdict.md", "verdict_csv": out_dir / "verdict.csv",
             "configs_at_eps": out_dir / "configs_at_eps.csv"}
    paths["verdict"].write_text(markdown(rows, unreachable))
    write_verdict_csv(rows, paths["verdict_csv"])
    write_configs_csv(rows, paths["configs_at_eps"])
    return paths


# ---------------------------------------------------------------------------
# Figures.


def half95_or_0(s: Stat | None) -> float:
    h = None if s is None else s.half95
    return 0.0 if h is None else h


def figure_names(rows: Sequence[Row]) -> list[str]:
    """The study's figures a sweep gets (the rule of each: the module docstring)."""
    targets = {r.k[TARGET] for r in study_rows(rows)}
    return ([FRONTIER] if len(targets) >= 2 else []) + ([TIME_AT_EPS] if targets else [])


def figures(plt: Any, rows: Sequence[Row]) -> dict[str, Any]:
    """file name -> Figure of each of figure_names(rows)."""
    draw = {FRONTIER: frontier_figure, TIME_AT_EPS: time_figure}
    return {name: draw[name](plt, rows) for name in figure_names(rows)}


def frontier_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Test accuracy vs achieved epsilon_total: a row of panels per (dataset, model), a panel per budget."""
    axes = results.varying_axes(rows)
    panels, bs = _panels(rows), budgets(rows)
    fig, axs = plots.figure(plt, len(panels), len(bs), (5.2, 4.0))
    few: set[int] = set()
    for i, panel in enumerate(panels):
        for j, b in enumerate(bs):
            here = [r for r in rows if _panel(r) == panel and in_budget(r, b)]
            few |= plots.draw_acc_vs_eps(axs[i][j], here, [a for a in axes if a != BUDGET], error=half95_or_0)
            axs[i][j].set_title(", ".join([*panel, *([] if b is None else [f"compute = {b}"])]))
    fig.suptitle("Test accuracy vs achieved ε_total (bars: 95% CI)", fontsize=10, x=0.01, ha="left")  # short: clear of the legend
    plots.legend(fig)
    plots.few_note(fig, few)
    return fig


def time_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Test accuracy vs wall time at equal epsilon: a row of panels per (dataset, model), a panel per
    target; one point per configuration (all budgets), the Pareto-best ringed and joined."""
    axes = results.varying_axes(rows)
    study = [r for r in study_rows(rows) if r.stats["total_time_s"] is not None]
    panels, targets = _panels(study), sorted({r.k[TARGET] for r in study})
    first = budgets(rows)[0]
    pareto = pareto_keys(rows)
    fig, axs = plots.figure(plt, len(panels), len(targets), (5.2, 4.0))
    few: set[int] = set()
    for i, panel in enumerate(panels):
        for j, target in enumerate(targets):
            ax = axs[i][j]
            here = [r for r in study if _panel(r) == panel and r.k[TARGET] == target]
            for r in here:
                name = label(r, axes, budget=True)
                c, m = plots.style(name)
                x, y = _time_acc(r)
                eb = ax.errorbar(x, 100 * y, yerr=plots.clipped_yerr([100 * y], [100 * half95_or_0(r.stats["test_acc"])]),
                                 color=c, marker=m, ms=7, capsize=3, ls="none", mfc=c if in_budget(r, first) else "white",
                                 label=name)
                few |= plots.dash_few(eb, [r.stats["test_acc"].n])  # type: ignore[union-attr]
            front = sorted(_time_acc(r) for r in here if r.key in pareto)
            if front:
                xs, ys = zip(*front)
                ax.scatter(xs, [100 * y for y in ys], s=260, facecolors="none", edgecolors="black", linewidths=1.2,
                           zorder=3, label="Pareto-best")
                ax.plot(xs, [100 * y for y in ys], color="black", ls=":", lw=1)
            plots.log_axis(ax.xaxis, [_time_acc(r)[0] for r in here])
            if here:  # the means, their seed std and the bars from 3 seeds on: a very wide one (2 seeds) may run out
                ys = [100 * _time_acc(r)[1] for r in here]
                ends = plots.bar_ends(ys, [100 * half95_or_0(r.stats["test_acc"]) for r in here],
                                      [r.stats["test_acc"].n for r in here])  # type: ignore[union-attr]
                ax.set_ylim(*plots.accuracy_limits(ys + ends, [100 * plots.std_or_0(r.stats["test_acc"]) for r in here]))
            ax.set_xlabel("wall time per run (s), log scale")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{', '.join(panel)}: target ε = {target:g}")
    fig.suptitle("Test accuracy vs wall time at equal ε (bars: 95% CI)", fontsize=10, x=0.01, ha="left")
    plots.legend(fig)
    plots.few_note(fig, few)
    return fig
