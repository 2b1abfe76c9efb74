"""`crepe report` on user-level runs (crepe.study.users; DESIGN.md section 11, issue 24): the
configurations at equal user-level ε per population, the ε per user of example-level runs matched to
a target, means and std over seeds, the verdict on recall and on test accuracy, and that a report of
runs without users is byte-identical to what it was before (tests/golden/report/).

Synthetic run folders, written here in `crepe train`'s format (tests/test_report.py's write_run);
the expected Welch intervals are computed with scipy.stats, independently of the report.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from golden.report_examples import FILES, GOLDEN, reports
from test_report import write_run

from crepe.config import UsageError
from crepe.study import plots, report, results, user_study


def test_reports_of_runs_without_users_are_unchanged(tmp_path: Path) -> None:
    texts = reports(tmp_path)
    for name, files in texts.items():
        assert sorted(files) == sorted(f.name for f in (GOLDEN / name).iterdir()), name
        for file, text in files.items():
            assert file in FILES
            assert text == (GOLDEN / name / file).read_text(), (
                f"{name}/{file} differs from tests/golden/report/{name}/{file}; if the change is intended, "
                "regenerate: PYTHONPATH=src:tests python tests/golden/report_examples.py")


# ---------------------------------------------------------------------------
# User-level runs.

FEDEMB_NOTE = "dp-fedemb trains no global head, each virtual client keeps its own; judged by its embeddings"


def write_user_run(
    root: Path,
    name: str,
    *,
    seed: int,
    recall: float,
    test_acc: float | None = 0.7,
    unit: str = "user",
    algorithm: str = "dp-sgd",
    k: int = 1,
    target: float | None = 8.0,
    eps: float | None = None,
    dp: bool = True,
    sigma: float = 1.0,
    users: int = 1000,
    steps: int = 100,
    train_time: float = 250.0,
    **cfg: object,
) -> Path:
    """A run on synthetic writers as `crepe train` writes it: user-level (unit "user", at --target-epsilon
    `target`, its ε per user `eps`, default 0.997 x target) or example-level (unit "example", σ `sigma`, its
    group-privacy ε per user `eps` for k = 84); made-up embedding metrics (recall at FAR 1e-3 `recall`)."""
    user = unit == "user"
    options: dict[str, object] = {"dataset": "fashion-mnist", "users": "synthetic", "user_count": users,
                                  "held_out_classes": 3, "privacy_unit": unit, "dp": dp, "seed": seed, **cfg}
    if user:
        options.update(algorithm=algorithm, users_per_round=100)
        if algorithm == "dp-fedemb":
            options["virtual_client_size"] = k
    if dp:
        options["sigma"] = sigma
        if user and target is not None:
            options["target_epsilon"] = target
    eps_run = (eps if eps is not None else 0.997 * target if target is not None else 1.0) if dp else None
    summary: dict[str, object] = {
        "unit": unit, "sigma": sigma if dp else 0.0, "test_acc": test_acc,
        "test_acc_note": FEDEMB_NOTE if user and algorithm == "dp-fedemb" else None,
        "train_time_s": train_time, "total_time_s": train_time + 10.0,
        "embedding": {"classes": [7, 8, 9], "test_examples": 3000, "recall_at_far_1e-3": recall,
                      "recall_at_far_0.1": 10 * recall, "nn1_accuracy": 0.5 + recall},
        "ledger": [{"kind": "train", "noise_multiplier": sigma if dp else 0.0, "sample_rate": 0.1, "steps": steps,
                    "unit": unit}],
    }
    if user:
        summary.update(eps_total=eps_run, eps_total_infinite=eps_run is None, eps_train=eps_run)
    else:
        summary.update(eps_total=0.05 if dp else None, eps_total_infinite=not dp, eps_user=eps_run,
                       eps_user_infinite=eps_run is None, max_per_user=84, max_per_user_public=True)
    return write_run(root, name, test_acc=test_acc or 0.0, summary=summary, **options)  # type: ignore[arg-type]


def _rows(*roots: Path) -> list[results.Row]:
    return results.aggregate(results.find_runs(roots[0] if len(roots) == 1 else list(roots))[0])


def _names(section: user_study.Section) -> list[str]:
    shown = user_study.named_axes(section.rows)
    return [user_study.name(r, shown) for r in section.rows]


def write_study(root: Path) -> Path:
    """Five configurations at user-level ε 3 and 8, U = 1,000, and one at U = 6,000; example-level runs
    whose ε per user is within 1% below a target, and two that are not; the non-private ceiling."""
    for seed in (0, 1, 2):
        for target in (3.0, 8.0):
            write_user_run(root, f"sgd_e{target:g}_s{seed}", seed=seed, target=target, recall=0.01 * target + 0.001 * seed)
        write_user_run(root, f"avg_e8_s{seed}", seed=seed, algorithm="dp-fedavg", recall=0.05 + 0.001 * seed)
        write_user_run(root, f"ex_e8_s{seed}", seed=seed, unit="example", sigma=50.4, eps=7.96, recall=0.03)
    for seed in (0, 1):
        write_user_run(root, f"emb8_e8_s{seed}", seed=seed, algorithm="dp-fedemb", k=8, lr=0.005, recall=0.02, test_acc=None)
        write_user_run(root, f"sgd_u6000_e8_s{seed}", seed=seed, users=6000, recall=0.04)
    write_user_run(root, "emb1_e8_s0", seed=0, algorithm="dp-fedemb", k=1, recall=0.015, test_acc=None)
    write_user_run(root, "sgd_pre_e8_s0", seed=0, pretrain="mnist", recall=0.045)
    write_user_run(root, "ex_e3_s0", seed=0, unit="example", sigma=116.0, eps=2.9999, recall=0.025)
    write_user_run(root, "ex_far_s0", seed=0, unit="example", sigma=60.0, eps=7.9, recall=0.02)  # 1.25% below 8
    write_user_run(root, "ex_above_s0", seed=0, unit="example", sigma=40.0, eps=8.01, recall=0.02)  # above 8
    write_user_run(root, "sgd_nodp_s0", seed=0, dp=False, recall=0.06, test_acc=0.75)
    write_user_run(root, "emb8_nodp_s0", seed=0, dp=False, algorithm="dp-fedemb", k=8, lr=0.005, recall=0.07, test_acc=None)
    return root


EX = "example-level DP-SGD (ε per user by group privacy, k = 84)"


def test_sections_group_by_user_level_epsilon_and_population(tmp_path: Path) -> None:
    secs = user_study.sections(_rows(write_study(tmp_path / "s")))
    cells = [(s.kind, s.cell[2:]) for s in secs]
    assert cells == [(user_study.AT, (3.0, 1000)), (user_study.AT, (8.0, 1000)), (user_study.AT, (8.0, 6000)),
                     (user_study.NO_TARGET, (None, 1000)), (user_study.CEILING, (None, 1000))]
    at3, at8, at8_6000, none, ceiling = secs
    assert _names(at3) == ["user-level DP-SGD", EX]  # best first by recall at FAR 1e-3
    assert _names(at8) == ["user-level DP-SGD", "DP-FedAvg", "user-level DP-SGD, pretrained on public mnist", EX,
                           "DP-FedEmb K = 8", "DP-FedEmb K = 1"]
    assert _names(at8_6000) == ["user-level DP-SGD"] and [len(r.runs) for r in at8_6000.rows] == [2]
    assert _names(none) == [EX, EX] and sorted(user_study.eps_per_user(r) for r in none.rows) == [7.9, 8.01]
    assert _names(ceiling) == ["DP-FedEmb K = 8", "user-level DP-SGD"]
    # runs calibrated to different user-level targets, or of different populations, are never averaged
    assert all(len(r.runs) == 3 for r in at3.rows[:1] + at8.rows[:1])


@pytest.mark.parametrize("eps, matched", [(7.92, 8.0), (7.9199, None), (8.0, 8.0), (8.0001, None), (2.98, 3.0), (5.0, None)])
def test_example_level_runs_sit_at_the_target_their_epsilon_per_user_is_within_1_percent_below(
        tmp_path: Path, eps: float, matched: float | None) -> None:
    root = tmp_path / "s"
    for target in (3.0, 8.0):
        write_user_run(root, f"sgd_e{target:g}", seed=0, target=target, recall=0.01)
    write_user_run(root, "ex", seed=0, unit="example", sigma=50.0, eps=eps, recall=0.02)
    rows = _rows(root)
    (ex,) = [r for r in rows if r.k["privacy_unit"] == "example"]
    assert user_study.target_of(ex, user_study.targets(rows)) == matched
    (sec,) = [s for s in user_study.sections(rows) if ex in s.rows]
    assert sec.kind == (user_study.NO_TARGET if matched is None else user_study.AT) and sec.cell[2] == matched


def test_example_level_target_epsilon_is_not_a_user_level_target(tmp_path: Path) -> None:
    """An example-level run calibrated by --target-epsilon sits where its ε per user puts it, not at its
    (example-level) target; and only user-level runs' targets are targets of the report."""
    root = tmp_path / "s"
    write_user_run(root, "sgd", seed=0, target=8.0, recall=0.01)
    d = write_user_run(root, "ex", seed=0, unit="example", sigma=2.0, eps=7.95, recall=0.02)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "target_epsilon": 3.0}))
    rows = _rows(root)
    assert user_study.targets(rows) == [8.0]
    assert [(s.cell[2], len(s.rows)) for s in user_study.sections(rows)] == [(8.0, 2)]


