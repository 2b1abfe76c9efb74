"""The user-level study (DESIGN.md section 11, issue 24): configurations at equal user-level ε.

Reads the rows of crepe.study.results whose runs are on data with users (results.has_users:
user-level runs, and example-level runs on users, which report an ε per user by group
privacy) and compares them per cell: (dataset, model, user-level target ε, U). `crepe report`
writes, when a report has such rows,

    OUT/users.md               per cell: a row per configuration (mean ± sample std over seeds,
                               no ± for one seed; the seed count), and the verdict for test accuracy
                               and for recall at FAR 1e-3; then the DP rows at no target and the
                               non-private ceiling, per U
    OUT/users.csv              every configuration of every section, one line each
    OUT/users_verdict.csv      the verdict, one line per (cell, metric, configuration beaten or not)
    OUT/recall_vs_user_eps.png recall at FAR 1e-3 vs ε per user, a panel per (dataset, model, U), a
                               line per configuration (bars: 95% intervals, dashed below MIN_SEEDS
                               seeds), the non-private rows dashed. Only when the cells span two
                               user-level targets or more (one target: every point sits at it)

The rules:
- A configuration is a row of results: privacy unit, algorithm, K (--virtual-client-size),
  local epochs, pretraining, U and the other axes, and the step sizes where they vary
  (results.TUNED); its runs differ by their seed only.
- Its ε per user: ε_total of a user-level run; for an example-level run, eps_user, its ε for a user
  of at most k examples by group privacy (k: the summary's max_per_user).
- Its cell's target: the --target-epsilon of a user-level run (a user-level ε); any other DP row (an
  example-level one, whose σ was found outside crepe to meet a user-level ε, or a σ-set user-level
  one) sits at the report's target t (the user-level runs' targets) with (1 - MATCH) t <= ε per user
  <= t, and among the DP runs at no target if there is none. Non-private rows make each U's ceiling.
- U: --user-count for synthetic writers, QMNIST's writers, or users per round / q (results.user_count).
- The verdict of a cell, per metric (METRICS): among its configurations with 2 seeds or more that
  have the metric, the one with the highest mean against each other one: the difference with its
  Welch 95% interval (crepe.study.verdict.welch), which exceeds the seed noise when it excludes 0.
  A configuration without a test accuracy (dp-fedemb trains no global head: its summary's
  test_acc_note says so) shows "–" there and is judged on recall only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crepe.config import UsageError
from crepe.study import grid as opts
from crepe.study import plots, results, tables, verdict
from crepe.study.results import FEW, FEW_NOTE, MIN_SEEDS, Row, Stat

MATCH = 0.01  # a DP row without a user-level target sits at t when (1 - MATCH) t <= its ε per user <= t
METRICS = ("test_acc", "recall_at_far_1e-3")  # the verdict's, in this order
TITLES = {"test_acc": "test acc", "recall_at_far_1e-3": "recall @ FAR 1e-3", "recall_at_far_0.1": "recall @ FAR 0.1",
          "nn1_accuracy": "1-NN", "train_s_per_round": "s / round"}
PERCENT = ("test_acc", "recall_at_far_1e-3", "recall_at_far_0.1", "nn1_accuracy")  # fractions, shown in %
SORT_BY = "recall_at_far_1e-3"  # a section's rows: best first by it (no value: last)
ALGORITHMS = {"dp-sgd": "user-level DP-SGD", "dp-fedavg": "DP-FedAvg"}  # dp-fedemb: "DP-FedEmb K = ..."
# Axes a configuration's name says in words (or its cell does); any other axis that varies is appended.
NAMED = ("dataset", "model", "dp", "sigma", "target_epsilon", "privacy_unit", "algorithm", "virtual_client_size",
         "pretrain", "user_count", "lr")
PLOT = "recall_vs_user_eps.png"
LEGEND_WIDTH = 4.6  # inches beside the panels: the legend's longest name ("example-level DP-SGD (ε per user ...)")
MISSING = "–"

AT, NO_TARGET, CEILING = "at a target", "at no target", "non-private"  # the kinds of section, in this order
Cell = tuple[str, str, float | None, int | None]  # dataset, model, user-level target ε (None: no target), U


# ---------------------------------------------------------------------------
# Rows, cells and sections.


def user_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows whose runs are on data with users."""
    return [r for r in rows if all(results.has_users(run) for run in r.runs)]


def user_level(r: Row) -> bool:
    return r.k["privacy_unit"] == "user"


