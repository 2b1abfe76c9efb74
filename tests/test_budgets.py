"""The study's budgets (issue 11): Poisson random subsets and their ledger markers, --compute steps,
--select-share, unreachable targets, and the bad combinations of these options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crepe import _core, cli  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.config import TrainConfig
from crepe.privacy.accounting import epsilon
from crepe.privacy.calibration import SIGMA_MAX, Unreachable
from crepe.training.plan import Plan
from tests.test_runs import summary, train_args


def ledger_kinds(ledger: list) -> list[tuple[str, float, int]]:
    return [(e["kind"], e["sample_rate"], e["steps"]) for e in ledger]


def test_a_poisson_random_run_marks_each_draw_and_keeps_its_realised_size_secret(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(train_args(data_root, out, "--method", "random", "--fraction", "0.5", "--select-every", "1",
                               "--epochs", "2", "--sigma", "1.0")) == 0
    s = summary(out)
    q = 20 / 150  # B / (p n): public, whatever the draw's realised size
    assert ledger_kinds(s["ledger"]) == [("subset", 0.5, 1), ("train", q, 7), ("subset", 0.5, 1), ("train", q, 7)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["coreset_size"] == 150 and r["examples_seen"] is None for r in rows)
    assert s["coreset_size"] == 150 and s["examples_seen"] is None
    assert s["labels_public"] is False and s["caveat"] is None  # the draw reads no labels
    cfg = TrainConfig.from_dict({k: v for k, v in json.loads((out / "config.json").read_text()).items() if k != "provenance"})
    assert Plan(cfg, 300, 150).ledger().to_list() == s["ledger"]  # calibration plans what the run does


def test_a_fixed_random_draw_keeps_craigs_budgets_and_gets_no_marker(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(train_args(data_root, out, "--method", "random", "--random-draw", "fixed", "--fraction", "0.5",
                               "--epochs", "1", "--sigma", "1.0")) == 0
    s = summary(out)
    assert all(e["kind"] == "train" for e in s["ledger"])  # bound (a) only: no amplification
    assert s["coreset_size"] == 154 and s["examples_seen"] is not None  # CRAIG's per-class budgets at 0.5 sum to 154


def test_compute_steps_gives_a_small_set_the_steps_and_selection_rounds_of_the_full_run(data_root, tmp_path, capsys) -> None:
    full, small = tmp_path / "full", tmp_path / "small"
    common = ["--epochs", "2", "--sigma", "1.0", "--eval-every", "100"]
    assert cli.main(train_args(data_root, full, "--method", "full", *common)) == 0
    assert cli.main(train_args(data_root, small, "--method", "craig", "--select-every", "1", "--compute", "steps", *common)) == 0
    steps = lambda s: sum(e["steps"] for e in s["ledger"] if e["kind"] == "train")  # noqa: E731
    f, c = summary(full), summary(small)
    assert steps(f) == 2 * 15  # int(300 / 20) per epoch
    assert steps(c) == 30 and c["epochs"] == 30  # |S| = 30: one step per epoch, 30 epochs
    assert [e["kind"] for e in c["ledger"]].count("select") == 2  # as many rounds as at equal epochs
    cfg = json.loads((small / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["compute"] == "steps"  # the budget is recorded as given


def test_an_unreachable_target_names_the_smallest_reachable_epsilon() -> None:
    cfg = TrainConfig(method="craig", epochs=40, select_every=1, target_epsilon=0.05, batch_size=20).resolve()
    with pytest.raises(Unreachable, match="smallest reachable epsilon") as err:
        Plan(cfg, 300, 30).solved()
    from dataclasses import replace

    floor = epsilon(Plan(replace(cfg, sigma=SIGMA_MAX, select_sigma=SIGMA_MAX), 300, 30).ledger(), delta=1e-5)
    assert err.value.floor == pytest.approx(floor) and floor > 0.05


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "craig", "--select-share", "0.2"], "--select-share is a share of --target-epsilon"),
        (["--method", "craig", "--target-epsilon", "3", "--select-share", "0.2", "--select-sigma", "2"], "give one of them"),
        (["--method", "craig", "--target-epsilon", "3", "--select-share", "1.5"], "--select-share must be"),
        (["--method", "full", "--compute", "steps"], "--compute does not apply to --method full"),
        (["--method", "craig", "--random-draw", "fixed"], "--random-draw does not apply to --method craig"),
        (["--method", "random", "--random-draw", "bernoulli"], "valid: poisson, fixed"),
        (["--method", "random", "--compute", "hours"], "valid: epochs, steps"),
        (["--method", "random", "--select-share", "0.1", "--target-epsilon", "3"], "does not apply to --method random"),
    ],
)
def test_bad_budget_options_are_refused_with_the_allowed_values(data_root, tmp_path, capsys, argv, message) -> None:
    out = tmp_path / "run"
    assert cli.main(train_args(data_root, out, *argv)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_poisson_draw_still_takes_its_recorded_noisy_steps(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(train_args(data_root, out, "--method", "random", "--fraction", "0.0001", "--batch-size", "1",
                               "--epochs", "1", "--sigma", "1.0", "--select-every", "1")) == 0
    s = summary(out)
    assert ledger_kinds(s["ledger"]) == [("subset", 0.0001, 1), ("train", 1.0, 1)]


def test_a_poisson_random_run_publishes_no_figure_of_its_realised_sizes(data_root, tmp_path, monkeypatch) -> None:
    """Per-epoch train_acc = correct/seen and train_loss = loss/seen (and the summary's train_acc_batches)
    are rationals whose denominators give back the realised batches, hence the secret |S|: a Poisson
    run withholds them. Observed on a real run, its realised sizes traced."""
    from crepe.training import loop, rundir

    sizes: list[int] = []
    seen: list[int] = []
    from crepe.smallsets import sets

    draw, epoch = sets.poisson_subset, loop.train_epoch

    def traced_draw(*a, **k):  # type: ignore[no-untyped-def]
        s = draw(*a, **k)
        sizes.append(len(s.indices))
        return s

    def traced_epoch(*a, **k):  # type: ignore[no-untyped-def]
        es = epoch(*a, **k)
        seen.append(es.seen)
        return es

    monkeypatch.setattr(sets, "poisson_subset", traced_draw)  # the random method draws through it
    monkeypatch.setattr(loop, "train_epoch", traced_epoch)
    cfg = TrainConfig(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=200, batch_size=20,
                      method="random", fraction=0.5, select_every=1, epochs=2, sigma=1.0, threads=1,
                      noise="reproducible").resolve()
    out = tmp_path / "run"
    assert rundir.prepare_out(cfg, out, {}) == "new"
    lines: list[str] = []
    loop.run(cfg, out, log=lines.append)
    assert [line for line in lines if line.startswith("epoch ")] and all(
        "train loss - (not covered by epsilon)" in line for line in lines if line.startswith("epoch "))
    secret = {*sizes, *seen, sum(seen)}
    assert len(sizes) == 2 and 150 not in secret and all(seen)  # realised sizes differ from the public p n
    rows, s = rundir.read_metrics(out), summary(out)
    for r in rows:
        assert r["train_loss"] is None and r["train_acc"] is None
        assert r["examples_seen"] is None and r["examples_seen_total"] is None
        assert r["coreset_size"] == 150  # the public size
    assert s["train_acc_batches"] is None and s["examples_seen"] is None
    assert s["train_acc_note"] == rundir.NOT_COVERED  # train_acc: the final model on all n (public) examples
    published = [v for r in rows for v in r.values()] + [v for k, v in s.items() if k != "ledger"]
    assert not secret & {v for v in published if isinstance(v, int) and not isinstance(v, bool)}  # no realised size


# Calibration's bracket: sigma halved from SIGMA_MAX, never evaluated below the accountant's floor.

def full_run(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(method="full", epochs=1, batch_size=20), **kw}).resolve()


def evaluated_sigmas(monkeypatch, fail_below: float = 0.0) -> list[float]:
    """The sigmas calibration hands the accountant; an accountant that runs out of memory below `fail_below`."""
    from crepe.privacy import calibration

    seen: list[float] = []

    def traced(ledger, **kw):  # type: ignore[no-untyped-def]
        sigma = ledger[0].noise_multiplier
        seen.append(sigma)
        if sigma < fail_below:
            raise MemoryError("the accountant's domain exploded")
        return epsilon(ledger, **kw)

    monkeypatch.setattr(calibration, "epsilon", traced)
    return seen


@pytest.mark.parametrize(
    ("kw", "n", "size", "sigma"),
    [  # frozen before the bracket existed: the bisection is unchanged
        (dict(method="full", epochs=2, target_epsilon=4.0, accountant="rdp"), 300, 300, 0.9375737771112915),
        (dict(method="craig", epochs=3, select_every=1, target_epsilon=3.0, accountant="rdp"), 300, 30, 3.1866463204345763),
    ],
)
def test_calibration_golden_sigmas(kw, n, size, sigma) -> None:
    assert Plan(full_run(**kw), n, size).solved().cfg.sigma == sigma


@pytest.mark.parametrize(("accountant", "target"), [("prv", 3.0), ("prv", 1.0), ("rdp", 3.0), ("rdp", 50.0), ("pld", 3.0), ("pld", 20.0)])
def test_calibration_reaches_targets_without_evaluating_below_the_floor(monkeypatch, accountant, target) -> None:
    from crepe.privacy.calibration import SIGMA_FLOOR

    seen = evaluated_sigmas(monkeypatch)
    plan = Plan(full_run(accountant=accountant, target_epsilon=target), 300, 300).solved()
    cfg = plan.cfg
    eps = epsilon(plan.ledger(), delta=1e-5, accountant=accountant)
    assert 0.99 * target <= eps <= target
    assert min(seen) >= SIGMA_FLOOR[accountant] and min(seen) >= cfg.sigma / 2  # never far below the answer


def test_a_target_below_the_prv_floor_is_a_usage_error(monkeypatch) -> None:
    from crepe.config import UsageError

    seen = evaluated_sigmas(monkeypatch)
    with pytest.raises(UsageError, match="reached even at sigma = 0.5, the smallest sigma crepe evaluates with the "
                                         "prv accountant: give --sigma instead"):
        Plan(full_run(accountant="prv", target_epsilon=50.0), 300, 300).solved()  # would need sigma ~ 0.27
    assert min(seen) == 0.5


def test_an_accountant_that_fails_counts_as_above_the_target(monkeypatch) -> None:
    from crepe.config import UsageError

    cfg = full_run(target_epsilon=3.0)
    clean = Plan(cfg, 300, 300).solved().cfg.sigma  # ~0.98
    seen = evaluated_sigmas(monkeypatch, fail_below=0.7)
    assert Plan(cfg, 300, 300).solved().cfg.sigma == clean  # failures below the answer change nothing
    seen.clear()
    with pytest.raises(UsageError, match="needs a sigma below 0.7.*cannot evaluate this schedule: give --sigma instead"):
        Plan(full_run(target_epsilon=50.0), 300, 300).solved()  # sigma ~ 0.27 lies where it fails
    assert seen


@pytest.mark.parametrize(("target", "code"), [("3", 0), ("50", 2)])
def test_prv_calibration_from_the_cli(data_root, tmp_path, capsys, target, code) -> None:
    out = tmp_path / "run"
    assert cli.main(train_args(data_root, out, "--method", "full", "--epochs", "1", "--accountant", "prv",
                               "--target-epsilon", target)) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MemoryError" not in err
    if code == 0:
        assert 0.99 * 3 <= summary(out)["eps_total"] <= 3
    else:
        assert "give --sigma instead" in err and not out.exists()