def test_table_means_std_seeds_and_missing_test_accuracy(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for seed, (recall, acc, seconds) in enumerate(((0.02, 0.70, 200.0), (0.03, 0.72, 300.0), (0.04, 0.74, 400.0))):
        write_user_run(root, f"sgd_{seed}", seed=seed, recall=recall, test_acc=acc, train_time=seconds, sigma=0.9376)
    write_user_run(root, "emb_0", seed=0, algorithm="dp-fedemb", k=8, recall=0.011, test_acc=None, sigma=1.872, eps=7.998)
    paths = report.report(root, tmp_path / "out", plots=False)
    md = paths["users"].read_text()
    assert "## User-level ε = 8, U = 1,000" in md
    # recall 3.00 ± 1.00 %, 1-NN 53.00 ± 1.00 %, recall at 0.1 30 ± 10 %, 3 s / round ± 1 (train_time_s / 100 rounds)
    assert ("| user-level DP-SGD | 0.1 | 3 | 72.00 ± 2.00 | 3.00 ± 1.00 | 30.00 ± 10.00 | 53.00 ± 1.00 | 3.000 ± 1.000 "
            "| 0.938 | 7.976 |") in md
    assert "| DP-FedEmb K = 8 | 0.1 | 1 | – | 1.10 | 11.00 | 51.10 | 2.500 | 1.872 | 7.998 |" in md  # one seed: no ±
    with open(paths["users_csv"]) as fh:
        lines = {r["configuration"]: r for r in csv.DictReader(fh)}
    sgd, emb = lines["user-level DP-SGD"], lines["DP-FedEmb K = 8"]
    assert (sgd["n_seeds"], sgd["seeds"], sgd["rounds"]) == ("3", "0 1 2", "100")
    assert float(sgd["recall_at_far_1e-3_mean"]) == pytest.approx(0.03) and float(sgd["recall_at_far_1e-3_std"]) == pytest.approx(0.01)
    assert float(sgd["train_s_per_round_mean"]) == pytest.approx(3.0)
    assert (emb["test_acc_mean"], emb["recall_at_far_1e-3_std"], emb["virtual_client_size"], emb["local_epochs"]) == ("", "", "8", "1")
    assert (sgd["virtual_client_size"], sgd["local_epochs"], sgd["algorithm"]) == ("", "", "dp-sgd")  # not used by dp-sgd
    # results.csv of a user-level report: the user-level statistics too
    with open(paths["csv"]) as fh:
        (row,) = [r for r in csv.DictReader(fh) if r["algorithm"] == "dp-sgd"]
    assert float(row["eps_user_mean"]) == pytest.approx(0.997 * 8) and float(row["rounds_mean"]) == 100


# (configuration, cfg) -> (recall at FAR 1e-3 per seed, test accuracy per seed or None)
VERDICT: dict[str, tuple[dict[str, object], tuple[float, ...], tuple[float, ...] | None]] = {
    "user-level DP-SGD": ({}, (0.050, 0.052, 0.054), (0.70, 0.71, 0.72)),
    "DP-FedAvg": ({"algorithm": "dp-fedavg"}, (0.030, 0.031, 0.032), (0.60, 0.62, 0.61)),
    "DP-FedEmb K = 8": ({"algorithm": "dp-fedemb", "k": 8}, (0.047, 0.054, 0.049), None),  # no test accuracy
    "user-level DP-SGD, pretrained on public mnist": ({"pretrain": "mnist"}, (0.09,), (0.9,)),  # one seed: not judged
}


def test_the_verdict_on_a_constructed_cell(tmp_path: Path) -> None:
    from scipy import stats

    root = tmp_path / "s"
    for i, (cfg, recalls, accs) in enumerate(VERDICT.values()):
        for seed, recall in enumerate(recalls):
            write_user_run(root, f"c{i}_s{seed}", seed=seed, recall=recall, test_acc=None if accs is None else accs[seed],
                           **cfg)  # type: ignore[arg-type]
    rows = _rows(root)
    (sec,) = user_study.sections(rows)
    shown = user_study.named_axes(sec.rows)
    found = {m: [(user_study.name(c.best, shown), user_study.name(c.other, shown), c.difference)
                 for c in user_study.comparisons(sec, m, shown)] for m in user_study.METRICS}
    # recall: the best of the configurations with 2+ seeds (not the one-seed pretrained run, whose mean is higher)
    assert [(a, b) for a, b, _ in found["recall_at_far_1e-3"]] == [
        ("user-level DP-SGD", "DP-FedEmb K = 8"), ("user-level DP-SGD", "DP-FedAvg")]
    # test accuracy: DP-FedEmb has none, so it is judged on recall only
    assert [(a, b) for a, b, _ in found["test_acc"]] == [("user-level DP-SGD", "DP-FedAvg")]
    exceeds = {}
    for metric, index in (("recall_at_far_1e-3", 1), ("test_acc", 2)):
        for best, other, d in found[metric]:
            a, b = VERDICT[best][index], VERDICT[other][index]
            ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)  # Welch, independently
            assert (d.low, d.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
            exceeds[(metric, other)] = d.exceeds_noise
    assert exceeds == {("recall_at_far_1e-3", "DP-FedEmb K = 8"): False, ("recall_at_far_1e-3", "DP-FedAvg"): True,
                       ("test_acc", "DP-FedAvg"): True}
    paths = report.report(root, tmp_path / "out", plots=False)
    md = paths["users"].read_text()
    assert "| test acc | user-level DP-SGD | 3 | DP-FedAvg | 3 | +10.00 [" in md and "| exceeds seed noise |" in md
    assert "| recall @ FAR 1e-3 | user-level DP-SGD | 3 | DP-FedEmb K = 8 | 3 | +0.20 [" in md and "| within seed noise |" in md
    with open(paths["users_verdict_csv"]) as fh:
        lines = [(r["metric"], r["other"], r["exceeds_seed_noise"]) for r in csv.DictReader(fh)]
    assert lines == [("test_acc", "DP-FedAvg", "True"), ("recall_at_far_1e-3", "DP-FedEmb K = 8", "False"),
                     ("recall_at_far_1e-3", "DP-FedAvg", "True")]


def test_one_seed_each_is_no_verdict(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_user_run(root, "sgd", seed=0, recall=0.02)
    write_user_run(root, "emb", seed=0, algorithm="dp-fedemb", k=1, recall=0.01, test_acc=None)
    md = report.report(root, tmp_path / "out", plots=False)["users"].read_text()
    assert "No verdict on test acc: 0 configurations with it from 2 seeds or more." in md
    assert "No verdict on recall @ FAR 1e-3: 0 configurations with it from 2 seeds or more." in md
    assert "| metric |" not in md


def test_several_sweeps_make_one_report_and_step_sizes_may_differ_by_configuration(tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "sgd", tmp_path / "emb"
    for seed in (0, 1):
        write_user_run(a, f"e8_seed{seed}", seed=seed, recall=0.02, lr=0.1)
        write_user_run(b, f"e8_seed{seed}", seed=seed, recall=0.01, algorithm="dp-fedemb", k=8, lr=0.005, head_lr_scale=10.0,
                       test_acc=None)
    runs, _ = results.find_runs([a, b])
    assert sorted(r.name for r in runs) == ["emb/e8_seed0", "emb/e8_seed1", "sgd/e8_seed0", "sgd/e8_seed1"]
    # run directories given themselves: one seed of each sweep
    assert sorted(r.name for r in results.find_runs([a / "e8_seed0", b / "e8_seed0"])[0]) == ["emb/e8_seed0", "sgd/e8_seed0"]
    assert report.main([str(a), str(b), "--no-plots"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert report.main([str(a), str(b), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| DP-FedEmb K = 8 | 0.005 | 2 |" in out and "| user-level DP-SGD | 0.1 | 2 |" in out  # users.md printed
    assert "lr" in results.varying_axes(_rows(a, b))
    # one configuration at two server lr: two rows, never averaged
    write_user_run(a, "e8_seed2", seed=2, recall=0.03, lr=0.05)
    rows = [r for r in _rows(a, b) if r.k["algorithm"] == "dp-sgd"]
    assert sorted((r.k["lr"], len(r.runs)) for r in rows) == [(0.05, 1), (0.1, 2)]
    # any other setting must still agree
    write_user_run(b, "e8_seed2", seed=2, recall=0.01, algorithm="dp-fedemb", k=8, lr=0.005, head_lr_scale=10.0,
                   test_acc=None, epochs=3)
    with pytest.raises(UsageError, match="epochs is 2"):
        _rows(a, b)


def test_step_sizes_must_agree_in_a_report_without_users(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "craig_0", method="craig", seed=0, test_acc=0.7, lr=0.1)
    write_run(tmp_path / "b", "craig_1", method="craig", seed=1, test_acc=0.7, lr=0.2)
    with pytest.raises(UsageError, match="lr is 0.1"):
        _rows(tmp_path / "a", tmp_path / "b")


def test_the_number_of_users(tmp_path: Path) -> None:
    def run(config: dict[str, object], summary: dict[str, object]) -> results.Run:
        return results.Run("r", tmp_path, config, summary, ())

    assert results.user_count(run({"users": "synthetic", "user_count": 6000}, {})) == 6000
    source = "QMNIST files in data/qmnist: 60000 train digits of 539 NIST writers (the users) / 10000 test"
    assert results.user_count(run({"dataset": "qmnist", "users": None, "max_per_user": None}, {"data_source": source,
                                                                                              "max_per_user": 150})) == 539
    ledger = [{"kind": "train", "sample_rate": 0.25, "steps": 10, "unit": "user"}]
    assert results.user_count(run({"privacy_unit": "user", "users_per_round": 50, "users": None}, {"ledger": ledger})) == 200
    assert results.user_count(run({"privacy_unit": "example", "users": None}, {"max_per_user": 3})) is None


def test_pretraining_is_a_column_of_a_user_level_results_table(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_user_run(root, "sgd", seed=0, recall=0.02)
    write_user_run(root, "pre", seed=0, recall=0.02, pretrain="mnist")
    md = report.report(root, tmp_path / "out", plots=False)["markdown"].read_text()
    assert " pretrain |" in md and "| mnist |" in md


def test_the_recall_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from test_report import _Box, _drawn, _inside, _texts

    rows = _rows(write_study(tmp_path / "s"))
    figs = report.figures(rows)
    try:
        assert set(figs) == {user_study.PLOT}  # a user-level report draws its own figure only
        fig = figs[user_study.PLOT]
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == ["fashion-mnist, cnn, U = 1,000", "fashion-mnist, cnn, U = 6,000"]
        sgd = next(c for c in panels[0].containers if c.get_label() == "user-level DP-SGD")
        line = sgd.lines[0]
        aside = plots.dodge([c.get_label() for c in panels[0].containers])["user-level DP-SGD"]
        assert list(line.get_xdata()) == pytest.approx([0.997 * 3 * aside, 0.997 * 8 * aside])  # the achieved ε per user
        assert list(line.get_ydata()) == pytest.approx([100 * 0.031, 100 * 0.081])
        assert any(line.get_linestyle() == "--" for line in panels[0].get_lines())  # the non-private ceiling
        renderer = _drawn(fig)
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
        for text, box in boxes:
            assert _inside(fig, _Box(box)), text
        for i, (a, box_a) in enumerate(boxes):
            for b, box_b in boxes[i + 1:]:
                assert not box_a.overlaps(box_b), (a, b)
        # one target: no figure (every point would sit at it)
        assert user_study.figure_names([r for r in rows if r.k["target_epsilon"] != 3.0]) == []
    finally:
        plt.close("all")
