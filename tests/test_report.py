"""`crepe report`: aggregation, table, CSV and plots over run directories.

Most tests write run directories in `crepe train`'s format (config.json from the
real TrainConfig, metrics.jsonl, summary.json) so they run in milliseconds; the
end-to-end sweep -> report path on real training runs is in test_sweep.py.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from crepe.study import plots, report, results, tables
from crepe.config import TrainConfig


def write_run(
    root: Path,
    name: str,
    *,
    test_acc: float,
    epochs: int = 2,
    complete: bool = True,
    total: float = 10.0,
    summary: dict[str, object] | None = None,
    **cfg: object,
) -> Path:
    """A run directory as `crepe train` writes it, with made-up numbers (`summary` overrides summary.json's)."""
    c = TrainConfig(epochs=epochs, **cfg).resolve()  # type: ignore[arg-type]
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(c.to_dict()))
    eps_sel = 0.0 if c.method != "craig" else (math.inf if not c.dp else 0.5)
    eps_train = 1.0 / c.sigma if c.dp else math.inf
    lines = []
    for e in range(1, epochs + 1):
        lines.append(json.dumps({
            "epoch": e, "train_loss": 1.0 / e, "train_acc": test_acc * e / epochs + 0.01, "test_acc": test_acc * e / epochs,
            "eps_total": None if not c.dp else eps_sel + eps_train * e / epochs, "eps_select": None if not c.dp else eps_sel,
            "eps_train": None if not c.dp else eps_train * e / epochs, "select_time_s": 0.1, "train_time_s": 1.0,
            "examples_seen": 100 * e,
        }))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if complete:
        (d / "summary.json").write_text(json.dumps({
            "status": "complete", "test_acc": test_acc, "train_acc": test_acc + 0.01,
            "eps_total": None if not c.dp else eps_sel + eps_train, "eps_select": None if not c.dp else eps_sel,
            "eps_train": None if not c.dp else eps_train, "delta": c.delta, "select_time_s": 0.2 if c.method == "craig" else 0.0,
            "train_time_s": total - 1.0, "total_time_s": total, "epochs": epochs, **(summary or {}),
        }))
    return d


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for seed, jitter in ((0, 0.0), (1, 0.02)):
        for sigma in (1.0, 3.0):
            write_run(root, f"full_s{sigma:g}_{seed}", method="full", sigma=sigma, seed=seed, test_acc=0.80 + jitter, total=20.0)
            write_run(root, f"craig_s{sigma:g}_{seed}", method="craig", sigma=sigma, seed=seed, test_acc=0.70 + jitter, total=5.0)
            write_run(root, f"random_s{sigma:g}_{seed}", method="random", sigma=sigma, seed=seed, test_acc=0.65 + jitter, total=4.0)
        write_run(root, f"craig_nodp_{seed}", method="craig", dp=False, seed=seed, test_acc=0.85 + jitter, total=3.0)
        write_run(root, f"full_nodp_{seed}", method="full", dp=False, seed=seed, test_acc=0.90 + jitter, total=12.0)
    return root


def test_rows_mean_std_and_speedup(sweep_dir: Path) -> None:
    runs, skipped = results.find_runs(sweep_dir)
    assert len(runs) == 16 and not skipped
    rows = results.aggregate(runs)
    labels = [(r.k["method"], r.k["dp"], r.k["sigma"]) for r in rows]
    assert labels == [
        ("full", True, 1.0), ("random", True, 1.0), ("craig", True, 1.0),
        ("full", True, 3.0), ("random", True, 3.0), ("craig", True, 3.0),
        ("full", False, None), ("craig", False, None),
    ]
    craig1 = rows[2]
    assert craig1.seeds == [0, 1]
    assert craig1.stats["test_acc"].mean == pytest.approx(0.71)
    assert craig1.stats["test_acc"].std == pytest.approx(0.02 / math.sqrt(2))
    assert craig1.stats["eps_total"].mean == pytest.approx(1.5)
    assert craig1.speedup == pytest.approx(20.0 / 5.0)
    assert rows[0].speedup == pytest.approx(1.0)
    nodp = rows[7]
    assert math.isinf(nodp.stats["eps_total"].mean)
    assert nodp.speedup == pytest.approx(12.0 / 3.0)  # against full-data non-DP training


