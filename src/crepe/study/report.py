"""`crepe report`: tables and plots of a sweep's runs (accuracy, time, privacy).

Reads every run directory under SWEEP_DIR (a folder with config.json; finished
runs have summary.json with status "complete" and metrics.jsonl), groups runs
that differ only in their seed, and writes

    OUT/results.md         Markdown table: mean +- std over seeds
    OUT/results.csv        the same numbers, machine-readable
    OUT/acc_vs_eps.png     test accuracy vs epsilon_total
    OUT/acc_vs_time.png    test accuracy vs wall time
    OUT/acc_per_epoch.png  test accuracy per epoch

A report compares runs of one protocol: settings that are not a column of the
table (epochs, batch size, subsets, ...) must agree across all runs, or the
report stops with an error naming the setting and the runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crepe.config import UsageError
from crepe.training import rundir

# Settings that may differ between runs without changing what is compared.
IGNORED = ("seed", "data_dir", "threads")
# Settings that make rows (a column of the table when they vary across the sweep).
AXES = ("dataset", "model", "method", "dp", "sigma", "fraction", "proxy", "weights", "selection_scope")
# Always columns.
SHOWN = ("model", "method", "dp", "sigma")
# Derived from an axis (select_sigma defaults to sigma): must agree within a row only.
PER_ROW = ("select_sigma",)
METHOD_ORDER = {"full": 0, "random": 1, "craig": 2}
METHOD_STYLE = {  # colour, marker
    "full": ("#1f77b4", "o"),
    "random": ("#ff7f0e", "s"),
    "craig": ("#2ca02c", "^"),
}
PLOTS = ("acc_vs_eps.png", "acc_vs_time.png", "acc_per_epoch.png")


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (std None for one seed)."""

    mean: float
    std: float | None
    n: int

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


