"""The figures of a report (matplotlib, Agg backend: no display needed), one function each, and
which of them a sweep gets (figure_names: only the figures that say something about its runs):

    acc_vs_eps.png     test accuracy vs achieved ε_total, a line per method over σ (colour: method, marker:
                       σ, as in acc_vs_time.png; a legend, no labels on the points). Only when some DP
                       row is set by σ (no --target-epsilon): in an equal-ε sweep every run's ε is its
                       target, so the points would stack at the targets; there the study's figures
                       (crepe.study.verdict: acc_vs_time_at_eps.png, frontier.png) say it instead
    acc_vs_time.png    test accuracy vs wall time, every row in one panel (colour: method, marker:
                       privacy level, hollow: non-DP; a legend, no labels on the points). Always
    acc_per_epoch.png  test accuracy per epoch, a panel per privacy level (3 a line). Always
    diagnostics.png    clipping diagnostics per epoch, a panel per quantity (in words, with its unit),
                       a line per row (mean over seeds; colour: method, marker: privacy level where
                       that tells the rows apart). Only for runs with --diagnostics
    sparsity.png       test accuracy (top) and the last epoch's noise-to-signal ratio (bottom, not
                       covered by ε) against --sparsity, a column per (dataset, model), a line per
                       method and privacy level (mean, bars ± 1 std over seeds). Only when the sweep
                       has two sparsities or more

and the pieces the verdict's figures share (a panel of accuracy vs epsilon, axes,
legend, styles, error bars). Plots keep differences in proportion: an accuracy axis
is fitted to the data (accuracy_limits over the means and the ends of the ± 1 std
bars, and of the 95% interval bars from MIN_SEEDS seeds or more, with a margin: at least MIN_SPAN points and 4 x the largest
seed std, never the fixed 0-100), so a gap smaller than the seed noise never fills
the panel and real gaps of a few points are not flattened; a very wide bar from
fewer seeds runs out of the panel rather than squashing the points. Error bars of an accuracy
are clipped to [0, 100]; bars from fewer than MIN_SEEDS seeds are dashed and the
figure's footnote says why (FEW_FIGURE_NOTE). ε and time axes are logarithmic with
labelled ticks. matplotlib is imported only when a figure is drawn (pyplot).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from crepe.smallsets import methods
from crepe.study.results import (FEW, MIN_SEEDS, Row, method_rank, Stat, extra_label, privacy_label, row_label,
                                 varying_axes)

PLOTS = ("acc_vs_eps.png", "acc_vs_time.png", "acc_per_epoch.png")
DIAGNOSTICS_PLOT = "diagnostics.png"
SPARSITY_PLOT = "sparsity.png"
MIN_SPAN = 5.0  # accuracy points: the narrowest y-range of an accuracy plot
MIN_SIZE = (6.4, 4.0)  # inches: the smallest figure (titles and labels fit)
FEW_FIGURE_NOTE = (f"Dashed bars ({FEW}): fewer than {MIN_SEEDS} seeds, very uncertain: a 95% interval from 2 seeds is "
                   "± 9 std wide (t quantile 12.7), and the axis is not stretched to hold them.")
FEW_STD_NOTE = f"Dashed bars ({FEW}): fewer than {MIN_SEEDS} seeds: a std from 2 seeds is itself very uncertain."
ONE_SEED_NOTE = "One seed: no error bar."
CLIP_NOTE = "Bars are clipped to [0, 100] %."


def sigma_rows(rows: Sequence[Row]) -> list[Row]:
    """The DP rows set by a noise multiplier rather than calibrated to a target epsilon."""
    return [r for r in rows if r.k["dp"] and r.k["target_epsilon"] is None]


def figure_names(rows: Sequence[Row]) -> list[str]:
    """The figures of this module a sweep gets (the rule of each: the module docstring)."""
    names = [PLOTS[0]] if sigma_rows(rows) else []
    names += [PLOTS[1], PLOTS[2]]
    if _diagnostic_keys(rows):
        names.append(DIAGNOSTICS_PLOT)
    if len({r.k.get("sparsity", 0.0) for r in rows}) > 1:
        names.append(SPARSITY_PLOT)
    return names


def clipped_yerr(ys: Sequence[float], halves: Sequence[float]) -> list[list[float]]:
    """Asymmetric error bars (below, above) of accuracies in %, so that y - below >= 0 and y + above <= 100."""
    return [[min(h, max(0.0, y)) for y, h in zip(ys, halves)], [min(h, max(0.0, 100.0 - y)) for y, h in zip(ys, halves)]]


def dash_few(container: Any, ns: Sequence[int]) -> set[int]:
    """Dash the error bars of an errorbar container whose points have fewer than MIN_SEEDS seeds; the
    seed counts below MIN_SEEDS among `ns` (for few_note)."""
    few = [n < MIN_SEEDS for n in ns]
    for bars in container.lines[2]:
        bars.set_linestyles(["--" if f else "-" for f in few])
        bars.set_alpha(0.7)  # bars of points at the same x stay visible through each other
    return {n for n in ns if n < MIN_SEEDS}


def few_note(fig: Any, few: set[int], *, interval: bool = True) -> None:
    """The figure's footnote (bottom left) on its points from fewer than MIN_SEEDS seeds (`few`: their
    seed counts, from dash_few): dashed bars (2 seeds; `interval`: the bars are 95% intervals, else
    ± 1 std), no bar (one seed); nothing when `few` is empty."""
    import textwrap

    if not few:
        return
    dashed = FEW_FIGURE_NOTE if interval else FEW_STD_NOTE
    text = " ".join([*([dashed] if few - {1} else []), *([ONE_SEED_NOTE] if 1 in few else []), CLIP_NOTE])
    width = max(60, int(fig.get_size_inches()[0] * 72 / 3.8))  # about 3.8 points a character at 7 points
    fig.supxlabel(textwrap.fill(text, width), x=0.01, ha="left", fontsize=7)


def bar_ends(ys: Sequence[float], halves: Sequence[float], ns: Sequence[int], *, hold: int = MIN_SEEDS) -> list[float]:
    """The ends of the error bars (clipped to 0-100) from `hold` seeds or more: an accuracy axis holds them
    (accuracy_limits' values). hold = MIN_SEEDS for 95% intervals: a very wide one from fewer seeds may
    run out of the panel; hold = 1 for ± 1 std bars (never wider than the data's spread)."""
    return [e for y, h, n in zip(ys, halves, ns) if n >= hold for e in (max(0.0, y - h), min(100.0, y + h))]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, with the report's font size and grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def panels_of(rows: Sequence[Row]) -> list[tuple[str, str]]:
    return sorted({(str(r.k["dataset"]), str(r.k["model"])) for r in rows})


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
        return f"target ε = {r.k['target_epsilon']:g}"
    return f"σ = {r.k['sigma']:g}" if r.k["sigma"] is not None else ""


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


# Mantissas of the ticks of a log axis under a decade, coarse to fine (log_ticks takes the first with 4 ticks).
TICK_TIERS = ((1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
              (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))


def log_ticks(lo: float, hi: float) -> list[float]:
    """Round tick values (a tier's mantissa x 10^k) inside [lo, hi], 0 < lo < hi: the coarsest tier of
    TICK_TIERS that puts 4 ticks there (else the finest tier's), so every point has a labelled tick near
    it on either side of 1 (0.5, 1, 2 rather than 1, 2 only)."""
    ks = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for tier in TICK_TIERS:
        ticks = sorted({float(f"{m * 10.0**k:.12g}") for k in ks for m in tier if lo <= m * 10.0**k <= hi})
        if len(ticks) >= 4:
            break
    return ticks


def log_axis(axis: Any, values: Sequence[float], *, marks: Sequence[float] = ()) -> None:
    """A log x axis around `values` (the points and the ends of their bars) whose ticks are labelled
    plainly (2, 3, 4 rather than 10^0.5), even when the data span less than a decade (then log_ticks);
    `marks` (the target ε of a sweep) get a tick each, and round ticks within 15% of one are dropped."""
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
        ticks = log_ticks(lo / pad, hi * pad)
        if len(ticks) < 2:  # a very narrow range: linear steps
            ticks = [t for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo / pad, hi * pad)
                     if lo / pad <= t <= hi * pad]
        ticks = ticks if len(ticks) >= 2 else sorted({lo, hi})
        inside = [m for m in marks if lo / pad <= m <= hi * pad]
        ticks = sorted({*inside, *(t for t in ticks if all(abs(math.log(t / m)) > math.log(1.15) for m in inside))})
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(NullLocator())
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0) if hi / lo < 100 else (1.0, 2.0, 5.0)))
        axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def figure(plt: Any, nrows: int, ncols: int, panel: tuple[float, float], **kw: Any) -> tuple[Any, Any]:
    size = (max(MIN_SIZE[0], panel[0] * ncols), max(MIN_SIZE[1], panel[1] * nrows))
    return plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained", **kw)


