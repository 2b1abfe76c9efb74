"""The figures of a report (matplotlib, Agg backend: no display needed), one function each.

    acc_vs_eps.png     test accuracy vs epsilon_total
    acc_vs_time.png    test accuracy vs wall time
    acc_per_epoch.png  test accuracy per epoch
    diagnostics.png    clipping diagnostics per epoch (runs with --diagnostics only)

and the pieces the verdict's figures share (a panel of accuracy vs epsilon, axes,
legend, styles). Plots keep differences in proportion: an accuracy axis spans at least
MIN_SPAN points and 4 x the largest seed std, so a gap smaller than the seed
noise never fills the panel (the full 0-100 range would instead flatten real
gaps of a few points); ε and time axes are logarithmic with labelled ticks.
matplotlib is imported only when a figure is drawn (pyplot).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from crepe.smallsets import methods
from crepe.study.results import Row, method_rank, Stat, extra_label, privacy_label, row_label, varying_axes

PLOTS = ("acc_vs_eps.png", "acc_vs_time.png", "acc_per_epoch.png")
DIAGNOSTICS_PLOT = "diagnostics.png"
MIN_SPAN = 5.0  # accuracy points: the narrowest y-range of an accuracy plot
MIN_SIZE = (6.4, 4.0)  # inches: the smallest figure (titles and labels fit)


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


def figures(plt: Any, rows: Sequence[Row]) -> dict[str, Any]:
    """file name -> matplotlib Figure of each plot (the caller saves and closes them)."""
    figs = {PLOTS[0]: acc_vs_eps_figure(plt, rows), PLOTS[1]: acc_vs_time_figure(plt, rows),
            PLOTS[2]: acc_per_epoch_figure(plt, rows)}
    diag = diagnostics_figure(plt, rows)
    if diag is not None:
        figs[DIAGNOSTICS_PLOT] = diag
    return figs


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
    """Test accuracy vs epsilon_total: a panel per (dataset, model)."""
    axes_cols = varying_axes(rows)
    fig, panels = _side_by_side(plt, rows)
    for ax, panel, here in panels:
        draw_acc_vs_eps(ax, here, axes_cols, error=std_or_0)
        ax.set_title(f"Test accuracy vs privacy: {panel[0]}, {panel[1]}")
    legend(fig)
    return fig


def acc_vs_time_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Test accuracy vs wall time: a panel per (dataset, model), a point per row (hollow: non-DP)."""
    axes_cols = varying_axes(rows)
    levels = sorted({_level(r) for r in rows})
    fig, panels = _side_by_side(plt, rows)
    for ax, panel, here in panels:
        prow = [r for r in here if r.stats["total_time_s"] and r.stats["test_acc"]]
        for r in prow:
            name = f"{r.k['method']}{extra_label(r, axes_cols)}"
            c, m = style(name)
            filled = bool(r.k["dp"])
            y, sd = _acc(r)
            t = r.stats["total_time_s"]
            ax.errorbar(t.mean, y, xerr=std_or_0(t), yerr=sd, color=c, marker=m, mfc=c if filled else "white", ms=7, capsize=3,  # type: ignore[union-attr]
                        ls="none", label=f"{name} ({'DP' if filled else 'non-DP'})")
            ax.annotate(_point_label(r) if filled else "non-DP", (t.mean, y), textcoords="offset points",  # type: ignore[union-attr]
                        xytext=(6, -3 + 8 * (levels.index(_level(r)) % 2)), fontsize=7, color=c)
        log_axis(ax.xaxis, [r.stats["total_time_s"].mean for r in prow])  # type: ignore[union-attr]
        if prow:
            ax.set_ylim(*accuracy_limits([_acc(r)[0] for r in prow], [_acc(r)[1] for r in prow]))
        ax.set_xlabel("wall time per run (s), log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Test accuracy vs wall time: {panel[0]}, {panel[1]}")
    legend(fig)
    return fig


def acc_per_epoch_figure(plt: Any, rows: Sequence[Row]) -> Any:
    """Test accuracy after each epoch: a panel per (dataset, model) x privacy level, a line per row."""
    from matplotlib.ticker import MaxNLocator

    axes_cols = varying_axes(rows)
    panels = panels_of(rows)
    levels = sorted({_level(r) for r in rows})
    fig, axs = figure(plt, len(panels), len(levels), (3.8, 3.2), sharey="row")
    for i, panel in enumerate(panels):
        values, sds = [], []
        for j, level in enumerate(levels):
            ax = axs[i][j]
            title = ""
            for r in rows:
                if not _in_panel(r, panel) or _level(r) != level:
                    continue
                title = privacy_label(r.k)
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
    return fig


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
                            label=f"{row_label(r.k)}{extra_label(r, varying_axes(rows))} seed {run.config.get('seed', 0)}")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
    for ax in list(axs.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("Clipping diagnostics per epoch, on a probe of training examples: not covered by ε", fontsize=10,
                 x=0.01, ha="left")  # left: the legend sits at the upper right
    legend(fig)
    return fig