def test_report_writes_table_csv_and_plots(sweep_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert report.main([str(sweep_dir), "--out", str(out)]) == 0
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + 8  # header + one row per (method, privacy level)
    assert "| cnn | craig | DP | 1 | 2 | 71.00 ± 1.41 |" in md
    assert "4.00×" in md and "∞" in md
    assert "| train acc (%, not covered by ε) | ε_total" in table[0]  # a training-set figure beside ε, labelled
    assert "computed on the private data outside the ledger, it is not covered by ε" in md
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert {(r["method"], r["dp"], r["sigma"]) for r in rows} >= {("craig", "True", "1.0"), ("full", "False", "")}
    craig = next(r for r in rows if r["method"] == "craig" and r["sigma"] == "3.0")
    assert float(craig["test_acc_mean"]) == pytest.approx(0.71) and float(craig["speedup_vs_full"]) == pytest.approx(4.0)
    assert craig["seeds"] == "0 1"
    for name in plots.PLOTS:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_incomplete_runs_are_left_out_and_listed(sweep_dir: Path, tmp_path: Path) -> None:
    write_run(sweep_dir, "craig_s5_0", method="craig", sigma=5.0, seed=0, test_acc=0.5, complete=False)
    paths = report.report(sweep_dir, tmp_path / "o", plots=False)
    md = paths["markdown"].read_text()
    assert "Left out (1): craig_s5_0: not complete" in md
    assert "| cnn | craig | DP | 5 |" not in md


def test_empty_sweep_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no runs in" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_only_incomplete_runs_is_a_clear_error(tmp_path: Path) -> None:
    write_run(tmp_path / "s", "a", method="craig", seed=0, test_acc=0.5, complete=False)
    with pytest.raises(ValueError, match="no complete runs"):
        results.find_runs(tmp_path / "s")


def test_mismatched_protocol_is_a_clear_error(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(sweep_dir, "craig_s1_2", method="craig", sigma=1.0, seed=2, test_acc=0.7, epochs=3)
    assert report.main([str(sweep_dir), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "mismatched settings" in err and "epochs is 2" in err and "3 in craig_s1_2" in err


def test_mismatched_dataset_within_a_row_is_an_error_or_a_column(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_run(root, "a", method="craig", seed=0, test_acc=0.7, dataset="mnist")
    write_run(root, "b", method="craig", seed=1, test_acc=0.7, dataset="fashion-mnist")
    rows = results.aggregate(results.find_runs(root)[0])
    # different datasets never share a row: each is its own row, with a dataset column
    assert len(rows) == 2 and "dataset" in results.varying_axes(rows)
    write_run(root, "c", method="craig", seed=1, test_acc=0.7, dataset="mnist", select_sigma=2.0)
    with pytest.raises(ValueError, match="select_sigma"):
        results.aggregate(results.find_runs(root)[0])


def test_duplicate_seed_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_run(root, "a", method="craig", seed=0, test_acc=0.7)
    write_run(root, "b", method="craig", seed=0, test_acc=0.7)
    with pytest.raises(ValueError, match="same seed"):
        results.aggregate(results.find_runs(root)[0])


def test_import_report_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, crepe.study.report, crepe.study.sweep; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'opacus')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------
# Figures, as matplotlib objects.


def _drawn(fig):  # type: ignore[no-untyped-def]
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _inside(fig, artist) -> bool:  # type: ignore[no-untyped-def]
    box, whole = artist.get_window_extent(_drawn(fig)), fig.bbox
    return box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1 and box.y0 >= whole.y0 - 1 and box.y1 <= whole.y1 + 1


def test_one_panel_figures_keep_their_titles(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    write_run(tmp_path / "s", "a", method="craig", sigma=1.0, seed=0, test_acc=0.52, epochs=1, dataset="fashion-mnist")
    figs = report.figures(results.aggregate(results.find_runs(tmp_path / "s")[0]))
    try:
        for name, fig in figs.items():
            w, h = fig.get_size_inches()
            assert (w, h) >= plots.MIN_SIZE and w >= plots.MIN_SIZE[0] and h >= plots.MIN_SIZE[1], name
            titles = [ax.title for ax in fig.axes] + ([fig._suptitle] if fig._suptitle else [])
            assert all(_inside(fig, t) for t in titles if t.get_text()), name
            assert all(_inside(fig, leg) for leg in fig.legends), name
        epoch_ax = figs["acc_per_epoch.png"].axes[0]
        lo, hi = epoch_ax.get_xlim()
        assert [t.get_text() for t, x in zip(epoch_ax.get_xticklabels(), epoch_ax.get_xticks()) if lo <= x <= hi] == ["1"]
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_a_log_axis_under_a_decade_has_plain_labelled_ticks() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([2.9, 4.5], [80, 80.3])
    plots.log_axis(ax.xaxis, [2.9, 4.5])
    _drawn(fig)
    lo, hi = ax.get_xlim()
    labels = [t.get_text() for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= x <= hi and t.get_text()]
    plt.close(fig)
    assert len(labels) >= 3 and all(label.replace(".", "").isdigit() for label in labels), labels  # 3, 4, 5 (no 10^0.5)


def test_accuracy_range_never_magnifies_seed_noise() -> None:
    a, b = plots.accuracy_limits([80.0, 80.3], [1.0, 1.0])  # a 0.3-point gap with 1-point seed noise
    assert b - a >= 4 * 1.0 and b - a >= plots.MIN_SPAN and a <= 80.0 and b >= 80.3
    a, b = plots.accuracy_limits([97.0, 99.5], [0.1])
    assert b == 100.0 and b - a >= plots.MIN_SPAN  # kept inside 0-100
    a, b = plots.accuracy_limits([20.0, 90.0], [0.5])
    assert a <= 20.0 and b >= 90.0


def test_report_plots_use_the_readable_ranges(sweep_dir: Path) -> None:
    import matplotlib.pyplot as plt

    figs = report.figures(results.aggregate(results.find_runs(sweep_dir)[0]))
    try:
        eps_ax = figs["acc_vs_eps.png"].axes[0]
        _drawn(figs["acc_vs_eps.png"])
        lo, hi = eps_ax.get_ylim()
        assert hi - lo >= plots.MIN_SPAN
        legend = figs["acc_vs_eps.png"].legends[0]  # outside the panel: covers no data
        assert not legend.get_window_extent().overlaps(eps_ax.get_window_extent())
        assert plots.DIAGNOSTICS_PLOT not in figs  # no run has diagnostics
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_diagnostics_plot_one_panel_per_metric(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    root = tmp_path / "s"
    for seed in (0, 1):
        d = write_run(root, f"craig_{seed}", method="craig", sigma=1.0, seed=seed, test_acc=0.7, diagnostics=True)
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for row in rows:
            row["diagnostics"] = {"frac_clipped": 0.5, "clip_bias": 0.1, "clip_cos": 0.9, "clip_cos_per_class": {"0": 0.9},
                                  "snr": 1.2, "grad_norm_q50": 3.0, "clip_norm": 1.0}
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = report.report(root, tmp_path / "out")
    assert paths["diagnostics"].read_bytes()[:4] == b"\x89PNG"
    fig = report.figures(results.aggregate(results.find_runs(root)[0]))[plots.DIAGNOSTICS_PLOT]
    try:
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == [plots.diagnostic_title(k)[0] for k in (
            "frac_clipped", "clip_bias", "clip_cos", "snr", "grad_norm_q50", "clip_norm")]
        assert panels[0].get_title() == "Examples clipped" and panels[0].get_ylabel() == "share of the probe (0-1)"
        assert all(ax.get_ylabel() for ax in panels)  # a unit each
        assert all(len(ax.get_lines()) == 1 for ax in panels)  # one line per row: the mean over its two seeds
        assert "not covered by ε" in fig._suptitle.get_text()
    finally:
        plt.close("all")


def test_runs_at_different_target_epsilons_are_never_averaged(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for target, sigma in ((1.0, 4.1), (3.0, 1.6)):
        for seed in (0, 1):
            for method in ("full", "craig"):
                d = write_run(root, f"{method}_e{target:g}_{seed}", method=method, sigma=sigma + (method == "craig"),
                              seed=seed, test_acc=0.7)
                cfg = json.loads((d / "config.json").read_text())
                (d / "config.json").write_text(json.dumps({**cfg, "target_epsilon": target}))
    rows = results.aggregate(results.find_runs(root)[0])
    assert [(r.k["target_epsilon"], r.k["method"], len(r.runs)) for r in rows] == [
        (1.0, "full", 2), (1.0, "craig", 2), (3.0, "full", 2), (3.0, "craig", 2)]
    assert all(r.speedup is not None for r in rows)  # compared with the full-data run at the same target, whatever its sigma
    md = tables.markdown(rows, results.find_runs(root)[0], [])
    assert "target ε" in md and "5.1 (solved)" in md


def test_two_seed_intervals_are_clipped_to_0_100_and_marked(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for seed, acc in ((0, 0.10), (1, 0.37)):  # the raw t interval is about [-62, 109] %
        write_run(root, f"craig_{seed}", method="craig", sigma=1.0, seed=seed, test_acc=acc)
    runs = results.find_runs(root)[0]
    rows = results.aggregate(runs)
    s = rows[0].stats["test_acc"]
    assert s.mean - s.half95 < 0 and s.mean + s.half95 > 1  # the example must hold what it claims
    assert s.interval95(*results.ACC_RANGE) == (0.0, 1.0)
    md = tables.markdown(rows, runs, [])
    (line,) = [line for line in md.splitlines() if line.startswith("| cnn | craig |")]
    assert "[0.00, 100.00] †" in line
    assert "clipped to [0, 100]" in md and "very wide" in md
    assert tables.ci_bounds(s) == ["0", "1"]
    s3 = results.Stat(0.5, 0.01, 3)  # an interval inside the range is left as it is
    assert s3.interval95(0.0, 1.0) == pytest.approx((0.5 - s3.half95, 0.5 + s3.half95))
    assert "†" not in tables.ci_cell(s3)


def write_grid(root: Path, seeds: int, kind: str) -> Path:
    """A small sweep: full, random, craig at target ε 1, 3, 8 (kind "eps") or at σ 0.8, 1.5, 3 plus
    non-DP (kind "sigma"), over `seeds` seeds, accuracies within a few points of each other."""
    for seed in range(seeds):
        for i, method in enumerate(("full", "random", "craig")):
            for j, level in enumerate((1.0, 3.0, 8.0) if kind == "eps" else (0.8, 1.5, 3.0)):
                acc = 0.75 + 0.02 * i + 0.01 * j + 0.015 * ((seed * 7 + i + j) % 3 - 1)
                if kind == "eps":
                    write_run(root, f"{method}_e{level:g}_{seed}", method=method, seed=seed, test_acc=acc, total=10.0 + 20 * i,
                              sigma=2.0 / level + 0.1 * i, target_epsilon=level, summary={"eps_total": 0.99 * level})
                else:
                    write_run(root, f"{method}_s{level:g}_{seed}", method=method, seed=seed, test_acc=acc, total=10.0 + 20 * i,
                              sigma=level)
            if kind == "sigma":
                write_run(root, f"{method}_nodp_{seed}", method=method, dp=False, seed=seed, test_acc=0.85 + 0.01 * i, total=5.0)
    return root


# The figures each kind of sweep gets (crepe.study.plots and crepe.study.verdict docstrings).
FIGURES = {
    "eps": {"acc_vs_time.png", "acc_per_epoch.png", "frontier.png", "acc_vs_time_at_eps.png"},  # no acc_vs_eps: ε = target
    "sigma": {"acc_vs_eps.png", "acc_vs_time.png", "acc_per_epoch.png"},  # no study figures: no target ε
}


@pytest.mark.parametrize("kind", sorted(FIGURES))
def test_each_kind_of_sweep_gets_the_figures_that_say_something(tmp_path: Path, kind: str) -> None:
    import matplotlib.pyplot as plt

    rows = results.aggregate(results.find_runs(write_grid(tmp_path / "s", 2, kind))[0])
    figs = report.figures(rows)
    plt.close("all")
    assert set(figs) == FIGURES[kind]
    if kind == "eps":  # one target ε: no frontier (every point would sit at the target)
        assert set(report.figures([r for r in rows if r.k["target_epsilon"] == 3.0])) == FIGURES["eps"] - {"frontier.png"}
        plt.close("all")


@pytest.mark.parametrize("seeds", [1, 2, 3])
@pytest.mark.parametrize("kind", sorted(FIGURES))
def test_accuracy_axes_are_fitted_to_the_data(tmp_path: Path, kind: str, seeds: int) -> None:
    """No accuracy axis spans the fixed 0-100 when the data span a few points; the means are inside it,
    and every bar is clipped to 0-100; below 3 seeds the figure says why its bars are dashed or absent."""
    import matplotlib.pyplot as plt

    rows = results.aggregate(results.find_runs(write_grid(tmp_path / "s", seeds, kind))[0])
    figs = report.figures(rows)
    try:
        for name, fig in figs.items():
            accuracy_axes = [ax for ax in fig.axes if "accuracy" in ax.get_ylabel()]
            assert accuracy_axes, name
            for ax in accuracy_axes:
                lo, hi = ax.get_ylim()
                data = [float(y) for line in ax.get_lines() for y in line.get_ydata()
                        if line.get_marker() not in ("None", "", None, "_", "|") or line.get_linestyle() == "--"]
                # the plotted means (markers; not the bars' caps) and the non-DP levels (dashed lines)
                assert data and lo <= min(data) and max(data) <= hi, name
                span = max(data) - min(data)  # under 10 points across rows (up to 45 across epochs)
                assert hi - lo <= max(1.5 * span, 30.0) and hi - lo < 100, (name, lo, hi, span)
                for bars in (c.lines[2] for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr):
                    for segment in bars[-1].get_segments():
                        assert all(0.0 <= y <= 100.0 for _, y in segment), name
                        if name in ("acc_vs_eps.png", "acc_vs_time.png"):  # ± 1 std bars: held by the axis
                            assert all(lo <= y <= hi for _, y in segment), name
            note = fig._supxlabel.get_text() if fig._supxlabel else ""
            if name != "acc_per_epoch.png":
                assert ("fewer than 3 seeds" in note) == (seeds == 2) and ("One seed" in note) == (seeds == 1), name
    finally:
        plt.close("all")


def test_diagnostics_say_when_lines_coincide(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    root = tmp_path / "s"
    for method, snr in (("full", 1.0), ("craig", 2.0), ("random", 2.0)):
        d = write_run(root, method, method=method, sigma=1.0, seed=0, test_acc=0.7, diagnostics=True)
        lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for row in lines:
            row["diagnostics"] = {"frac_clipped": 1.0, "snr": snr}  # a constant shared by every row; two rows equal
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    fig = plots.diagnostics_figure(plt, results.aggregate(results.find_runs(root)[0]))
    try:
        clipped, snr = fig.axes[:2]
        assert [t.get_text() for t in clipped.texts] == ["3 lines, 1 distinct: equal ones drawn over each other"]
        assert [t.get_text() for t in snr.texts] == ["3 lines, 2 distinct: equal ones drawn over each other"]
        # each row its own colour and ring size (the marker is the privacy level, σ = 1 for all three)
        assert len({(line.get_color(), line.get_markersize()) for line in clipped.get_lines()}) == 3
        assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == ["full", "random", "craig", "σ = 1"]
    finally:
        plt.close(fig)


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    write_run(tmp_path / "s", "a", method="craig", sigma=1.0, seed=0, test_acc=0.5)
    runs, skipped = results.find_runs(tmp_path / "s")
    md = tables.markdown(results.aggregate(runs), runs, skipped)
    assert "1 complete run;" in md and "1 complete runs" not in md
    assert tables.count(2, "complete run") == "2 complete runs" and tables.count(0, "seed") == "0 seeds"
    assert tables.count(1, "seed") == "1 seed" and tables.count(3, "class", "classes") == "3 classes"


def _texts(fig):  # type: ignore[no-untyped-def]
    """Every piece of text a figure shows: titles, axis and tick labels (the drawn ticks), legends, notes."""
    texts = [t for t in (fig._suptitle, fig._supxlabel) if t is not None]
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            texts += [t for t, x in zip(axis.get_ticklabels(), axis.get_ticklocs()) if min(lo, hi) <= x <= max(lo, hi)]
    for leg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        texts += [*leg.get_texts(), leg.get_title()]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("kind, seeds", [("eps", 1), ("eps", 2), ("sigma", 1), ("sigma", 3), ("one run", 1)])
def test_no_text_is_clipped_or_overlaps_other_text(tmp_path: Path, kind: str, seeds: int) -> None:
    """Each figure's text lies inside the figure and no two pieces of it overlap (a label on a label, a
    title under the legend, a two-line axis label cut at the edge), from a one-run sweep (one narrow
    panel: the legend beside the title) to grids with footnotes."""
    import matplotlib.pyplot as plt

    if kind == "one run":
        write_run(tmp_path / "s", "a", method="private-set", seed=0, test_acc=0.17, sigma=2.0, target_epsilon=8.0,
                  total=22.0, epochs=3)
    else:
        write_grid(tmp_path / "s", seeds, kind)
    figs = report.figures(results.aggregate(results.find_runs(tmp_path / "s")[0]))
    try:
        for name, fig in figs.items():
            renderer = _drawn(fig)
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
            assert len(boxes) > 10, name
            for text, box in boxes:
                assert _inside(fig, _Box(box)), (name, text)
            for i, (a, box_a) in enumerate(boxes):
                for b, box_b in boxes[i + 1:]:
                    assert not box_a.overlaps(box_b), (name, a, b)
    finally:
        plt.close("all")


class _Box:
    """An artist stand-in whose extent is a given bounding box (for _inside)."""

    def __init__(self, box) -> None:  # type: ignore[no-untyped-def]
        self.box = box

    def get_window_extent(self, renderer=None):  # type: ignore[no-untyped-def]
        return self.box


@pytest.mark.parametrize("seeds", [1, 2, 3])
def test_sigma_points_carry_no_text_and_a_marker_per_sigma(tmp_path: Path, seeds: int) -> None:
    """acc_vs_eps.png in a σ sweep: no text on the points (at any grid it falls on other points, other
    labels and the error bars); each σ its own marker, the same in acc_vs_time.png, and in the legend."""
    import matplotlib.pyplot as plt

    rows = results.aggregate(results.find_runs(write_grid(tmp_path / "s", seeds, "sigma"))[0])
    figs = report.figures(rows)
    try:
        for name in ("acc_vs_eps.png", "acc_vs_time.png"):
            (ax,) = figs[name].axes
            assert not ax.texts, name
            labels = [t.get_text() for t in figs[name].legends[0].get_texts()]
            assert {"σ = 0.8", "σ = 1.5", "σ = 3"} <= set(labels), name
        (ax,) = figs["acc_vs_eps.png"].axes
        points = [line for line in ax.get_lines() if len(line.get_xdata()) == 1 and line.get_marker() not in ("", "None")]
        assert len(points) == 9  # 3 methods x 3 σ, one marker each
        marker_of = plots.level_markers(rows)
        for line in points:  # which σ: the row whose accuracy and ε it shows
            (x,), (y,) = line.get_xdata(), line.get_ydata()
            (r,) = [r for r in rows if r.k["dp"] and abs(r.stats["eps_total"].mean - x) < 1e-9
                    and abs(100 * r.stats["test_acc"].mean - y) < 1e-9]
            assert line.get_marker() == marker_of[plots._level(r)]
        assert len({marker_of[plots._level(r)] for r in rows if r.k["dp"]}) == 3
    finally:
        plt.close("all")


def test_a_log_axis_labels_a_tick_near_every_point() -> None:
    """Under a decade the ticks are round values around the points, below 1 too (0.5, 1, 2, 3 for runs
    of 0.5-3 s; once only 1, 2, 3 were labelled), and the target ε of a frontier each get one."""
    assert plots.log_ticks(0.45, 3.6) == [0.5, 1.0, 2.0, 3.0]
    assert plots.log_ticks(2.52, 5.17) == [3.0, 3.5, 4.0, 5.0]
    assert plots.log_ticks(10.0, 40.0) == [10.0, 15.0, 20.0, 30.0, 40.0]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plots.log_axis(ax.xaxis, [1.99, 7.96], marks=[2.0, 8.0])
    ticks = list(ax.xaxis.get_ticklocs())
    plt.close(fig)
    assert 2.0 in ticks and 8.0 in ticks and all(t == 8.0 or abs(math.log(t / 8.0)) > math.log(1.15) for t in ticks)


def test_bars_and_bands_stay_inside_their_axes(tmp_path: Path) -> None:
    """Wall-time std bars (acc_vs_time.png) and the ± 1 std bands (acc_per_epoch.png) end inside the
    panel: the axes are fitted to them, not to the means alone."""
    import matplotlib.pyplot as plt

    root = tmp_path / "s"
    for seed, (acc, total) in enumerate(((0.20, 2.0), (0.60, 4.0))):  # a wide spread of both over two seeds
        write_run(root, f"full_{seed}", method="full", sigma=1.0, seed=seed, test_acc=acc, total=total, epochs=3)
        write_run(root, f"craig_{seed}", method="craig", sigma=1.0, seed=seed, test_acc=0.3, total=1.0 + seed / 10, epochs=3)
    figs = report.figures(results.aggregate(results.find_runs(root)[0]))
    try:
        (ax,) = figs["acc_vs_time.png"].axes
        lo, hi = ax.get_xlim()
        ends = [x for c in ax.containers for seg in c.lines[2][0].get_segments() for x, _ in seg]  # the x bars
        assert ends and lo <= min(ends) and max(ends) <= hi
        (ax,) = figs["acc_per_epoch.png"].axes
        lo, hi = ax.get_ylim()
        band = [y for coll in ax.collections for path in coll.get_paths() for _, y in path.vertices]
        assert band and lo <= min(band) and max(band) <= hi
    finally:
        plt.close("all")


def test_a_sweep_over_sparsity_gets_accuracy_and_noise_to_signal_against_it(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    root = tmp_path / "s"
    accs = {0.0: 0.80, 0.5: 0.82, 0.9: 0.78}
    for s, acc in accs.items():
        for seed in (0, 1):
            d = write_run(root, f"full_{s}_{seed}", method="full", sigma=1.0, seed=seed, sparsity=s, test_acc=acc + seed / 100)
            rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for row in rows:
                row["noise_to_signal"] = 10.0 * (1 - s) + seed  # the last epoch's, averaged over seeds, is plotted
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = results.aggregate(results.find_runs(root)[0])
    assert plots.SPARSITY_PLOT in plots.figure_names(rows)
    fig = report.figures(rows)[plots.SPARSITY_PLOT]
    try:
        acc_ax, nsr_ax = (ax for ax in fig.axes if ax.get_visible())
        (acc_line,), (nsr_line,) = ([line for line in ax.get_lines() if line.get_linestyle() != "None"]  # no caps
                                     for ax in (acc_ax, nsr_ax))
        assert list(acc_line.get_xdata()) == [0.0, 50.0, 90.0]
        assert list(acc_line.get_ydata()) == pytest.approx([80.5, 82.5, 78.5])
        assert list(nsr_line.get_ydata()) == pytest.approx([10.5, 5.5, 1.5])
        assert "not covered by ε" in nsr_ax.get_ylabel()
    finally:
        plt.close("all")
    dense = tmp_path / "dense"
    write_run(dense, "full_0", method="full", sigma=1.0, seed=0, test_acc=0.8)
    assert plots.SPARSITY_PLOT not in plots.figure_names(results.aggregate(results.find_runs(dense)[0]))