def legend(fig: Any, title: str | None = None) -> None:
    """One legend for the figure, outside the panels (right), one entry per label."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=8, title=title, title_fontsize=8)


COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def style(name: str) -> tuple[str, str]:
    """Colour and marker of a line or point, by the method its label starts with (its place in the
    method registry: full blue circles, random orange squares, craig green triangles, ...; unknown grey)."""
    rank = method_rank(name.split(" ")[0])
    if rank >= len(COLOURS) or name.split(" ")[0] not in methods.names():
        return "#7f7f7f", "D"
    return COLOURS[rank], MARKERS[rank]


def acc_pct(r: Row, error: Callable[[Stat | None], float]) -> tuple[float, float]:
    """A row's mean test accuracy and its error bar, in %."""
    return 100 * r.stats["test_acc"].mean, 100 * error(r.stats["test_acc"])  # type: ignore[union-attr]


LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h")


def level_markers(rows: Sequence[Row]) -> dict[tuple[int, float, float], str]:
    """The marker of each privacy level of `rows` (_level; in its order): σ levels first, then target
    levels, then non-DP. acc_vs_eps.png and acc_vs_time.png share it, so a σ has one marker in both."""
    levels = sorted({_level(r) for r in rows})
    return {level: LEVEL_MARKERS[i % len(LEVEL_MARKERS)] for i, level in enumerate(levels)}


