"""`crepe report`: tables and plots of a sweep's runs (accuracy, time, privacy).

Reads every run directory under SWEEP_DIR (a folder with config.json; finished
runs have summary.json with status "complete" and metrics.jsonl), groups runs
that differ only in their seed, and writes

    OUT/results.md         Markdown table: mean +- std and 95% interval over seeds; the cells a
                           sweep never ran because their target epsilon is unreachable
    OUT/results.csv        the same numbers, machine-readable
    OUT/acc_vs_eps.png     test accuracy vs epsilon_total
    OUT/acc_vs_time.png    test accuracy vs wall time
    OUT/acc_per_epoch.png  test accuracy per epoch
    OUT/diagnostics.png    clipping diagnostics per epoch (runs with --diagnostics only)
    OUT/frontier.png, verdict.md, ...  the study at equal epsilon (crepe.study.verdict)

Rows and columns come from the option declarations (crepe.config, via
crepe.study.grid): runs that agree on every grid option but the seed share a
row (a method's ignored options and a non-private run's DP-only options do not
split rows). So runs calibrated to different target epsilons are never averaged.
A report compares runs of one protocol: every other option (epochs, batch
size, subsets, ...) must agree across the runs that use it, or the report stops
with an error naming the setting and the runs.

Plots keep differences in proportion: an accuracy axis spans at least
MIN_SPAN points and 4 x the largest seed std, so a gap smaller than the seed
noise never fills the panel (the full 0-100 range would instead flatten real
gaps of a few points); ε and time axes are logarithmic with labelled ticks.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crepe.parser import Parser
from crepe.config import UsageError
from crepe.study import command
from crepe.study import grid as opts
from crepe.study.grid import REPLICATE
from crepe.training import rundir

# Always columns (the others when they vary across rows, or, for WHEN_SET, when any row sets them).
SHOWN = ("model", "method", "dp", "sigma")
WHEN_SET = ("target_epsilon",)
TITLES = {"dp": "privacy", "sigma": "σ", "target_epsilon": "target ε"}  # column titles other than the option name
# Filled from a grid option by TrainConfig.resolve (select_sigma from sigma; sigma
# from a target epsilon): must agree within a row only.
PER_ROW = ("select_sigma", "sigma")
METHOD_ORDER = {"full": 0, "random": 1, "craig": 2}
METHOD_STYLE = {  # colour, marker
    "full": ("#1f77b4", "o"),
    "random": ("#ff7f0e", "s"),
    "craig": ("#2ca02c", "^"),
}
PLOTS = ("acc_vs_eps.png", "acc_vs_time.png", "acc_per_epoch.png")
DIAGNOSTICS_PLOT = "diagnostics.png"
MIN_SPAN = 5.0  # accuracy points: the narrowest y-range of an accuracy plot
MIN_SIZE = (6.4, 4.0)  # inches: the smallest figure (titles and labels fit)


def axes() -> tuple[str, ...]:
    """Options that make rows (a column of the table when they vary across the sweep)."""
    return opts.report_axes()


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (two-sided 95%)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (std None for one seed)."""

    mean: float
    std: float | None
    n: int

    @property
    def half95(self) -> float | None:
        """Half-width of the t-based 95% interval of the mean (None for one seed or an infinite mean)."""
        if self.std is None or math.isinf(self.mean):
            return None
        return t975(self.n - 1) * self.std / math.sqrt(self.n)

    @staticmethod
    def of(values: Sequence[float | None]) -> Stat | None:
        xs = [float(v) for v in values if v is not None]
        if not xs:
            return None
        if any(math.isinf(x) for x in xs):
            return Stat(math.inf, None, len(xs))
        return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


@dataclass(frozen=True)
class Row:
    """One table row: the runs of one configuration, over seeds."""

    key: tuple[tuple[str, Any], ...]  # (axis, value) for every axis
    runs: tuple[Run, ...]
    stats: dict[str, Stat | None]
    speedup: float | None  # total time of the matching full-data run / this row's

    @property
    def k(self) -> dict[str, Any]:
        return dict(self.key)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r.config.get("seed", 0)) for r in self.runs)