def population(r: Row) -> int | None:
    """The row's U (results.user_count); UsageError if its runs disagree."""
    found = {results.user_count(run) for run in r.runs}
    if len(found) > 1:
        raise UsageError(f"runs {', '.join(run.name for run in r.runs)} of one configuration have different numbers "
                         f"of users ({', '.join(map(str, found))}): report them separately")
    return found.pop()


def eps_per_user(r: Row) -> float | None:
    """The row's ε per user (results.user_values): the largest over its runs (infinite: non-private)."""
    values = [v for v in (results.user_values(run)["eps_user"] for run in r.runs) if v is not None]
    return max(values) if values else None


def targets(rows: Sequence[Row]) -> list[float]:
    """The user-level targets of the report: --target-epsilon of its user-level DP rows."""
    return sorted({r.k["target_epsilon"] for r in user_rows(rows)
                   if r.k["dp"] and user_level(r) and r.k["target_epsilon"] is not None})


def target_of(r: Row, report_targets: Sequence[float]) -> float | None:
    """The user-level target a DP row sits at (module docstring); None for a non-private row or none."""
    if not r.k["dp"]:
        return None
    if user_level(r) and r.k["target_epsilon"] is not None:
        return float(r.k["target_epsilon"])
    eps = eps_per_user(r)
    for t in report_targets:
        if eps is not None and (1 - MATCH) * t <= eps <= t * (1 + 1e-9):
            return t
    return None


@dataclass(frozen=True)
class Section:
    """The rows of one cell (kind AT), or of one U's DP rows at no target or non-private rows."""

    kind: str
    cell: Cell
    rows: tuple[Row, ...]  # best first by SORT_BY


def sections(rows: Sequence[Row]) -> list[Section]:
    """The user-level sections of a report, in order: the cells (by dataset, model, target, U), then
    per (dataset, model, U) the DP rows at no target, then the non-private ones."""
    study = user_rows(rows)
    report_targets = targets(study)
    groups: dict[tuple[str, Cell], list[Row]] = {}
    for r in study:
        t = target_of(r, report_targets)
        kind = AT if t is not None else NO_TARGET if r.k["dp"] else CEILING
        groups.setdefault((kind, (str(r.k["dataset"]), str(r.k["model"]), t, population(r))), []).append(r)
    kinds = (AT, NO_TARGET, CEILING)

    def order(item: tuple[str, Cell]) -> tuple[Any, ...]:
        kind, (dataset, model, t, u) = item
        return kinds.index(kind), dataset, model, t or 0.0, -1 if u is None else u

    shown = named_axes(study)
    return [Section(kind, cell, tuple(ranked(groups[(kind, cell)], shown))) for kind, cell in sorted(groups, key=order)]


def ranked(rows: Sequence[Row], shown: Sequence[str]) -> list[Row]:
    """Best first by mean SORT_BY (rows without it last), then by name."""
    def key(r: Row) -> tuple[float, str]:
        s = r.stats[SORT_BY]
        return (-s.mean if s is not None else math.inf), name(r, shown)

    return sorted(rows, key=key)


# ---------------------------------------------------------------------------
# Names.


def _uses(r: Row, axis: str) -> bool:
    return r.k[axis] is not None and not opts.user_unused(axis, r.runs[0].config)


def named_axes(rows: Sequence[Row]) -> list[str]:
    """The axes (and step sizes) that vary among user-level rows and that a name appends (not NAMED)."""
    names = results.key_names(rows)
    return [a for a in names if a not in NAMED and len({r.k[a] for r in rows if _uses(r, a)}) > 1]


def name(r: Row, shown: Sequence[str]) -> str:
    """A configuration in words: its unit and algorithm (K for dp-fedemb), its pretraining, and the
    `shown` axes (named_axes) it uses."""
    k = r.k
    if not user_level(r):
        if k["dp"]:
            ks = "/".join(sorted({str(run.summary.get("max_per_user")) for run in r.runs}))
            text = f"example-level DP-SGD (ε per user by group privacy, k = {ks})"
        else:
            text = "example-level SGD"
    elif k["algorithm"] == "dp-fedemb":
        text = f"DP-FedEmb K = {k['virtual_client_size']}"
    else:
        text = ALGORITHMS.get(str(k["algorithm"]), str(k["algorithm"]))
    bits = [f"{results.column_title(a)} = {results.axis_cell(a, k[a])}" for a in shown if _uses(r, a)]
    if k.get("pretrain"):
        bits.append(f"pretrained on public {k['pretrain']}")
    return ", ".join([text, *bits])


def server_lr(r: Row) -> float:
    return float(r.runs[0].config["lr"])