DODGE_STEP = 0.04  # ln(ε) between the series at one target (4%): a marker's width apart on a panel's axis
DODGE_NOTE = ";\nthe points at one target are set slightly apart"  # short: the x label's width is the panel's


def dodge(names: Sequence[str]) -> dict[str, float]:
    """x factor of each series at a target ε: spread evenly around 1 in log, DODGE_STEP apart (closer
    with many series: the spread stays within log_axis' 15% margin), in the given order."""
    if len(names) < 2:
        return {name: 1.0 for name in names}
    step = min(DODGE_STEP, math.log(1.15) / (len(names) - 1))
    return {name: math.exp(step * (i - (len(names) - 1) / 2)) for i, name in enumerate(names)}


def draw_acc_vs_eps(ax: Any, rows: Sequence[Row], axes_cols: Sequence[str], *, error: Callable[[Stat | None], float],
                    hold: int = MIN_SEEDS, markers: dict[tuple[int, float, float], str] | None = None) -> set[int]:
    """One panel of test accuracy vs the achieved epsilon_total: a line per series of DP rows (_series
    over `axes_cols`; colour: the series' method), error bars `error(test_acc stat)` clipped to 0-100
    (dashed below MIN_SEEDS seeds); non-private rows as dashed horizontal lines. A point set by a target
    epsilon has its method's marker (the target is where it sits on the x axis); a point set by σ has
    its σ's marker (`markers`, level_markers of the figure's rows; default: of `rows`), and the legend
    says which σ each marker is: no text on the points, which would fall on other points, on each other
    and on the bars at any grid. Points set by a target all sit at it: each series' are drawn a little
    aside (dodge, the x label says so) so that their bars do not cover each other, and each target gets
    an x tick. The y range: the means, their seed std and the bars from `hold` seeds or more (bar_ends,
    accuracy_limits). Returns the seed counts below MIN_SEEDS (for few_note)."""
    rows = [r for r in rows if r.stats["test_acc"]]
    markers = level_markers(rows) if markers is None else markers
    xs_all, ys, sds, ends = [], [], [], []
    few: set[int] = set()
    sigma_levels: dict[tuple[int, float, float], str] = {}
    drawn = {name: [r for r in series if r.stats["eps_total"] and math.isfinite(r.stats["eps_total"].mean)]
             for name, series in _series(rows, axes_cols).items()}
    factors = dodge([name for name, series in drawn.items() if any(r.k["target_epsilon"] is not None for r in series)])
    for name, series in drawn.items():
        if not series:
            continue
        series.sort(key=lambda r: r.stats["eps_total"].mean)  # type: ignore[union-attr]
        c, m = style(name)
        x = [r.stats["eps_total"].mean for r in series]  # type: ignore[union-attr]
        y, bar = zip(*(acc_pct(r, error) for r in series))
        by_target = all(r.k["target_epsilon"] is not None for r in series)
        xs_all += x
        x = [xi * (factors.get(name, 1.0) if r.k["target_epsilon"] is not None else 1.0) for xi, r in zip(x, series)]
        ax.plot(x, y, color=c, marker=m if by_target else "", ms=6, label=f"{name} (DP)")  # the legend's entry first
        eb = ax.errorbar(x, y, yerr=clipped_yerr(y, bar), color=c, capsize=3, ls="none", label=f"{name} (DP)")  # legend: the line's
        ns = [r.stats["test_acc"].n for r in series]  # type: ignore[union-attr]
        few |= dash_few(eb, ns)
        ends += bar_ends(y, bar, ns, hold=hold)
        for xi, yi, r in zip(x, y, series):
            by_sigma = r.k["target_epsilon"] is None
            if by_sigma:
                sigma_levels.setdefault(_level(r), _point_label(r))
            ax.plot([xi], [yi], ls="none", color=c, marker=markers[_level(r)] if by_sigma else m, ms=7 if by_sigma else 6)
        ys += y
        sds += [_acc(r)[1] for r in series]
    for level in sorted(sigma_levels):  # legend entries (no data): which σ a marker stands for
        ax.plot([], [], ls="none", marker=markers[level], color="#444444", ms=7, label=sigma_levels[level])
    for r in rows:
        if not r.k["dp"]:
            c, _ = style(str(r.k["method"]))
            y, sd = _acc(r)
            ax.axhline(y, color=c, ls="--", lw=1, label=f"{r.k['method']}{extra_label(r, axes_cols)} non-DP (ε = ∞)")
            ys.append(y)
            sds.append(sd)
    log_axis(ax.xaxis, xs_all, marks=sorted({r.k["target_epsilon"] for r in rows if r.k["target_epsilon"] is not None}))
    if ys:
        ax.set_ylim(*accuracy_limits(ys + ends, sds))
    delta = float(rows[0].runs[0].config.get("delta", 1e-5)) if rows else 1e-5
    ax.set_xlabel(f"achieved ε_total (selection + training) at δ = {delta:g}, log scale"
                  + (DODGE_NOTE if len(factors) > 1 else ""))
    ax.set_ylabel("test accuracy (%)")
    return few