SUMMARY_FIELDS = ("test_acc", "train_acc", "eps_total", "eps_select", "eps_train", "select_time_s", "train_time_s", "total_time_s")


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
        raise ValueError(f"{sweep_dir} is not a directory")
    runs: list[Run] = []
    skipped: list[str] = []
    dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())
    if (sweep_dir / "config.json").is_file():
        dirs = [sweep_dir]  # a single run directory reports as a one-run sweep
    if not dirs:
        raise ValueError(
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
        raise ValueError(f"no complete runs in {sweep_dir} ({len(skipped)} incomplete: {'; '.join(skipped[:5])})")
    return runs, skipped


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _axis_key(run: Run) -> tuple[tuple[str, Any], ...]:
    c = run.config
    key = []
    for axis in AXES:
        v = _norm(c.get(axis))
        if axis == "sigma" and c.get("dp") is False:
            v = None  # non-private: sigma is not used
        if axis in ("fraction", "proxy", "weights", "selection_scope") and c.get("method") == "full":
            v = None  # full-data runs select nothing
        key.append((axis, v))
    return tuple(key)


def _by(runs: Sequence[Run], key: str) -> dict[Any, list[str]]:
    out: dict[Any, list[str]] = {}
    for r in runs:
        out.setdefault(_norm(r.config.get(key)), []).append(r.name)
    return out


def _mismatch(key: str, runs: Sequence[Run], where: str) -> ValueError:
    parts = [f"{v!r} in {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for v, names in _by(runs, key).items()]
    return ValueError(
        f"runs with mismatched settings {where}: {key} is " + "; ".join(parts)
        + ". A report compares runs of one protocol: report them from separate sweep directories"
    )


def check_consistent(runs: Sequence[Run]) -> None:
    """Settings that are not table columns must agree; raise ValueError naming them."""
    keys = sorted(set().union(*(r.config.keys() for r in runs)))
    protocol = [k for k in keys if k not in IGNORED and k not in AXES and k not in PER_ROW]
    for k in protocol:
        if len(_by(runs, k)) > 1:
            raise _mismatch(k, runs, "across the sweep")
    groups: dict[Any, list[Run]] = {}
    for r in runs:
        groups.setdefault(_axis_key(r), []).append(r)
    for group in groups.values():
        for k in PER_ROW:
            if len(_by(group, k)) > 1:
                raise _mismatch(k, group, f"within one row ({_label(dict(_axis_key(group[0])))})")
        seeds = _by(group, "seed")
        dup = [names for names in seeds.values() if len(names) > 1]
        if dup:
            raise ValueError(f"runs {', '.join(dup[0])} have the same settings and the same seed: remove one")


# ---------------------------------------------------------------------------
# Aggregation.


def _label(k: dict[str, Any]) -> str:
    priv = f"DP sigma={k['sigma']:g}" if k.get("dp") else "non-DP"
    return f"{k.get('model')} {k.get('method')} {priv}"


def _sort_key(row_key: tuple[tuple[str, Any], ...]) -> tuple[Any, ...]:
    k = dict(row_key)
    return (
        str(k.get("dataset")),
        str(k.get("model")),
        0 if k.get("dp") else 1,
        k.get("sigma") or 0.0,
        METHOD_ORDER.get(str(k.get("method")), 9),
        tuple(str(k.get(a)) for a in AXES if a not in ("dataset", "model", "dp", "sigma", "method")),
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
        k = dict(key)
        ref_key = tuple((a, ("full" if a == "method" else (None if a in ("fraction", "proxy", "weights", "selection_scope") else v)))
                        for a, v in key)
        speedup = None
        ref, mine = stats.get(ref_key, {}).get("total_time_s"), stats[key].get("total_time_s")
        if ref is not None and mine is not None and mine.mean > 0:
            speedup = ref.mean / mine.mean
        del k
        rows.append(Row(key, tuple(sorted(groups[key], key=lambda r: int(r.config.get("seed", 0)))), stats[key], speedup))
    return rows


def varying_axes(rows: Sequence[Row]) -> list[str]:
    """Axes shown as columns: the always-shown ones plus any that vary across rows."""
    out = []
    for a in AXES:
        values = {r.k[a] for r in rows if r.k[a] is not None}
        if a in SHOWN or len(values) > 1:
            out.append(a)
    return out


# ---------------------------------------------------------------------------
# Table and CSV.


def _pm(s: Stat | None, *, scale: float = 1.0, digits: int = 2) -> str:
    if s is None:
        return "n/a"
    if math.isinf(s.mean):
        return "∞"
    text = f"{s.mean * scale:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std * scale:.{digits}f}"
    return text


def _eps_cell(r: Row) -> str:
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


def _axis_cell(a: str, v: Any) -> str:
    if a == "dp":
        return "DP" if v else "non-DP"
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


AXIS_TITLES = {"dataset": "dataset", "model": "model", "method": "method", "dp": "privacy", "sigma": "σ",
               "fraction": "fraction", "proxy": "proxy", "weights": "weights", "selection_scope": "selection scope"}


def markdown(rows: Sequence[Row], runs: Sequence[Run], skipped: Sequence[str]) -> str:
    axes = varying_axes(rows)
    cfg = runs[0].config
    protocol_bits = [f"{k}={cfg[k]}" for k in ("dataset", "epochs", "select_every", "fraction", "batch_size", "lr", "optimizer",
                                                "max_grad_norm", "delta", "accountant", "train_subset", "test_subset")
                     if k in cfg and k not in axes]
    head = [AXIS_TITLES[a] for a in axes] + [
        "seeds", "test acc (%)", "train acc (%)", "ε_total (ε_select / ε_train)", "select (s)", "train (s)", "total (s)",
        "speed-up vs full"]
    lines = [
        "# crepe sweep report",
        "",
        f"{len(runs)} complete runs; mean ± sample std over seeds. Protocol: {', '.join(protocol_bits)}.",
        "Times are wall-clock seconds per run as `crepe train` measures them: selection rounds, training epochs, and "
        "the whole run (selection + training + evaluation; process start-up and data loading excluded). "
        "Speed-up = total time of the full-data run with the same model, dataset and σ (or non-DP) / this row's.",
        f"ε at δ = {cfg.get('delta', 1e-5):g}, zero-out adjacency: ε_total composes the selection rounds and the "
        "DP-SGD steps in one accountant; ε_select and ε_train are each part alone (their sum overstates ε_total). "
        "Per-class selection reads the true labels: its ε holds with labels treated as public.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in rows:
        cells = [_axis_cell(a, r.k[a]) for a in axes] + [
            str(len(r.runs)),
            _pm(r.stats["test_acc"], scale=100),
            _pm(r.stats["train_acc"], scale=100),
            _eps_cell(r),
            _pm(r.stats["select_time_s"], digits=1),
            _pm(r.stats["train_time_s"], digits=1),
            _pm(r.stats["total_time_s"], digits=1),
            "n/a" if r.speedup is None else f"{r.speedup:.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", f"Left out ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("n_seeds", "seeds") + tuple(
    f"{f}_{s}" for f in SUMMARY_FIELDS for s in ("mean", "std")) + ("speedup_vs_full",)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(AXES) + list(CSV_FIELDS))
        for r in rows:
            vals: list[Any] = ["" if r.k[a] is None else r.k[a] for a in AXES]
            vals += [len(r.runs), " ".join(map(str, r.seeds))]
            for f in SUMMARY_FIELDS:
                s = r.stats[f]
                vals += ["" if s is None else ("inf" if math.isinf(s.mean) else f"{s.mean:.6g}"),
                         "" if s is None or s.std is None else f"{s.std:.6g}"]
            vals.append("" if r.speedup is None else f"{r.speedup:.4g}")
            w.writerow(vals)


# ---------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: no display needed).


def _panels(rows: Sequence[Row]) -> list[tuple[str, str]]:
    return sorted({(str(r.k["dataset"]), str(r.k["model"])) for r in rows})


def _extra_label(r: Row, axes: Sequence[str]) -> str:
    bits = [f"{AXIS_TITLES[a]}={_axis_cell(a, r.k[a])}" for a in axes
            if a not in ("dataset", "model", "method", "dp", "sigma") and r.k[a] is not None]
    return (" " + " ".join(bits)) if bits else ""


def _series(rows: Sequence[Row], axes: Sequence[str]) -> dict[str, list[Row]]:
    """DP rows of one panel, by method (+ extra axes): one line each, over sigma."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.k["dp"]:
            out.setdefault(f"{r.k['method']}{_extra_label(r, axes)}", []).append(r)
    return out


def _std(s: Stat | None) -> float:
    return 0.0 if s is None or s.std is None else s.std


def plot_all(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")

    def log_x(ax: Any) -> None:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
        ax.margins(x=0.12)

    def legend(ax: Any) -> None:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)

    axes_cols = varying_axes(rows)
    panels = _panels(rows)
    paths = []
    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})

    def style(name: str) -> tuple[str, str]:
        return METHOD_STYLE.get(name.split(" ")[0], ("#7f7f7f", "D"))

    # 1. test accuracy vs epsilon_total
    delta = float(rows[0].runs[0].config.get("delta", 1e-5))
    fig, axs = plt.subplots(1, len(panels), figsize=(7.0 * len(panels), 4), squeeze=False)
    for ax, (ds, model) in zip(axs[0], panels):
        prow = [r for r in rows if (str(r.k["dataset"]), str(r.k["model"])) == (ds, model)]
        for name, series in _series(prow, axes_cols).items():
            series = [r for r in series if r.stats["eps_total"] and math.isfinite(r.stats["eps_total"].mean)]
            if not series:
                continue
            series.sort(key=lambda r: r.stats["eps_total"].mean)  # type: ignore[union-attr]
            c, m = style(name)
            x = [r.stats["eps_total"].mean for r in series]  # type: ignore[union-attr]
            y = [100 * r.stats["test_acc"].mean for r in series]  # type: ignore[union-attr]
            ax.errorbar(x, y, yerr=[100 * _std(r.stats["test_acc"]) for r in series], color=c, marker=m, capsize=3,
                        label=f"{name} (DP)")
            for xi, yi, r in zip(x, y, series):
                ax.annotate(f"σ={r.k['sigma']:g}", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7, color=c)
        for r in prow:
            if not r.k["dp"] and r.stats["test_acc"]:
                c, _ = style(str(r.k["method"]))
                ax.axhline(100 * r.stats["test_acc"].mean, color=c, ls="--", lw=1,
                           label=f"{r.k['method']}{_extra_label(r, axes_cols)} non-DP (ε = ∞)")
        log_x(ax)
        ax.set_xlabel(f"ε_total (selection + training) at δ = {delta:g}, log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Test accuracy vs privacy: {ds}, {model}")
        legend(ax)
    fig.tight_layout()
    paths.append(out_dir / PLOTS[0])
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    # 2. test accuracy vs wall time
    sigmas = sorted({r.k["sigma"] for r in rows if r.k["dp"]})
    fig, axs = plt.subplots(1, len(panels), figsize=(7.0 * len(panels), 4), squeeze=False)
    for ax, (ds, model) in zip(axs[0], panels):
        prow = [r for r in rows if (str(r.k["dataset"]), str(r.k["model"])) == (ds, model)]
        seen: set[str] = set()
        for r in prow:
            if r.stats["total_time_s"] is None or r.stats["test_acc"] is None:
                continue
            name = f"{r.k['method']}{_extra_label(r, axes_cols)}"
            c, m = style(name)
            filled = bool(r.k["dp"])
            ax.errorbar(r.stats["total_time_s"].mean, 100 * r.stats["test_acc"].mean,
                        xerr=_std(r.stats["total_time_s"]), yerr=100 * _std(r.stats["test_acc"]),
                        color=c, marker=m, mfc=c if filled else "white", ms=7, capsize=3, ls="none",
                        label=None if (name, filled).__repr__() in seen else f"{name} ({'DP' if filled else 'non-DP'})")
            seen.add((name, filled).__repr__())
            level = 0 if not filled else sigmas.index(r.k["sigma"]) + 1
            ax.annotate("non-DP" if not filled else f"σ={r.k['sigma']:g}", (r.stats["total_time_s"].mean, 100 * r.stats["test_acc"].mean),
                        textcoords="offset points", xytext=(6, -3 + 8 * (level % 2)), fontsize=7, color=c)
        log_x(ax)
        ax.set_xlabel("wall time per run (s), log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Test accuracy vs wall time: {ds}, {model}")
        legend(ax)
    fig.tight_layout()
    paths.append(out_dir / PLOTS[1])
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    # 3. test accuracy per epoch: one panel per (dataset, model) x privacy level
    levels = sorted({(0 if r.k["dp"] else 1, r.k["sigma"] or 0.0) for r in rows})
    fig, axs = plt.subplots(len(panels), len(levels), figsize=(3.6 * len(levels), 3.2 * len(panels)), squeeze=False,
                            sharey="row")
    for i, (ds, model) in enumerate(panels):
        for j, (nodp, sigma) in enumerate(levels):
            ax = axs[i][j]
            for r in rows:
                if (str(r.k["dataset"]), str(r.k["model"])) != (ds, model) or (0 if r.k["dp"] else 1, r.k["sigma"] or 0.0) != (nodp, sigma):
                    continue
                curves = [[float(m.get("test_acc") or 0.0) for m in run.metrics] for run in r.runs if run.metrics]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                epochs = [int(r.runs[0].metrics[e].get("epoch", e)) for e in range(n)]
                # epoch numbers may start at 0 or 1: plot "after epoch k" as k = 1..n
                xs = [e - epochs[0] + 1 for e in epochs]
                mean = [100 * statistics.fmean(c[e] for c in curves) for e in range(n)]
                sd = [100 * (statistics.stdev(c[e] for c in curves) if len(curves) > 1 else 0.0) for e in range(n)]
                name = f"{r.k['method']}{_extra_label(r, axes_cols)}"
                c, m = style(name)
                ax.plot(xs, mean, color=c, marker=m, ms=4, label=name)
                if len(curves) > 1:
                    ax.fill_between(xs, [a - b for a, b in zip(mean, sd)], [a + b for a, b in zip(mean, sd)], color=c, alpha=0.15)
            ax.set_title(f"{ds}, {model}, {'non-DP' if nodp else f'DP σ={sigma:g}'}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Test accuracy after each epoch (mean over seeds, band: ± 1 std)", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / PLOTS[2])
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------
# Command line.


def report(sweep_dir: Path, out_dir: Path | None = None, *, plots: bool = True) -> dict[str, Path]:
    """Write the table, CSV and plots of a sweep; returns their paths."""
    runs, skipped = find_runs(sweep_dir)
    rows = aggregate(runs)
    out_dir = out_dir or (sweep_dir / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    md.write_text(markdown(rows, runs, skipped))
    csv_path = out_dir / "results.csv"
    write_csv(rows, csv_path)
    paths = {"markdown": md, "csv": csv_path}
    if plots:
        for p in plot_all(rows, out_dir):
            paths[p.stem] = p
    return paths


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="crepe report", description="Tables and plots of a `crepe sweep` directory.")
    p.add_argument("sweep_dir", type=Path, help="directory written by `crepe sweep --out`")
    p.add_argument("--out", type=Path, help="output directory (default: SWEEP_DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="write only the table and CSV")
    args = p.parse_args(argv)
    try:
        paths = report(args.sweep_dir, args.out, plots=not args.no_plots)
    except ValueError as e:
        print(f"crepe report: error: {e}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text())
    for what, path in paths.items():
        print(f"wrote {path}", file=sys.stderr)
    return 0