def plot_label(r: Row, rows: Sequence[Row], shown: Sequence[str]) -> str:
    """name, with the server lr where rows of the same name differ in it."""
    text = name(r, shown)
    lrs = {server_lr(x) for x in rows if name(x, shown) == text}
    return text + (f" (lr {server_lr(r):g})" if len(lrs) > 1 else "")


# ---------------------------------------------------------------------------
# The verdict.


@dataclass(frozen=True)
class Comparison:
    """best − other in mean `metric` (fractions), with its Welch 95% interval."""

    cell: Cell
    metric: str
    best: Row
    other: Row
    difference: verdict.Difference


def judged(rows: Sequence[Row], metric: str) -> list[Row]:
    """The rows a verdict on `metric` compares: those with the metric from 2 seeds or more."""
    return [r for r in rows if (s := r.stats[metric]) is not None and s.n >= 2]


def comparisons(section: Section, metric: str, shown: Sequence[str]) -> list[Comparison]:
    """The best configuration of a cell by mean `metric` (among judged; equal means: by name)
    against each other judged one; none below two judged configurations."""
    here = sorted(judged(section.rows, metric), key=lambda r: (-r.stats[metric].mean, name(r, shown)))  # type: ignore[union-attr]
    if len(here) < 2:
        return []
    best, *rest = here
    return [Comparison(section.cell, metric, best, other, verdict.welch(best.stats[metric], other.stats[metric]))  # type: ignore[arg-type]
            for other in rest]


# ---------------------------------------------------------------------------
# Tables.


def _stat(s: Stat | None, field: str) -> str:
    if s is None:
        return MISSING
    return tables.pm(s, scale=100) if field in PERCENT else tables.pm(s, digits=3)


def _sigma(r: Row) -> str:
    sigmas = {float(run.summary.get("sigma", run.config.get("sigma")) or 0.0) for run in r.runs}
    return "0" if not r.k["dp"] else "/".join(f"{s:.3f}" for s in sorted(sigmas))


def _eps(r: Row) -> str:
    eps = eps_per_user(r)
    return MISSING if eps is None else "∞" if math.isinf(eps) else f"{eps:.3f}"


COLUMNS = ("test_acc", "recall_at_far_1e-3", "recall_at_far_0.1", "nn1_accuracy", "train_s_per_round")


def _heading(section: Section, multi_panel: bool) -> str:
    dataset, model, t, u = section.cell
    where = [f"U = {'?' if u is None else f'{u:,}'}"] + ([f"{dataset}, {model}"] if multi_panel else [])
    if section.kind == AT:
        return f"## User-level ε = {t:g}, " + ", ".join(where)
    if section.kind == NO_TARGET:
        return "## DP runs at no user-level target of this report, " + ", ".join(where)
    return "## Non-private (ε = ∞): the ceiling, " + ", ".join(where)


def _diff(d: verdict.Difference) -> tuple[str, str]:
    if d.low is None or d.high is None:  # not reached: a verdict compares configurations of 2+ seeds
        return f"{100 * d.mean:+.2f}", "n/a"
    return (f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]",
            "exceeds seed noise" if d.exceeds_noise else "within seed noise")


def _seeds(r: Row) -> str:
    return str(len(r.runs)) + (f" {FEW}" if len(r.runs) < MIN_SEEDS else "")