def figures(plt: Any, rows: Sequence[Row]) -> dict[str, Any]:
    """file name -> matplotlib Figure of each plot (the caller saves and closes them)."""
    draw = {PLOTS[0]: acc_vs_eps_figure, PLOTS[1]: acc_vs_time_figure, PLOTS[2]: acc_per_epoch_figure,
            DIAGNOSTICS_PLOT: diagnostics_figure, SPARSITY_PLOT: sparsity_figure}
    return {name: draw[name](plt, rows) for name in figure_names(rows)}


def _in_panel(r: Row, panel: tuple[str, str]) -> bool:
    return (str(r.k["dataset"]), str(r.k["model"])) == panel


def _acc(r: Row) -> tuple[float, float]:
    return acc_pct(r, std_or_0)


def _side_by_side(plt: Any, rows: Sequence[Row]) -> tuple[Any, list[tuple[Any, tuple[str, str], list[Row]]]]:
    """A figure of one panel per (dataset, model), side by side, and (axes, panel, its rows) of each."""
    panels = panels_of(rows)
    fig, axs = figure(plt, 1, len(panels), (6.0, 4.2))
    return fig, [(ax, panel, [r for r in rows if _in_panel(r, panel)]) for ax, panel in zip(axs[0], panels)]


def acc_vs_eps_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Test accuracy vs epsilon_total: a panel per (dataset, model), bars ± 1 seed std."""
    axes_cols = varying_axes(rows)
    markers = level_markers(rows)
    fig, panels = _side_by_side(plt, rows)
    few: set[int] = set()
    for ax, panel, here in panels:
        few |= draw_acc_vs_eps(ax, here, axes_cols, error=std_or_0, hold=1, markers=markers)
        ax.set_title(f"{panel[0]}, {panel[1]}")
    fig.suptitle("Test accuracy vs privacy (bars: ± 1 std over seeds)", fontsize=10, x=0.01, ha="left")
    legend(fig, "colour: method; marker: σ")
    few_note(fig, few, interval=False)
    return fig


def acc_vs_time_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Test accuracy vs wall time: a panel per (dataset, model), a point per row, bars ± 1 seed std.
    Colour: the method (+ extra axes); marker: the privacy level (hollow: non-DP); no text on the
    points (it would sit under the error bars): a legend of colours and one of markers."""
    from matplotlib.lines import Line2D

    axes_cols = varying_axes(rows)
    levels = sorted({_level(r) for r in rows})
    marker_of = level_markers(rows)
    level_text: dict[tuple[int, float, float], str] = {}
    colours: dict[str, str] = {}
    few: set[int] = set()
    fig, panels = _side_by_side(plt, rows)
    for ax, panel, here in panels:
        prow = [r for r in here if r.stats["total_time_s"] and r.stats["test_acc"]]
        for r in prow:
            name = f"{r.k['method']}{extra_label(r, axes_cols)}"
            c, _ = style(name)
            colours.setdefault(name, c)
            level = _level(r)
            level_text.setdefault(level, _point_label(r) if r.k["dp"] else "non-DP")
            y, sd = _acc(r)
            t = r.stats["total_time_s"]
            eb = ax.errorbar(t.mean, y, xerr=std_or_0(t), yerr=clipped_yerr([y], [sd]), color=c, marker=marker_of[level],  # type: ignore[union-attr]
                             mfc=c if r.k["dp"] else "white", ms=7, capsize=3, ls="none", alpha=0.9)
            few |= dash_few(eb, [r.stats["test_acc"].n])  # type: ignore[union-attr]
        times = [r.stats["total_time_s"] for r in prow]
        log_axis(ax.xaxis, [t.mean + d * std_or_0(t) for t in times for d in (-1, 0, 1)])  # type: ignore[union-attr]  # the ± 1 std bars too
        if prow:
            ys, sds = [_acc(r)[0] for r in prow], [_acc(r)[1] for r in prow]
            ends = bar_ends(ys, sds, [r.stats["test_acc"].n for r in prow], hold=1)  # type: ignore[union-attr]
            ax.set_ylim(*accuracy_limits(ys + ends, sds))
        ax.set_xlabel("wall time per run (s), log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{panel[0]}, {panel[1]}")
    fig.suptitle("Test accuracy vs wall time (bars: ± 1 std over seeds)", fontsize=10, x=0.01, ha="left")
    handles = [Line2D([], [], color=c, lw=3, label=name) for name, c in colours.items()]
    handles += [Line2D([], [], ls="none", marker=marker_of[level], color="#444444", mfc="white" if level[0] else "#444444",
                       ms=7, label=level_text[level]) for level in levels if level in level_text]
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="colour: method; marker: privacy",
                   title_fontsize=8)
    few_note(fig, few, interval=False)
    return fig


