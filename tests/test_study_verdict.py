"""`crepe report` on the study at equal ε (crepe.study.verdict): verdict, Welch interval, Pareto
marking, speed-up, and the rule that runs calibrated to different targets are never averaged.

Synthetic run folders (tests/test_report.py's write_run) at two target ε and two compute budgets,
three seeds (one configuration two); the expected intervals are computed here with scipy.stats,
independently of the report's own arithmetic.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats
from test_report import write_run

from crepe.config import UsageError
from crepe.study import plots, report, results, verdict

# (target epsilon, method, compute budget or None for full data) -> (test accuracy per seed, total time in s)
STUDY: dict[tuple[float, str, str | None], tuple[tuple[float, ...], float]] = {
    (1.0, "full", None): ((0.80, 0.81, 0.82), 100.0),
    (1.0, "craig", "epochs"): ((0.70, 0.71, 0.72), 12.0),
    (1.0, "random", "epochs"): ((0.60, 0.62, 0.61), 10.0),
    (1.0, "craig", "steps"): ((0.805, 0.83, 0.79), 95.0),  # as good as full data within the seed noise
    (1.0, "random", "steps"): ((0.74, 0.75, 0.76), 96.0),  # slower and worse than craig steps: not Pareto-best
    (4.0, "full", None): ((0.85, 0.86, 0.87), 100.0),
    (4.0, "craig", "epochs"): ((0.80, 0.79, 0.81), 12.0),
    (4.0, "random", "epochs"): ((0.70, 0.72), 10.0),  # two seeds only: marked
    (4.0, "craig", "steps"): ((0.90, 0.91, 0.92), 95.0),  # beats full data beyond the noise
    (4.0, "random", "steps"): ((0.84, 0.86, 0.85), 96.0),
}
# cell -> (best, runner-up, difference exceeds the seed noise)
EXPECTED = {
    (1.0, "epochs"): ((1.0, "full", None), (1.0, "craig", "epochs"), True),
    (1.0, "steps"): ((1.0, "full", None), (1.0, "craig", "steps"), False),
    (4.0, "epochs"): ((4.0, "full", None), (4.0, "craig", "epochs"), True),
    (4.0, "steps"): ((4.0, "craig", "steps"), (4.0, "full", None), True),
}
PARETO = {(1.0, "full", None), (1.0, "craig", "epochs"), (1.0, "random", "epochs"), (1.0, "craig", "steps"),
          (4.0, "craig", "epochs"), (4.0, "random", "epochs"), (4.0, "craig", "steps")}


def write_study(root: Path) -> Path:
    for (target, method, budget), (accs, total) in STUDY.items():
        sigma = 2.0 / target + {"full": 0.0, "craig": 0.1, "random": 0.2}[method] + (0.05 if budget == "steps" else 0.0)
        extra = {} if budget is None else {"compute": budget}
        for seed, acc in enumerate(accs):
            write_run(root, f"{method}_{budget}_eps{target:g}_seed{seed}", method=method, seed=seed, test_acc=acc, total=total,
                      sigma=sigma, target_epsilon=target, **extra,
                      summary={"eps_total": 0.995 * target, "eps_select": 0.3 * target if method == "craig" else 0.0,
                               "eps_train": 0.8 * target, "eval_time_s": 0.5})
    return root


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return write_study(tmp_path / "study")


def _rows(root: Path) -> list[results.Row]:
    return results.aggregate(results.find_runs(root)[0])


def _id(r: results.Row) -> tuple[float, str, str | None]:
    return r.k["target_epsilon"], r.k["method"], r.k["compute"]


def test_the_verdict_picks_the_winner_and_judges_the_seed_noise(study: Path) -> None:
    verdicts = {(v.cell[2], v.cell[3]): v for v in verdict.verdicts(_rows(study))}
    assert set(verdicts) == set(EXPECTED)
    for cell, (best, second, exceeds) in EXPECTED.items():
        v = verdicts[cell]
        assert v.runner_up is not None and v.difference is not None
        assert (_id(v.best), _id(v.runner_up)) == (best, second), cell
        a, b = STUDY[best][0], STUDY[second][0]
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)  # Welch, independently
        assert v.difference.mean == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
        assert (v.difference.low, v.difference.high) == (pytest.approx(ci.low), pytest.approx(ci.high)), cell
        assert bool(ci.low > 0 or ci.high < 0) is exceeds, "the example must hold what it claims"
        assert v.difference.exceeds_noise is exceeds, cell


def test_the_verdict_table_says_within_or_exceeds(study: Path, tmp_path: Path) -> None:
    paths = report.report(study, tmp_path / "out", plots=False)
    md = paths["verdict"].read_text()
    verdict_lines = [line for line in md.split("## Configurations")[0].splitlines() if line.startswith("| 1 |")
                     or line.startswith("| 4 |")]
    assert [(line.split(" | ")[1], line.rstrip(" |").split(" | ")[-1]) for line in verdict_lines] == [
        ("epochs", "exceeds seed noise"), ("steps", "within seed noise"),
        ("epochs", "exceeds seed noise"), ("steps", "exceeds seed noise")]
    assert "| 4 | steps | craig | 91.00 ± 1.00 | full | 86.00 ± 1.00 | +5.00 [" in md
    with open(paths["verdict_csv"]) as fh:
        lines = list(csv.DictReader(fh))
    assert [(row["target_epsilon"], row["compute"], row["best"], row["exceeds_seed_noise"]) for row in lines] == [
        ("1.0", "epochs", "full", "True"), ("1.0", "steps", "full", "False"),
        ("4.0", "epochs", "full", "True"), ("4.0", "steps", "craig", "True")]
    assert float(lines[3]["difference"]) == pytest.approx(0.05)


def test_pareto_best_on_a_hand_example() -> None:
    # (time, accuracy): the slowest-and-worst point and a tie that loses on time are not Pareto-best
    points = [(10.0, 0.80), (5.0, 0.70), (20.0, 0.75), (5.0, 0.60), (1.0, 0.50), (12.0, 0.80)]
    assert verdict.pareto_best(points) == [True, True, False, False, True, False]
    assert verdict.pareto_best([(1.0, 0.5), (1.0, 0.5)]) == [True, True]  # equal points dominate neither


def test_pareto_best_configurations_are_marked(study: Path, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = _rows(study)
    assert {_id(r) for r in rows if r.key in verdict.pareto_keys(rows)} == PARETO
    paths = report.report(study, tmp_path / "out", plots=False)
    with open(paths["configs_at_eps"]) as fh:
        marked = {(float(r["target_epsilon"]), r["method"], r["compute"] or None)
                  for r in csv.DictReader(fh) if r["pareto_best"] == "True"}
    assert marked == PARETO
    fig = verdict.figures(plt, rows)[verdict.TIME_AT_EPS]
    try:
        for ax, target in zip(fig.axes, (1.0, 4.0)):
            assert ax.get_title().endswith(f"target ε = {target:g}")
            rings = [c for c in ax.collections if c.get_label() == "Pareto-best"]
            assert len(rings) == 1
            ringed = {(round(x, 6), round(y, 6)) for x, y in rings[0].get_offsets()}
            expected = {(STUDY[k][1], round(100 * statistics.fmean(STUDY[k][0]), 6)) for k in PARETO if k[0] == target}
            assert ringed == expected
    finally:
        plt.close(fig)


def test_speedup_over_full_data_at_the_same_target(study: Path, tmp_path: Path) -> None:
    paths = report.report(study, tmp_path / "out", plots=False)
    with open(paths["configs_at_eps"]) as fh:
        lines = list(csv.DictReader(fh))
    speedup = {(float(r["target_epsilon"]), r["method"], r["compute"] or None): float(r["speedup_vs_full"]) for r in lines}
    assert speedup[(1.0, "craig", "epochs")] == pytest.approx(100.0 / 12.0, rel=1e-5)
    assert speedup[(4.0, "random", "steps")] == pytest.approx(100.0 / 96.0, rel=1e-5)  # 6 significant digits
    assert speedup[(1.0, "full", None)] == pytest.approx(1.0)
    md = paths["verdict"].read_text()
    assert "8.33×" in md and "0.3 / 0.8" in md  # ε_select / ε_train of craig at target 1


def test_runs_at_different_targets_are_never_averaged(study: Path) -> None:
    rows = _rows(study)
    full = {r.k["target_epsilon"]: r for r in rows if r.k["method"] == "full"}
    assert {t: (len(r.runs), round(r.stats["test_acc"].mean, 6)) for t, r in full.items()} == {1.0: (3, 0.81), 4.0: (3, 0.86)}
    for cell, competing in verdict.cells(rows).items():
        assert {r.k["target_epsilon"] for r in competing} == {cell[2]}
        assert full[cell[2]] in competing  # full data competes in every budget at its own target only
    # a run whose calibration differs from its row's (another sigma at the same target) is refused, not averaged
    write_run(study, "full_eps1_seed3", method="full", seed=3, test_acc=0.5, sigma=9.0, target_epsilon=1.0)
    with pytest.raises(UsageError, match="sigma"):
        _rows(study)


def test_fewer_than_three_seeds_are_marked(study: Path, tmp_path: Path) -> None:
    paths = report.report(study, tmp_path / "out", plots=False)
    md = paths["verdict"].read_text()
    config_lines = md.split("## Configurations")[1].splitlines()
    random4 = [line for line in config_lines if line.startswith("| 4 | epochs | random |")]
    assert len(random4) == 1 and "†" in random4[0]
    assert all("†" not in line for line in config_lines if line.startswith("| 1 |"))
    results = paths["markdown"].read_text()
    assert sum("†" in line for line in results.splitlines() if line.startswith("| ")) == 1


def test_frontier_one_panel_per_budget_with_95_intervals(study: Path) -> None:
    import matplotlib.pyplot as plt

    fig = verdict.frontier_figure(plt, _rows(study))
    try:
        assert [ax.get_title() for ax in fig.axes] == ["mnist, cnn, compute = epochs", "mnist, cnn, compute = steps"]
        for ax in fig.axes:  # full data appears in both
            bars = {c.get_label(): c for c in ax.containers}
            assert "full (DP)" in bars
            line, _, (vertical,) = bars["full (DP)"].lines
            series = [c.get_label() for c in ax.containers]  # the series at the targets, set apart (plots.dodge)
            aside = plots.dodge(series)["full (DP)"]
            assert len(series) > 1 and aside != 1.0
            assert list(line.get_xdata()) == pytest.approx([0.995 * aside, 3.98 * aside])  # the achieved ε, not the target
            accs = STUDY[(1.0, "full", None)][0]
            half = 100 * stats.t.ppf(0.975, 2) * statistics.stdev(accs) / 3**0.5
            (_, low), (_, high) = vertical.get_segments()[0]
            assert (high - low) / 2 == pytest.approx(half)
    finally:
        plt.close(fig)


def test_one_panel_study_figures_keep_their_titles_clear_of_the_legend(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    for seed in (0, 1, 2):
        for method, extra in (("full", {}), ("craig", {"compute": "steps"})):
            write_run(tmp_path / "s", f"{method}_{seed}", method=method, seed=seed, test_acc=0.5 + seed / 100, sigma=1.5,
                      target_epsilon=3.0, **extra)
    figs = verdict.figures(plt, _rows(tmp_path / "s"))
    try:
        for name, fig in figs.items():
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            title, (legend,) = fig._suptitle.get_window_extent(renderer), fig.legends
            assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1, name
            assert not title.overlaps(legend.get_window_extent(renderer)), name
    finally:
        plt.close("all")


def test_report_writes_the_study_files(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert report.main([str(study), "--out", str(out)]) == 0
    for name in (verdict.FRONTIER, verdict.TIME_AT_EPS):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("verdict.md", "verdict.csv", "configs_at_eps.csv", "results.md", "results.csv"):
        assert (out / name).stat().st_size > 0


def test_no_target_no_verdict(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path / "s", f"craig_{seed}", method="craig", sigma=1.0, seed=seed, test_acc=0.7)
    paths = report.report(tmp_path / "s", tmp_path / "out")
    assert "verdict" not in paths and "frontier" not in paths and "acc_vs_time_at_eps" not in paths  # acc_vs_eps says it
    assert "acc_vs_eps" in paths


def test_unreachable_cells_are_listed(study: Path, tmp_path: Path) -> None:
    runs = {f"mnist_cnn_craig_eps0.01_seed{seed}": {
        "status": "unreachable", "target_epsilon": 0.01, "smallest_epsilon": 0.0312,
        "settings": {"dataset": "mnist", "model": "cnn", "method": "craig", "target-epsilon": 0.01, "seed": seed}}
        for seed in (0, 1)}
    (study / "sweep.json").write_text(json.dumps({"grid": {"method": ["craig"], "seed": [0, 1]}, "fixed": {}, "runs": runs}))
    paths = report.report(study, tmp_path / "out", plots=False)
    for md in (paths["markdown"].read_text(), paths["verdict"].read_text()):
        assert "## Unreachable cells (not run)" in md
        assert "| method=craig | 0.01 | 0.0312 | 0 1 |" in md