SUMMARY_FIELDS = ("test_acc", "train_acc", "eps_total", "eps_select", "eps_train", "select_time_s", "train_time_s",
                  "eval_time_s", "total_time_s")
MIN_SEEDS = 3  # fewer seeds than this: the interval is wide (or missing) and marked FEW
FEW = "†"


def _eps(summary: dict[str, Any], key: str) -> float:
    """An epsilon of a summary as a float; `crepe train` writes an infinite one
    (non-private) as null with `<key>_infinite: true` (JSON has no inf)."""
    value = summary.get(key)
    if summary.get(f"{key}_infinite") or value is None:
        return math.inf
    return float(value)


# ---------------------------------------------------------------------------
# Loading.


def find_runs(sweep_dir: Path) -> tuple[list[Run], list[str]]:
    """Complete runs under sweep_dir, and a note per run directory left out."""
    if not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} is not a directory")
    runs: list[Run] = []
    skipped: list[str] = []
    dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / rundir.CONFIG).is_file())
    if (sweep_dir / rundir.CONFIG).is_file():
        dirs = [sweep_dir]  # a single run directory reports as a one-run sweep
    if not dirs:
        raise UsageError(
            f"no runs in {sweep_dir}: expected run directories (with config.json) written by "
            "`crepe sweep --out` or `crepe train --out`"
        )
    for d in dirs:
        try:
            config = rundir.read_config(d).to_dict()
            summary = rundir.read_summary(d) or {}
            metrics = rundir.read_metrics(d)
        except UsageError as e:
            skipped.append(f"{d.name}: {e}")
            continue
        if summary.get("status") != "complete":
            skipped.append(f"{d.name}: not complete")
            continue
        runs.append(Run(d.name, d, config, summary, tuple(metrics)))
    if not runs:
        raise UsageError(f"no complete runs in {sweep_dir} ({len(skipped)} incomplete: {'; '.join(skipped[:5])})")
    return runs, skipped


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _uses(c: dict[str, Any], name: str) -> bool:
    """Does a run with config c depend on option `name`?"""
    if name == "sigma" and c.get("target_epsilon") is not None:
        return False  # solved from the target: the target is the setting
    return not opts.unused(name, method=c.get("method"), dp=c.get("dp"))


def _axis_key(run: Run) -> tuple[tuple[str, Any], ...]:
    c = run.config
    return tuple((axis, _norm(c.get(axis)) if _uses(c, axis) else None) for axis in axes())


def _by(runs: Sequence[Run], key: str) -> dict[Any, list[str]]:
    out: dict[Any, list[str]] = {}
    for r in runs:
        out.setdefault(_norm(r.config.get(key)), []).append(r.name)
    return out