EPOCH_COLUMNS = 3  # panels a line in acc_per_epoch.png: more privacy levels wrap onto further lines


def acc_per_epoch_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Test accuracy after each epoch: a panel per (dataset, model) x privacy level, a line per row. The
    levels of a (dataset, model) fill lines of EPOCH_COLUMNS panels (a σ grid stays readable, not one
    strip of tiny panels) that share one accuracy range."""
    from matplotlib.ticker import MaxNLocator

    axes_cols = varying_axes(rows)
    panels = panels_of(rows)
    levels = sorted({_level(r) for r in rows})
    ncols = min(EPOCH_COLUMNS, len(levels))
    lines = -(-len(levels) // ncols)  # figure rows per (dataset, model)
    fig, axs = figure(plt, len(panels) * lines, ncols, (3.8, 3.2))
    for i, panel in enumerate(panels):
        values, sds = [], []
        block = [axs[i * lines + j // ncols][j % ncols] for j in range(lines * ncols)]
        for j, level in enumerate(levels):
            ax = block[j]
            title = ""
            for r in rows:
                if not _in_panel(r, panel) or _level(r) != level:
                    continue
                title = f"DP, {_point_label(r)}" if r.k["dp"] and _point_label(r) else privacy_label(r.k)
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
                    ax.fill_between(xs, [max(0.0, a - b) for a, b in zip(mean, sd)], [min(100.0, a + b) for a, b in zip(mean, sd)],
                                    color=c, alpha=0.15)
                values += mean + [max(0.0, a - b) for a, b in zip(mean, sd)] + [min(100.0, a + b) for a, b in zip(mean, sd)]
                sds += sd
            ax.set_title(f"{panel[0]}, {panel[1]}, {title}")
            ax.set_xlabel("epoch (passes over the training set)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            lo, hi = ax.get_xlim()
            ax.set_xlim(min(lo, 0.5), max(hi, 1.5))  # one epoch: a readable axis around it, not 0.95..1.05
            if j % ncols == 0:
                ax.set_ylabel("test accuracy (%)")
        for ax in block[len(levels):]:
            ax.set_visible(False)
        if values:
            for ax in block[:len(levels)]:  # one range for the levels of a (dataset, model)
                ax.set_ylim(*accuracy_limits(values, sds))
    fig.suptitle("Test accuracy after each epoch\n(mean over seeds; band: ± 1 std, clipped to 0-100 %)", fontsize=10,
                 x=0.01, ha="left")  # two short lines: clear of the legend when there is one panel
    legend(fig)
    return fig


# A diagnostic's panel title in words and its unit (crepe.dp.diagnostics); others read as their key.
DIAGNOSTIC_TITLES = {
    "frac_clipped": ("Examples clipped", "share of the probe (0-1)"),
    "clip_bias": ("Clipping bias |c̄ − ḡ| / |ḡ|", "ratio (no unit)"),
    "clip_cos": ("Cosine, clipped vs true mean gradient", "cosine (−1 to 1)"),
    "snr": ("Signal-to-noise |c̄| / noise norm", "ratio (no unit)"),
    "grad_norm_q10": ("Per-example gradient norm, 10th percentile", "L2 norm"),
    "grad_norm_q50": ("Per-example gradient norm, median", "L2 norm"),
    "grad_norm_q90": ("Per-example gradient norm, 90th percentile", "L2 norm"),
    "clip_norm": ("Clipping norm C", "L2 norm"),
}


def diagnostic_title(key: str) -> tuple[str, str]:
    """(panel title, y-axis unit) of a diagnostic."""
    return DIAGNOSTIC_TITLES.get(key, (key.replace("_", " "), "value"))


def _diagnostic_keys(rows: Sequence[Row]) -> list[str]:
    """The scalar diagnostics any run recorded, in first-seen order."""
    keys: dict[str, None] = {}
    for r in rows:
        for run in r.runs:
            for m in run.metrics:
                for k, v in (m.get("diagnostics") or {}).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        keys.setdefault(k)
    return list(keys)


def _diagnostic_curve(r: Row, key: str) -> tuple[list[int], list[float], list[float], list[float]] | None:
    """Epochs, mean over seeds, min and max over seeds of one diagnostic of a row (the epochs every seed has)."""
    per_run = []
    for run in r.runs:
        points = {int(m.get("epoch", e + 1)): float(m["diagnostics"][key]) for e, m in enumerate(run.metrics)
                  if isinstance((m.get("diagnostics") or {}).get(key), (int, float))}
        if points:
            per_run.append(points)
    if not per_run:
        return None
    epochs = sorted(set.intersection(*(set(p) for p in per_run)))
    if not epochs:
        return None
    vals = [[p[e] for p in per_run] for e in epochs]
    return epochs, [statistics.fmean(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def diagnostics_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """One panel per scalar diagnostic over epochs (title in words, y label its unit), one line per row:
    the mean over its seeds, a band from the lowest to the highest seed. As in the other figures, the
    colour is the method and the marker the privacy level (level_markers), when these tell every row
    apart (one dataset and model, no other varying axis); else each row has a colour and marker of its
    own. Markers are hollow and grow with the colour's index, so lines that coincide (a constant
    diagnostic) stay visible as a stack of rings. None when no run has diagnostics."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    metrics = _diagnostic_keys(rows)
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axs = figure(plt, nrows, ncols, (3.8, 2.9), sharex=True)
    axes_cols = varying_axes(rows)
    marker_of = level_markers(rows)  # of all rows: a level's marker as in the other figures
    rows = [r for r in rows if any(_diagnostic_curve(r, k) for k in metrics)]  # the rows drawn (and in the legend)
    cmap = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    names = [f"{r.k['method']}{extra_label(r, axes_cols)}" for r in rows]
    ranks = {name: i for i, name in enumerate(dict.fromkeys(names))}
    by_method = (len(panels_of(rows)) == 1 and all(name == r.k["method"] for name, r in zip(names, rows))
                 and len({(name, _level(r)) for name, r in zip(names, rows)}) == len(rows))
    for ax, metric in zip(axs.flat, metrics):
        drawn: set[tuple[tuple[int, ...], tuple[float, ...]]] = set()
        n_lines = 0
        for i, r in enumerate(rows):
            curve = _diagnostic_curve(r, metric)
            if curve is None:
                continue
            epochs, mean, low, high = curve
            drawn.add((tuple(epochs), tuple(round(v, 9) for v in mean)))
            n_lines += 1
            if by_method:
                c, marker, ms = style(names[i])[0], marker_of[_level(r)], 4 + 2 * (ranks[names[i]] % 4)
            else:
                c, marker, ms = cmap(i % cmap.N), LEVEL_MARKERS[i % len(LEVEL_MARKERS)], 4 + (i % 3)
            ax.plot(epochs, mean, color=c, marker=marker, mfc="none", ms=ms, lw=1.2, alpha=0.85,
                    label=f"{row_label(r.k)}{extra_label(r, axes_cols)}")
            if len(r.runs) > 1 and any(h > lo for lo, h in zip(low, high)):
                ax.fill_between(epochs, low, high, color=c, alpha=0.12)
        if len(drawn) < n_lines:  # say so, rather than let a line hide under another
            ax.text(0.02, 0.03, f"{n_lines} lines, {len(drawn)} distinct: equal ones drawn over each other",
                    transform=ax.transAxes, fontsize=6, color="#444444")
        title, unit = diagnostic_title(metric)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for ax in list(axs.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("Clipping diagnostics per epoch, on a probe of training examples: not covered by ε\n"
                 "(a line per row: mean over seeds; band: lowest to highest seed)", fontsize=10, x=0.01, ha="left")  # left: the legend sits at the upper right
    if by_method:
        handles = [Line2D([], [], color=style(name)[0], lw=3, label=name) for name in ranks]
        handles += [Line2D([], [], ls="none", marker=marker_of[level], color="#444444", mfc="none", ms=7,
                           label=_point_label(r) if r.k["dp"] else "non-DP")
                    for level, r in sorted({_level(r): r for r in rows}.items())]
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="colour: method; marker: privacy",
                   title_fontsize=8)
    else:
        legend(fig)
    return fig