def markdown(rows: Sequence[Row]) -> str:
    study = user_rows(rows)
    shown = named_axes(study)
    secs = sections(rows)
    delta = float(study[0].runs[0].config.get("delta", 1e-5))
    multi_panel = len({s.cell[:2] for s in secs}) > 1
    lines = [
        "# User-level study: configurations at equal user-level ε",
        "",
        f"Per user-level ε (δ = {delta:g}, zero-out of a user) and number of users U, every configuration run at "
        "that ε; mean ± sample std over seeds (no ± for one seed: no interval), seeds: how many. ε per user: the "
        "run's own for a user-level run (its target: --target-epsilon); for an example-level run its ε per user of "
        f"at most k examples by group privacy, which puts it at the target it lies within {MATCH:.0%} below. Test "
        f"accuracy: the trained classes ({MISSING}: none; dp-fedemb trains no global head); recall at FAR 1e-3 and "
        "0.1 and 1-NN: the embeddings of the held-out classes (summary.json's embedding). s / round: training "
        "seconds per round (per step for an example-level run), as `crepe train` measured them. σ: the noise "
        "multiplier (noise σC on the clipped sum).",
        "",
        "Verdict, per cell and metric: among the configurations with 2 seeds or more that have the metric, the "
        "best mean against each other one, in points with the Welch 95% interval; it exceeds the seed noise when "
        f"the interval excludes 0. A difference between configurations of one seed is a measurement, not a verdict. "
        + FEW_NOTE,
    ]
    head = ["configuration", "server lr", "seeds", *(f"{TITLES[f]}{' (%)' if f in PERCENT else ''}" for f in COLUMNS),
            "σ", "ε per user"]
    for sec in secs:
        lines += ["", _heading(sec, multi_panel), ""]
        lines += tables.md_table(head, [[name(r, shown), f"{server_lr(r):g}", str(len(r.runs)),
                                         *(_stat(r.stats[f], f) for f in COLUMNS), _sigma(r), _eps(r)] for r in sec.rows])
        if sec.kind != AT:
            continue
        found = {m: comparisons(sec, m, shown) for m in METRICS}
        body = [[TITLES[m], name(c.best, shown), _seeds(c.best), name(c.other, shown), _seeds(c.other), *_diff(c.difference)]
                for m in METRICS for c in found[m]]
        lines.append("")
        if body:
            lines += tables.md_table(["metric", "best", "seeds", "other", "seeds", "best − other (points) [Welch 95% CI]",
                                      "seed noise"], body)
        for m in (m for m in METRICS if not found[m]):
            n = len(judged(sec.rows, m))
            lines += [""] if lines[-1] else []
            lines.append(f"No verdict on {TITLES[m]}: {tables.count(n, 'configuration')} with it from 2 seeds or more.")
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "" if x is None else "inf" if math.isinf(x) else f"{x:.6g}"


SETTINGS = ("privacy_unit", "algorithm", "virtual_client_size", "local_epochs", "users_per_round", "pretrain")


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """users.csv: one line per (section, configuration); a setting the configuration does not use is empty."""
    shown = named_axes(user_rows(rows))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["section", "dataset", "model", "user_eps_target", "users", "configuration", *SETTINGS, "lr", "dp",
                    "n_seeds", "seeds", "sigma", "eps_user", "rounds",
                    *(f"{f}_{s}" for f in COLUMNS for s in ("mean", "std"))])
        for sec in sections(rows):
            for r in sec.rows:
                config = r.runs[0].config
                settings = ["" if opts.user_unused(a, config) or config.get(a) is None else config[a] for a in SETTINGS]
                rounds = r.stats["rounds"]
                w.writerow([sec.kind, *("" if v is None else v for v in sec.cell), name(r, shown), *settings,
                            f"{server_lr(r):g}", r.k["dp"], len(r.runs), " ".join(map(str, r.seeds)),
                            _sigma(r), _num(eps_per_user(r)),
                            "" if rounds is None else f"{rounds.mean:g}", *(c for f in COLUMNS for c in tables.mean_std(r.stats[f]))])


def write_verdict_csv(rows: Sequence[Row], path: Path) -> None:
    shown = named_axes(user_rows(rows))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "model", "user_eps_target", "users", "metric", "best", "best_mean", "best_n_seeds", "other",
                    "other_mean", "other_n_seeds", "difference", "difference_ci95_low", "difference_ci95_high",
                    "exceeds_seed_noise"])
        for sec in (s for s in sections(rows) if s.kind == AT):
            for m in METRICS:
                for c in comparisons(sec, m, shown):
                    d = c.difference
                    w.writerow([*sec.cell, m, name(c.best, shown), _num(c.best.stats[m].mean), len(c.best.runs),  # type: ignore[union-attr]
                                name(c.other, shown), _num(c.other.stats[m].mean), len(c.other.runs),  # type: ignore[union-attr]
                                _num(d.mean), _num(d.low), _num(d.high), "" if d.exceeds_noise is None else d.exceeds_noise])


def write(rows: Sequence[Row], out_dir: Path) -> dict[str, Path]:
    """users.md, users.csv and users_verdict.csv; nothing when no row is on data with users."""
    if not user_rows(rows):
        return {}
    paths = {"users": out_dir / "users.md", "users_csv": out_dir / "users.csv",
             "users_verdict_csv": out_dir / "users_verdict.csv"}
    paths["users"].write_text(markdown(rows))
    write_csv(rows, paths["users_csv"])
    write_verdict_csv(rows, paths["users_verdict_csv"])
    return paths


# ---------------------------------------------------------------------------
# The figure.


def _plotted(sec: Section) -> list[Row]:
    return [r for r in sec.rows if r.stats[SORT_BY] is not None and eps_per_user(r) is not None]