def _mismatch(key: str, runs: Sequence[Run], where: str) -> UsageError:
    parts = [f"{v!r} in {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for v, names in _by(runs, key).items()]
    return UsageError(
        f"runs with mismatched settings {where}: {key} is " + "; ".join(parts)
        + ". A report compares runs of one protocol: report them from separate sweep directories"
    )


def check_consistent(runs: Sequence[Run]) -> None:
    """Settings that are not table columns must agree among the runs that use them; UsageError naming them."""
    keys = sorted(set().union(*(r.config.keys() for r in runs)))
    ignored = (REPLICATE, *opts.machine(), *axes(), *PER_ROW)
    for k in (k for k in keys if k not in ignored):
        users = [r for r in runs if _uses(r.config, k)]
        if len(_by(users, k)) > 1:
            raise _mismatch(k, users, "across the sweep")
    groups: dict[Any, list[Run]] = {}
    for r in runs:
        groups.setdefault(_axis_key(r), []).append(r)
    for group in groups.values():
        for k in PER_ROW:
            users = [r for r in group if not opts.unused(k, method=r.config.get("method"), dp=r.config.get("dp"))]
            if len(_by(users, k)) > 1:
                raise _mismatch(k, group, f"within one row ({_label(dict(_axis_key(group[0])))})")
        seeds = _by(group, "seed")
        dup = [names for names in seeds.values() if len(names) > 1]
        if dup:
            raise UsageError(f"runs {', '.join(dup[0])} have the same settings and the same seed: remove one")


# ---------------------------------------------------------------------------
# Aggregation.


def _privacy(k: dict[str, Any]) -> str:
    """The privacy level of a row: DP at a target epsilon or a sigma, or non-DP."""
    if not k.get("dp"):
        return "non-DP"
    if k.get("target_epsilon") is not None:
        return f"DP ε={k['target_epsilon']:g} (target)"
    return "DP" if k.get("sigma") is None else f"DP σ={k['sigma']:g}"


def _label(k: dict[str, Any]) -> str:
    return f"{k.get('model')} {k.get('method')} {_privacy(k)}"


def _sort_key(row_key: tuple[tuple[str, Any], ...]) -> tuple[Any, ...]:
    k = dict(row_key)
    return (
        str(k.get("dataset")),
        str(k.get("model")),
        0 if k.get("dp") else 1,
        k.get("target_epsilon") or 0.0,
        k.get("sigma") or 0.0,
        METHOD_ORDER.get(str(k.get("method")), 9),
        tuple(str(k.get(a)) for a in axes() if a not in ("dataset", "model", "dp", "target_epsilon", "sigma", "method")),
    )


def aggregate(runs: Sequence[Run]) -> list[Row]:
    check_consistent(runs)
    groups: dict[tuple[tuple[str, Any], ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(_axis_key(r), []).append(r)
    stats: dict[tuple[tuple[str, Any], ...], dict[str, Stat | None]] = {}
    for key, group in groups.items():
        s: dict[str, Stat | None] = {}
        for f in SUMMARY_FIELDS:
            vals = [(_eps(r.summary, f) if f.startswith("eps") else r.summary.get(f)) for r in group]
            s[f] = Stat.of(vals)
        stats[key] = s
    rows = []
    for key in sorted(groups, key=_sort_key):
        # the full-data row at the same settings: the options full-data runs ignore are None in its key
        ref_key = tuple((a, "full" if a == "method" else None if opts.unused(a, method="full", dp=True) else v) for a, v in key)
        speedup = None
        ref, mine = stats.get(ref_key, {}).get("total_time_s"), stats[key].get("total_time_s")
        if ref is not None and mine is not None and mine.mean > 0:
            speedup = ref.mean / mine.mean
        rows.append(Row(key, tuple(sorted(groups[key], key=lambda r: int(r.config.get("seed", 0)))), stats[key], speedup))
    return rows


def varying_axes(rows: Sequence[Row]) -> list[str]:
    """Axes shown as columns: the always-shown ones plus any that vary across rows."""
    out = []
    for a in axes():
        values = {r.k[a] for r in rows if r.k[a] is not None}
        if a in SHOWN or len(values) > 1 or (a in WHEN_SET and values):
            out.append(a)
    return out


# ---------------------------------------------------------------------------
# Table and CSV.


def pm(s: Stat | None, *, scale: float = 1.0, digits: int = 2) -> str:
    if s is None:
        return "n/a"
    if math.isinf(s.mean):
        return "∞"
    text = f"{s.mean * scale:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std * scale:.{digits}f}"
    return text


def eps_cell(r: Row) -> str:
    t, sel, tr = r.stats["eps_total"], r.stats["eps_select"], r.stats["eps_train"]
    if t is None:
        return "n/a"
    if math.isinf(t.mean):
        if not r.k["dp"]:
            return "∞ (non-private)"
        return "∞ (non-private selection)" if sel is not None and math.isinf(sel.mean) else "∞"
    return f"{t.mean:.3g} ({_num(sel)} / {_num(tr)})"


def _num(s: Stat | None) -> str:
    return "n/a" if s is None else ("∞" if math.isinf(s.mean) else f"{s.mean:.3g}")


def axis_cell(a: str, v: Any) -> str:
    if a == "dp":
        return "DP" if v else "non-DP"
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def column_title(a: str) -> str:
    return TITLES.get(a, a.replace("_", " "))


def _solved_sigma(r: Row) -> float | None:
    """The sigma of a row's runs (solved from the target epsilon when there is one)."""
    sigmas = {r2.config.get("sigma") for r2 in r.runs}
    return sigmas.pop() if len(sigmas) == 1 and r.k["dp"] else None


def _cell(r: Row, a: str) -> str:
    if a == "sigma" and r.k[a] is None and _solved_sigma(r) is not None:
        return f"{_solved_sigma(r):.3g} (solved)"
    return axis_cell(a, r.k[a])


def protocol(runs: Sequence[Run], columns: Sequence[str]) -> list[str]:
    """`name=value` of every option that is not a column, where the runs that use it agree."""
    bits = []
    skip = (REPLICATE, *opts.machine(), *columns)
    for k in (k for k in runs[0].config if k not in skip):
        values = _by([r for r in runs if _uses(r.config, k)], k)
        if len(values) == 1 and next(iter(values)) is not None:
            bits.append(f"{k}={next(iter(values))}")
    return bits


def ci_cell(s: Stat | None, *, scale: float = 100.0) -> str:
    """The 95% interval of a mean as [low, high], marked FEW below MIN_SEEDS seeds."""
    if s is None:
        return "n/a"
    h = s.half95
    text = "n/a" if h is None else f"[{(s.mean - h) * scale:.2f}, {(s.mean + h) * scale:.2f}]"
    return text + (f" {FEW}" if s.n < MIN_SEEDS else "")


def speedup_cell(r: Row) -> str:
    return "n/a" if r.speedup is None else f"{r.speedup:.2f}×"


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + [
        "| " + " | ".join(cells) + " |" for cells in body]


# The training-set accuracy is computed on the private data outside the ledger (DESIGN.md section 9).
TRAIN_ACC_TITLE = "train acc (%, not covered by ε)"
TRAIN_ACC_NOTE = ("Train acc is the final model's accuracy on the training split: computed on the private data "
                  "outside the ledger, it is not covered by ε.")
CI_NOTE = (f"95% CI: t-based interval of the mean over seeds; {FEW} fewer than {MIN_SEEDS} seeds "
           "(a wide interval, or none for one seed).")


def markdown(rows: Sequence[Row], runs: Sequence[Run], skipped: Sequence[str], unreachable: Sequence[str] = ()) -> str:
    """results.md; `unreachable`: the lines of unreachable_section (cells a sweep never ran)."""
    axes = varying_axes(rows)
    cfg = runs[0].config
    protocol_bits = protocol(runs, axes)
    head = [column_title(a) for a in axes] + [
        "seeds", "test acc (%)", "95% CI (%)", TRAIN_ACC_TITLE, "ε_total (ε_select / ε_train)", "select (s)", "train (s)",
        "eval (s)", "total (s)", "speed-up vs full"]
    lines = [
        "# crepe sweep report",
        "",
        f"{len(runs)} complete runs; mean ± sample std over seeds. Protocol: {', '.join(protocol_bits)}.",
        "Times are wall-clock seconds per run as `crepe train` measures them: selection rounds, training epochs, and "
        "the whole run (selection + training + evaluation; process start-up and data loading excluded). "
        "Speed-up = total time of the full-data run with the same model, dataset and σ or target ε (or non-DP) / this row's. "
        "Runs calibrated to different target ε are never averaged: each target is its own row. " + CI_NOTE,
        f"ε at δ = {cfg.get('delta', 1e-5):g}, zero-out adjacency: ε_total composes the selection rounds and the "
        "DP-SGD steps in one accountant; ε_select and ε_train are each part alone (their sum overstates ε_total). "
        "Per-class selection reads the true labels: its ε holds with labels treated as public. " + TRAIN_ACC_NOTE,
        "",
    ]
    lines += md_table(head, [[_cell(r, a) for a in axes] + [
        str(len(r.runs)),
        pm(r.stats["test_acc"], scale=100),
        ci_cell(r.stats["test_acc"]),
        pm(r.stats["train_acc"], scale=100),
        eps_cell(r),
        *(pm(r.stats[f], digits=1) for f in ("select_time_s", "train_time_s", "eval_time_s", "total_time_s")),
        speedup_cell(r),
    ] for r in rows])
    lines += unreachable
    if skipped:
        lines += ["", f"Left out ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("n_seeds", "seeds") + tuple(
    f"{f}_{s}" for f in SUMMARY_FIELDS for s in ("mean", "std")) + ("speedup_vs_full", "test_acc_ci95_low", "test_acc_ci95_high")


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(axes()) + list(CSV_FIELDS))
        for r in rows:
            vals: list[Any] = ["" if r.k[a] is None else r.k[a] for a in axes()]
            vals += [len(r.runs), " ".join(map(str, r.seeds))]
            for f in SUMMARY_FIELDS:
                s = r.stats[f]
                vals += ["" if s is None else ("inf" if math.isinf(s.mean) else f"{s.mean:.6g}"),
                         "" if s is None or s.std is None else f"{s.std:.6g}"]
            vals.append("" if r.speedup is None else f"{r.speedup:.4g}")
            vals += ci_bounds(r.stats["test_acc"])
            w.writerow(vals)


def ci_bounds(s: Stat | None) -> list[str]:
    """The 95% interval of a mean as two CSV cells (empty below two seeds)."""
    h = None if s is None else s.half95
    return ["", ""] if s is None or h is None else [f"{s.mean - h:.6g}", f"{s.mean + h:.6g}"]


# ---------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: no display needed).

# Axes that pick a plot's panel or line style rather than a line of their own.
PLOT_AXES = ("dataset", "model", "method", "dp", "sigma", "target_epsilon")


def panels_of(rows: Sequence[Row]) -> list[tuple[str, str]]:
    return sorted({(str(r.k["dataset"]), str(r.k["model"])) for r in rows})


def extra_label(r: Row, axes: Sequence[str]) -> str:
    bits = [f"{column_title(a)}={axis_cell(a, r.k[a])}" for a in axes if a not in PLOT_AXES and r.k[a] is not None]
    return (" " + " ".join(bits)) if bits else ""


def _series(rows: Sequence[Row], axes: Sequence[str]) -> dict[str, list[Row]]:
    """DP rows of one panel, by method (+ extra axes): one line each, over sigma or target epsilon."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.k["dp"]:
            out.setdefault(f"{r.k['method']}{extra_label(r, axes)}", []).append(r)
    return out


def std_or_0(s: Stat | None) -> float:
    return 0.0 if s is None or s.std is None else s.std


def _level(r: Row) -> tuple[int, float, float]:
    """Sort key of a row's privacy level: DP before non-DP, then target epsilon, then sigma."""
    return (0 if r.k["dp"] else 1, r.k["target_epsilon"] or 0.0, r.k["sigma"] or 0.0)


def _point_label(r: Row) -> str:
    if r.k["target_epsilon"] is not None:
        return f"ε*={r.k['target_epsilon']:g}"
    return f"σ={r.k['sigma']:g}" if r.k["sigma"] is not None else ""


def accuracy_limits(values: Sequence[float], stds: Sequence[float]) -> tuple[float, float]:
    """A y-range (accuracy in %) around the data that spans at least MIN_SPAN points and
    4 x the largest std, inside [0, 100]: differences below the seed noise stay small."""
    lo, hi = min(values), max(values)
    span = 1.15 * max(hi - lo, MIN_SPAN, 4 * max(stds, default=0.0))
    mid = (lo + hi) / 2
    a, b = mid - span / 2, mid + span / 2
    if a < 0:
        a, b = 0.0, min(100.0, b - a)
    if b > 100:
        a, b = max(0.0, a - (b - 100)), 100.0
    return a, b


def log_axis(axis: Any, values: Sequence[float]) -> None:
    """A log x axis whose ticks are labelled plainly (2, 3, 4 rather than 10^0.5), even
    when the data span less than a decade (then explicit ticks at round values)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

    ax = axis.axes
    ax.set_xscale("log")
    xs = [v for v in values if v > 0 and math.isfinite(v)]
    if not xs:
        return
    lo, hi = min(xs), max(xs)
    pad = max(1.15, (hi / lo) ** 0.08)
    ax.set_xlim(lo / pad, hi * pad)
    if hi / lo < 10:
        ticks = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo / pad, hi * pad)
        ticks = [t for t in ticks if lo / pad <= t <= hi * pad]
        axis.set_major_locator(FixedLocator(ticks if len(ticks) >= 2 else sorted({lo, hi})))
        axis.set_minor_locator(NullLocator())
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0) if hi / lo < 100 else (1.0, 2.0, 5.0)))
        axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def figure(plt: Any, nrows: int, ncols: int, panel: tuple[float, float], **kw: Any) -> tuple[Any, Any]:
    size = (max(MIN_SIZE[0], panel[0] * ncols), max(MIN_SIZE[1], panel[1] * nrows))
    return plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained", **kw)


def legend(fig: Any) -> None:
    """One legend for the figure, outside the panels (right), one entry per label."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=8)


def style(name: str) -> tuple[str, str]:
    """Colour and marker of a line or point, by the method its label starts with."""
    return METHOD_STYLE.get(name.split(" ")[0], ("#7f7f7f", "D"))


def acc_pct(r: Row, error: Callable[[Stat | None], float]) -> tuple[float, float]:
    """A row's mean test accuracy and its error bar, in %."""
    return 100 * r.stats["test_acc"].mean, 100 * error(r.stats["test_acc"])  # type: ignore[union-attr]


def draw_acc_vs_eps(ax: Any, rows: Sequence[Row], axes_cols: Sequence[str], *, error: Callable[[Stat | None], float]) -> None:
    """One panel of test accuracy vs the achieved epsilon_total: a line per series of DP rows (_series
    over `axes_cols`), error bars `error(test_acc stat)`; non-private rows as dashed horizontal lines."""
    rows = [r for r in rows if r.stats["test_acc"]]
    xs_all, ys, sds = [], [], []
    for name, series in _series(rows, axes_cols).items():
        series = [r for r in series if r.stats["eps_total"] and math.isfinite(r.stats["eps_total"].mean)]
        if not series:
            continue
        series.sort(key=lambda r: r.stats["eps_total"].mean)  # type: ignore[union-attr]
        c, m = style(name)
        x = [r.stats["eps_total"].mean for r in series]  # type: ignore[union-attr]
        y, sd = zip(*(acc_pct(r, error) for r in series))
        ax.errorbar(x, y, yerr=sd, color=c, marker=m, capsize=3, label=f"{name} (DP)")
        for xi, yi, r in zip(x, y, series):
            if r.k["target_epsilon"] is None:  # a target is already where the point sits on the x axis
                ax.annotate(_point_label(r), (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7, color=c)
        xs_all += x
        ys += y
        sds += sd
    for r in rows:
        if not r.k["dp"]:
            c, _ = style(str(r.k["method"]))
            y, sd = acc_pct(r, error)
            ax.axhline(y, color=c, ls="--", lw=1, label=f"{r.k['method']}{extra_label(r, axes_cols)} non-DP (ε = ∞)")
            ys.append(y)
            sds.append(sd)
    log_axis(ax.xaxis, xs_all)
    if ys:
        ax.set_ylim(*accuracy_limits(ys, sds))
    delta = float(rows[0].runs[0].config.get("delta", 1e-5)) if rows else 1e-5
    ax.set_xlabel(f"ε_total (selection + training) at δ = {delta:g}, log scale")
    ax.set_ylabel("test accuracy (%)")


def figures(rows: Sequence[Row]) -> dict[str, Any]:
    """file name -> matplotlib Figure of each plot (the caller saves and closes them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    axes_cols = varying_axes(rows)
    panels = panels_of(rows)
    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    figs: dict[str, Any] = {}

    def in_panel(r: Row, panel: tuple[str, str]) -> bool:
        return (str(r.k["dataset"]), str(r.k["model"])) == panel

    def acc(r: Row) -> tuple[float, float]:
        return acc_pct(r, std_or_0)

    # 1. test accuracy vs epsilon_total
    fig, axs = figure(plt, 1, len(panels), (6.0, 4.2))
    for ax, panel in zip(axs[0], panels):
        draw_acc_vs_eps(ax, [r for r in rows if in_panel(r, panel)], axes_cols, error=std_or_0)
        ax.set_title(f"Test accuracy vs privacy: {panel[0]}, {panel[1]}")
    legend(fig)
    figs[PLOTS[0]] = fig

    # 2. test accuracy vs wall time
    levels = sorted({_level(r) for r in rows})
    fig, axs = figure(plt, 1, len(panels), (6.0, 4.2))
    for ax, panel in zip(axs[0], panels):
        prow = [r for r in rows if in_panel(r, panel) and r.stats["total_time_s"] and r.stats["test_acc"]]
        for r in prow:
            name = f"{r.k['method']}{extra_label(r, axes_cols)}"
            c, m = style(name)
            filled = bool(r.k["dp"])
            y, sd = acc(r)
            t = r.stats["total_time_s"]
            ax.errorbar(t.mean, y, xerr=std_or_0(t), yerr=sd, color=c, marker=m, mfc=c if filled else "white", ms=7, capsize=3,  # type: ignore[union-attr]
                        ls="none", label=f"{name} ({'DP' if filled else 'non-DP'})")
            ax.annotate(_point_label(r) if filled else "non-DP", (t.mean, y), textcoords="offset points",  # type: ignore[union-attr]
                        xytext=(6, -3 + 8 * (levels.index(_level(r)) % 2)), fontsize=7, color=c)
        log_axis(ax.xaxis, [r.stats["total_time_s"].mean for r in prow])  # type: ignore[union-attr]
        if prow:
            ax.set_ylim(*accuracy_limits([acc(r)[0] for r in prow], [acc(r)[1] for r in prow]))
        ax.set_xlabel("wall time per run (s), log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Test accuracy vs wall time: {panel[0]}, {panel[1]}")
    legend(fig)
    figs[PLOTS[1]] = fig

    # 3. test accuracy per epoch: one panel per (dataset, model) x privacy level
    fig, axs = figure(plt, len(panels), len(levels), (3.8, 3.2), sharey="row")
    for i, panel in enumerate(panels):
        values, sds = [], []
        for j, level in enumerate(levels):
            ax = axs[i][j]
            title = ""
            for r in rows:
                if not in_panel(r, panel) or _level(r) != level:
                    continue
                title = _privacy(r.k)
                evaluated = [[m for m in run.metrics if m.get("test_acc") is not None] for run in r.runs]  # --eval-every
                curves = [[float(m["test_acc"]) for m in ms] for ms in evaluated if ms]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                first = next(ms for ms in evaluated if ms)
                epochs = [int(first[e].get("epoch", e)) for e in range(n)]
                # epoch numbers may start at 0 or 1: plot "after epoch k" as k = 1..n
                base = int(r.runs[0].metrics[0].get("epoch", 0)) if r.runs[0].metrics else 1
                xs = [e - base + 1 for e in epochs]
                mean = [100 * statistics.fmean(c[e] for c in curves) for e in range(n)]
                sd = [100 * (statistics.stdev(c[e] for c in curves) if len(curves) > 1 else 0.0) for e in range(n)]
                name = f"{r.k['method']}{extra_label(r, axes_cols)}"
                c, m = style(name)
                ax.plot(xs, mean, color=c, marker=m, ms=4, label=name)
                if len(curves) > 1:
                    ax.fill_between(xs, [a - b for a, b in zip(mean, sd)], [a + b for a, b in zip(mean, sd)], color=c, alpha=0.15)
                values += mean
                sds += sd
            ax.set_title(f"{panel[0]}, {panel[1]}, {title}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            lo, hi = ax.get_xlim()
            ax.set_xlim(min(lo, 0.5), max(hi, 1.5))  # one epoch: a readable axis around it, not 0.95..1.05
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
        if values:
            axs[i][0].set_ylim(*accuracy_limits(values, sds))  # shared along the row
    fig.suptitle("Test accuracy after each epoch (mean over seeds, band: ± 1 std)", fontsize=10, x=0.01, ha="left")
    legend(fig)
    figs[PLOTS[2]] = fig

    diag = diagnostics_figure(plt, rows)
    if diag is not None:
        figs[DIAGNOSTICS_PLOT] = diag
    from crepe.study import verdict  # imports this module

    figs.update(verdict.figures(plt, rows))
    return figs


def diagnostics_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """One panel per scalar diagnostic over epochs, one line per run; None when no run has diagnostics."""
    metrics: dict[str, None] = {}
    for r in rows:
        for run in r.runs:
            for m in run.metrics:
                for k, v in (m.get("diagnostics") or {}).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        metrics.setdefault(k)
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axs = figure(plt, nrows, ncols, (3.6, 2.8), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = ("-", "--", ":", "-.")
    for ax, metric in zip(axs.flat, metrics):
        for i, r in enumerate(rows):
            for s, run in enumerate(r.runs):
                points = [(int(m.get("epoch", e + 1)), m["diagnostics"][metric]) for e, m in enumerate(run.metrics)
                          if isinstance((m.get("diagnostics") or {}).get(metric), (int, float))]
                if points:
                    ax.plot(*zip(*points), color=colours[i % len(colours)], ls=lines[s % len(lines)], marker=".",
                            label=f"{_label(r.k)}{extra_label(r, varying_axes(rows))} seed {run.config.get('seed', 0)}")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
    for ax in list(axs.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("Clipping diagnostics per epoch, on a probe of training examples: not covered by ε", fontsize=10,
                 x=0.01, ha="left")  # left: the legend sits at the upper right
    legend(fig)
    return fig


def plot_all(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in figures(rows).items():
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


# ---------------------------------------------------------------------------
# Command line.


def unreachable_section(sweep_dir: Path) -> list[str]:
    """Markdown lines listing the cells `crepe sweep` never ran because their target epsilon is
    unreachable (from SWEEP_DIR/sweep.json; none without one). A cell: its runs but the seed."""
    from crepe.study.plan import load_manifest

    manifest = load_manifest(sweep_dir)
    records = [r for r in (manifest or {}).get("runs", {}).values() if r.get("status") == "unreachable"]
    if manifest is None or not records:
        return []
    key = {st.name: k for k, st in opts.axes().items()}
    shown = [key["method"]] + [k for k, v in manifest["grid"].items()
                               if len(v) > 1 and k not in (key["method"], key[REPLICATE], key["target_epsilon"])]
    cells: dict[tuple[str, float, float], list[str]] = {}
    for r in records:
        settings = " ".join(f"{k}={opts.fmt(r['settings'][k])}" for k in shown if k in r["settings"])
        seed = r["settings"].get(key[REPLICATE], opts.default(REPLICATE))
        cells.setdefault((settings, r["target_epsilon"], r["smallest_epsilon"]), []).append(str(seed))
    return ["", "## Unreachable cells (not run)", "",
            "Their schedule cannot bring ε_total down to the target ε even at the largest noise `crepe train` "
            "allows: `crepe sweep` did not start them.", ""] + md_table(
        ["settings", "target ε", "smallest reachable ε", "seeds"],
        [[settings, f"{target:g}", f"{floor:.4g}", " ".join(seeds)] for (settings, target, floor), seeds in cells.items()])


def report(sweep_dir: Path, out_dir: Path | None = None, *, plots: bool = True) -> dict[str, Path]:
    """Write the tables, CSVs and plots of a sweep; returns their paths."""
    from crepe.study import verdict  # imports this module

    runs, skipped = find_runs(sweep_dir)
    rows = aggregate(runs)
    unreachable = unreachable_section(sweep_dir)
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