def _last_noise_to_signal(run: Any) -> float | None:
    values = [m.get("noise_to_signal") for m in run.metrics]
    return next((v for v in reversed(values) if v is not None), None)


def sparsity_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Accuracy and noise-to-signal against sparsity: a column per (dataset, model)."""
    panels = panels_of(rows)
    fig, axs = figure(plt, 2, len(panels), (6.0, 3.6))
    for col, panel in enumerate(panels):
        here = [r for r in rows if _in_panel(r, panel)]
        lines: dict[tuple[str, str], list[Row]] = {}
        for r in here:
            lines.setdefault((str(r.k["method"]), privacy_label(r.k)), []).append(r)
        for (method, level), line in sorted(lines.items()):
            line.sort(key=lambda r: r.k.get("sparsity", 0.0))
            xs = [100 * r.k.get("sparsity", 0.0) for r in line]
            accs = [acc_pct(r, std_or_0) for r in line]
            colour, marker = style(method)
            label = f"{method}, {level}"
            axs[0][col].errorbar(xs, [a for a, _ in accs], yerr=[e for _, e in accs], color=colour, marker=marker,
                                 capsize=3, label=label)
            ratios = [[v for v in (_last_noise_to_signal(run) for run in r.runs) if v is not None] for r in line]
            pts = [(x, statistics.fmean(v)) for x, v in zip(xs, ratios) if v]
            if pts:
                axs[1][col].plot([x for x, _ in pts], [y for _, y in pts], color=colour, marker=marker, label=label)
        axs[0][col].set_title(f"{panel[0]}, {panel[1]}")
        axs[0][col].set_ylabel("test accuracy (%)")
        axs[1][col].set_ylabel("noise-to-signal, last epoch\n(σC√d_eff / |clipped sum|; not covered by ε)")
        axs[1][col].set_xlabel("sparsity (% of conv and linear weights pruned)")
    fig.suptitle("Accuracy and noise-to-signal vs sparsity (bars: ± 1 std)", fontsize=10,
                 x=0.01, ha="left")
    legend(fig, "method, privacy")
    return fig