def figure_names(rows: Sequence[Row]) -> list[str]:
    """The study's figure, where the cells with a recall span two user-level targets or more."""
    found = {s.cell[2] for s in sections(rows) if s.kind == AT and _plotted(s)}
    return [PLOT] if len(found) >= 2 else []


def figures(plt: Any, rows: Sequence[Row]) -> dict[str, Any]:
    return {PLOT: recall_figure(plt, rows)} if figure_names(rows) else {}


def recall_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Recall at FAR 1e-3 (%) vs ε per user: a panel per (dataset, model, U), a line per configuration
    over the targets (the points at one target set slightly apart: plots.dodge), bars 95% intervals
    (dashed below MIN_SEEDS seeds), the non-private rows as dashed horizontal lines."""
    study = user_rows(rows)
    shown = named_axes(study)
    secs = sections(rows)
    panels = sorted({(s.cell[0], s.cell[1], s.cell[3]) for s in secs if s.kind == AT and _plotted(s)},
                    key=lambda p: (p[0], p[1], -1 if p[2] is None else p[2]))
    labels = sorted({plot_label(r, study, shown) for s in secs for r in _plotted(s)})
    colour = {label: (plots.COLOURS[i % len(plots.COLOURS)], plots.MARKERS[i % len(plots.MARKERS)])
              for i, label in enumerate(labels)}
    delta = float(study[0].runs[0].config.get("delta", 1e-5))
    # a panel each, and room on the right for the legend of long configuration names
    fig, axs = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + LEGEND_WIDTH, 4.6), squeeze=False,
                            layout="constrained")
    few: set[int] = set()
    for ax, panel in zip(axs[0], panels):
        at = [s for s in secs if (s.cell[0], s.cell[1], s.cell[3]) == panel]
        series: dict[str, list[Row]] = {}
        for r in (r for s in at if s.kind == AT for r in _plotted(s)):
            series.setdefault(plot_label(r, study, shown), []).append(r)
        factors = plots.dodge(list(series))
        xs_all: list[float] = []
        ys: list[float] = []
        sds: list[float] = []
        ends: list[float] = []
        for label, here in series.items():
            here.sort(key=lambda r: eps_per_user(r))  # type: ignore[arg-type, return-value]
            c, m = colour[label]
            x = [eps_per_user(r) for r in here]
            xs_all += x  # type: ignore[arg-type]
            y = [100 * r.stats[SORT_BY].mean for r in here]  # type: ignore[union-attr]
            bar = [100 * verdict.half95_or_0(r.stats[SORT_BY]) for r in here]
            ns = [r.stats[SORT_BY].n for r in here]  # type: ignore[union-attr]
            xd = [xi * factors[label] for xi in x]  # type: ignore[operator]
            ax.plot(xd, y, color=c, marker=m, ms=6, label=label)
            eb = ax.errorbar(xd, y, yerr=plots.clipped_yerr(y, bar), color=c, capsize=3, ls="none", label=label)
            few |= plots.dash_few(eb, ns)
            ends += plots.bar_ends(y, bar, ns)
            ys += y
            sds += [100 * plots.std_or_0(r.stats[SORT_BY]) for r in here]
        for r in (r for s in at if s.kind == CEILING for r in s.rows if r.stats[SORT_BY] is not None):
            label = plot_label(r, study, shown)
            c = colour[label][0] if label in colour else "#7f7f7f"
            y0 = 100 * r.stats[SORT_BY].mean  # type: ignore[union-attr]
            ax.axhline(y0, color=c, ls="--", lw=1, label=f"{label} non-DP (ε = ∞)")
            ys.append(y0)
            sds.append(100 * plots.std_or_0(r.stats[SORT_BY]))
        plots.log_axis(ax.xaxis, xs_all, marks=sorted({s.cell[2] for s in at if s.kind == AT}))  # type: ignore[type-var]
        ax.set_ylim(*plots.accuracy_limits(ys + ends, sds))
        ax.set_xlabel(f"ε per user at δ = {delta:g}, log scale (example level: by group privacy)"
                      + (plots.DODGE_NOTE if len(factors) > 1 else ""))
        ax.set_ylabel("held-out recall at FAR 1e-3 (%)")
        dataset, model, u = panel
        ax.set_title(f"{dataset}, {model}, U = {'?' if u is None else f'{u:,}'}")
    fig.suptitle("Held-out recall at FAR 1e-3 vs user-level ε (bars: 95% CI)", fontsize=10, x=0.01, ha="left")
    plots.legend(fig)
    plots.few_note(fig, few)
    return fig
