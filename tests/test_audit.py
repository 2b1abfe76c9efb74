"""The one-run audit (crepe/audit; DESIGN.md section 14).

1. The bound of Steinke, Nasr & Jagielski (2023) against an independent scipy computation of
   the same statement (survival functions instead of crepe's log-space pmf), its inversion
   against scipy's root finder, and the ceiling DESIGN.md quotes (1,000 guesses all right).
2. White-box canaries through the real DP optimizer: each sampled canary adds exactly C e_j to
   the clipped sum before the noise.
3. Guards on real runs: with the noise removed every guess is right (the ceiling); with the
   noise replayed from the seed (reproducible noise: the defect DESIGN.md section 9 warns of)
   eps_lb exceeds the accounted epsilon; with the noise secret eps_lb stays below it.
4. Bad input: exit 2, one message, nothing written; crepe audit on folders with and without canaries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crepe import _core, cli  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.audit import canaries as canaries_mod
from crepe.audit import fdp
from crepe.audit.bound import ceiling, epsilon_lower_bound, guess, p_value
from crepe.config import TrainConfig
from crepe.training import loop, rundir, state as ckpt


def q_of(eps: float) -> float:
    return math.exp(eps) / (1 + math.exp(eps))


def scipy_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The theorem's right side from scipy's binomial survival function, term by term."""
    f = lambda k: scipy.stats.binom.sf(k - 1, r, q_of(eps))  # P[Binomial(r, q) >= k]
    alpha = max(((f(v - i) - f(v)) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, f(v) + 2 * m * delta * alpha)


CASES = [(100, 50, 40, 1.0, 0.0), (100, 50, 40, 1.0, 1e-5), (1000, 500, 350, 0.5, 1e-5), (1000, 1000, 990, 4.0, 1e-5),
         (10, 10, 10, 2.0, 1e-3), (2000, 200, 120, 0.2, 1e-6), (50, 20, 0, 0.3, 1e-5), (1000, 100, 100, 3.0, 1e-4)]


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), CASES)
def test_p_value_is_the_theorem_computed_by_scipy(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(m=m, r=r, v=v, eps=eps, delta=delta) == pytest.approx(scipy_p_value(m, r, v, eps, delta),
                                                                          rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("r", "v"), [(50, 40), (500, 300), (1000, 1000), (200, 120)])
def test_with_delta_zero_the_bound_is_the_binomial_tail_at_beta(r: int, v: int) -> None:
    """eps_lb solves P[Binomial(r, e^eps/(1+e^eps)) >= v] = beta: scipy's root finder agrees."""
    beta = 0.05
    got = epsilon_lower_bound(m=r, r=r, v=v, delta=0.0, beta=beta)
    expected = scipy.optimize.brentq(lambda e: scipy.stats.binom.sf(v - 1, r, q_of(e)) - beta, 0.0, 50.0, xtol=1e-12)
    assert got == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize(("m", "r", "v", "delta"), [(1000, 500, 350, 1e-5), (1000, 1000, 1000, 1e-5), (100, 60, 45, 1e-3)])
def test_eps_lb_is_where_the_p_value_crosses_beta(m: int, r: int, v: int, delta: float) -> None:
    eps = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, beta=0.05)
    assert eps > 0
    # the two computations round differently: 1e-9 relative, far below the step of 1e-6 in eps
    assert scipy_p_value(m, r, v, eps, delta) <= 0.05 * (1 + 1e-9)
    assert scipy_p_value(m, r, v, eps + 1e-6, delta) > 0.05


def test_the_ceiling_of_a_thousand_right_guesses_is_designs_5_78() -> None:
    """DESIGN.md section 14: 1,000 guesses all right at 95% give 5.78 (delta 1e-5, m = 1,000). Without the
    delta term the ceiling is log(q / (1 - q)) with q^1000 = 0.05 in closed form: 5.809."""
    assert ceiling(m=1000, r=1000, delta=1e-5) == pytest.approx(5.78, abs=0.005)
    q = 0.05 ** (1 / 1000)
    assert ceiling(m=1000, r=1000, delta=0.0) == pytest.approx(math.log(q / (1 - q)), rel=1e-9)


def test_more_right_guesses_prove_more_and_chance_proves_nothing() -> None:
    bounds = [epsilon_lower_bound(m=1000, r=500, v=v, delta=1e-5) for v in (250, 280, 320, 400, 500)]
    assert bounds[0] == 0.0  # half right: what guessing at random gets
    assert all(a < b for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize(("kw", "match"), [
    (dict(m=10, r=11, v=5), "v <= r <= m"), (dict(m=10, r=5, v=6), "v <= r <= m"), (dict(m=10, r=5, v=-1), "v <= r"),
    (dict(m=10, r=5, v=2, delta=1.5), "delta"), (dict(m=10, r=5, v=2, beta=0.0), "beta"), (dict(m=10.0, r=5, v=2), "integer"),
])
def test_bad_counts_raise(kw: dict, match: str) -> None:
    kw = {"delta": 1e-5, **kw}
    with pytest.raises(ValueError, match=match):
        epsilon_lower_bound(**kw)


def test_guesses_split_between_both_ends_and_abstain_in_the_middle() -> None:
    scores = np.array([0.0, 5.0, -1.0, 3.0, 0.0, 9.0, -4.0])
    np.testing.assert_array_equal(guess(scores, 5), [0, 1, -1, 1, 0, 1, -1])  # 3 highest in, 2 lowest out
    np.testing.assert_array_equal(guess(scores, 1), [0, 0, 0, 0, 0, 1, 0])
    assert (guess(scores, 7) != 0).all()
    with pytest.raises(ValueError, match="1..7"):
        guess(scores, 8)


# ---- the f-DP conversion (Mahloujifar, Melis & Chaudhuri 2024)


def direct_objective(m: int, r: int, v: int, mu: float, beta: float) -> float:
    """The test's statement computed the slow way: every (r_i, h_i) from i = v down to 0 with no early
    stop, scipy's Phi; > 0 where mu-GDP is rejected."""
    right, wrong = [0.0] * (v + 1), [0.0] * (v + 1)
    right[v], wrong[v] = beta * v / m, beta * (r - v) / m
    for i in range(v, 0, -1):
        g = float(scipy.special.ndtr(scipy.special.ndtri(min(right[i], 1.0)) - mu))
        wrong[i - 1] = max(wrong[i], g)
        right[i - 1] = right[i] + (i - 1) / (r - i + 1) * (wrong[i - 1] - wrong[i])
    return right[0] + wrong[0] - r / m


def direct_mu_lower_bound(m: int, r: int, v: int, beta: float = 0.05) -> float:
    if direct_objective(m, r, v, 0.0, beta) <= 0:
        return 0.0
    return scipy.optimize.brentq(lambda mu: direct_objective(m, r, v, mu, beta), 0.0, 40.0, xtol=1e-10)


FDP_CASES = [(1000, 500, 422), (1000, 500, 500), (1000, 1000, 990), (1000, 100, 100), (1000, 1000, 700),
             (200, 100, 70), (50, 50, 40), (300, 20, 19), (1000, 500, 260)]


@pytest.mark.parametrize(("m", "r", "v"), FDP_CASES)
def test_fdp_bound_equals_a_direct_computation(m: int, r: int, v: int) -> None:
    assert fdp.mu_lower_bound(m=m, r=r, v=v) == pytest.approx(direct_mu_lower_bound(m, r, v), abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(2, 300), r_frac=st.floats(0.01, 1.0), v_frac=st.floats(0.0, 1.0),
       beta=st.sampled_from([0.01, 0.05, 0.2]))
def test_fdp_bound_equals_a_direct_computation_on_generated_counts(m: int, r_frac: float, v_frac: float,
                                                                    beta: float) -> None:
    r = max(1, round(r_frac * m))
    v = round(v_frac * r)
    assert fdp.mu_lower_bound(m=m, r=r, v=v, beta=beta) == pytest.approx(direct_mu_lower_bound(m, r, v, beta),
                                                                          abs=1e-7)


def pure_dp_inverse(eps: float):
    """(1 - f)^-1 for pure eps-DP: f(x) = max(0, 1 - e^eps x, e^-eps (1 - x))."""
    return lambda y: max(y * math.exp(-eps), 1 - math.exp(eps) * (1 - y), 0.0)


def fdp_pure_dp_lower_bound(m: int, r: int, v: int) -> float:
    rejected = lambda e: fdp.rejects(pure_dp_inverse(e), m=m, r=r, v=v, beta=0.05)
    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize(("m", "r", "v"), [(1000, 500, 422), (1000, 500, 350), (1000, 1000, 700), (1000, 200, 150),
                                           (1000, 500, 500), (1000, 1000, 1000), (100, 20, 20)])
def test_for_pure_dp_the_fdp_test_proves_at_most_the_exact_binomial_bound(m: int, r: int, v: int) -> None:
    """Under eps-DP the binomial tail is the exact worst case (randomised response attains it), so no valid
    test may reject more: the f-DP test with eps-DP's curve stays below bound.py's delta = 0 figure, within
    1.5% of it, and equals it when every guess is right."""
    exact = epsilon_lower_bound(m=m, r=r, v=v, delta=0.0)
    got = fdp_pure_dp_lower_bound(m, r, v)
    assert got <= exact + 1e-9
    assert got >= 0.985 * exact
    if v == r:
        assert got == pytest.approx(exact, abs=1e-8)


@pytest.mark.parametrize("mu", [0.05, 0.3, 1.0, 1.666, 2.5, 6.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_the_epsilon_of_mu_gdp_is_dp_accountings(mu: float, delta: float) -> None:
    """dp_accounting's analytic Gaussian mechanism at noise 1/mu (sensitivity 1) is mu-GDP."""
    import dp_accounting

    assert fdp.gaussian_epsilon(mu, delta) == pytest.approx(dp_accounting.get_epsilon_gaussian(1 / mu, delta),
                                                            rel=1e-7, abs=1e-9)


def test_the_fdp_conversion_holds_for_a_mu_gdp_mechanism_and_is_tighter_than_the_binomial_one() -> None:
    """The ideal canaries: score_i = mu 1{included} + N(0, 1), exactly mu-GDP in each canary. Over 200
    simulated audits (m = 1,000, r = 500) the true mu is rejected at most as often as 95% confidence allows;
    the f-DP eps_lb is above the binomial eps_lb in every audit, and both stay below the true epsilon."""
    mu, m, r, trials = 1.666, 1000, 500, 200  # mu-GDP at delta 1e-5: epsilon 8.0
    eps = fdp.gaussian_epsilon(mu, 1e-5)
    rng = np.random.default_rng(0)
    rejected, gaps = 0, []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        t = guess(rng.normal(size=m) + mu * included, r)
        v = int((t == np.where(included, 1, -1))[t != 0].sum())
        rejected += fdp.rejects(fdp.gaussian_inverse(mu), m=m, r=r, v=v, beta=0.05)
        if len(gaps) < 20:
            lb, lb_fdp = epsilon_lower_bound(m=m, r=r, v=v, delta=1e-5), fdp.epsilon_lower_bound(m=m, r=r, v=v,
                                                                                                delta=1e-5)
            assert lb < lb_fdp < eps
            gaps.append(lb_fdp - lb)
    assert rejected <= 0.05 * trials
    assert np.median(gaps) > 1.0  # eps 8 with 1,000 ideal canaries: ~2.1 (binomial), ~3.7 (f-DP)


def test_fdp_golden_values_and_ceiling() -> None:
    """Frozen for delta = 1e-5, 95%: the f-DP ceilings of 500 and 1,000 right guesses of 1,000 and the count
    of the fmnist20k eps = 8 run (422 of 500; docs/results.md section 8)."""
    assert fdp.ceiling(m=1000, r=500, delta=1e-5) == pytest.approx(9.9194, abs=1e-4)
    assert fdp.ceiling(m=1000, r=1000, delta=1e-5) == pytest.approx(12.3346, abs=1e-4)
    assert fdp.mu_lower_bound(m=1000, r=500, v=422) == pytest.approx(0.62661, abs=1e-5)
    assert fdp.epsilon_lower_bound(m=1000, r=500, v=422, delta=1e-5) == pytest.approx(2.5673, abs=1e-4)
    assert fdp.epsilon_lower_bound(m=1000, r=500, v=250, delta=1e-5) == 0.0  # half right proves nothing


def test_a_weaker_curve_is_rejected_wherever_a_stronger_one_is() -> None:
    """The bisection over mu needs the rejected set to be an interval [0, mu_lb]: checked on a grid."""
    for m, r, v in [(1000, 500, 422), (200, 100, 70), (1000, 1000, 990)]:
        verdicts = [fdp.rejects(fdp.gaussian_inverse(mu), m=m, r=r, v=v, beta=0.05) for mu in np.linspace(0, 4, 81)]
        assert verdicts == sorted(verdicts, reverse=True)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: fdp.rejects(fdp.gaussian_inverse(1.0), m=10, r=5, v=6, beta=0.05), "v <= r <= m"),
    (lambda: fdp.rejects(fdp.gaussian_inverse(1.0), m=10, r=5, v=2, beta=1.0), "beta"),
    (lambda: fdp.mu_lower_bound(m=10, r=5.0, v=2), "integer"),
    (lambda: fdp.gaussian_epsilon(1.0, 0.0), "delta must lie in"),
])
def test_fdp_bad_input_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---- canaries in the DP optimizer


def test_a_sampled_canary_adds_exactly_C_e_j_before_the_noise() -> None:
    """At q = 1 every included canary is sampled at every step; with noise 0 the score of canary i
    (released sum at j_i minus the real clipped sum there) is C per step, or 0 when excluded."""
    from opacus import GradSampleModule

    from crepe.dp.clipping import make_clip_rule
    from crepe.dp.optimizer import DPOptimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    C = 0.7
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0,
                      clip_rule=make_clip_rule("flat", max_grad_norm=C), generator=None, on_release=lambda r: None)
    d = sum(p.numel() for p in model.parameters())
    canaries = canaries_mod.WhiteBox.draw(d, opt.params, torch.Generator().manual_seed(1))  # every coordinate
    opt.canaries = canaries
    opt.start_set(sample_rate=1.0, normaliser=4.0, expected_examples=4.0)
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert 0 < int(canaries.included.sum()) < d
    expected = np.where(canaries.included.numpy(), 3 * C, 0.0)
    np.testing.assert_allclose(canaries.scores.numpy(), expected, atol=1e-5)
    assert canaries.steps == 3
    assert sorted(canaries.coords.tolist()) == list(range(d))  # distinct coordinates


def test_more_canaries_than_parameters_is_refused() -> None:
    from crepe.config import UsageError

    params = [torch.zeros(3, 2), torch.zeros(4)]
    with pytest.raises(UsageError, match="the model has 10 trainable parameters; give at most 10"):
        canaries_mod.WhiteBox.draw(11, params, torch.Generator().manual_seed(0))


# ---- the guards, on real runs

M, SIGMA = 1000, 3.0  # B = 150 of 300 examples: q = 1/2, 2 steps an epoch, 10 epochs


def config(data_root: Path, **kw) -> TrainConfig:
    base = dict(dataset="fashion-mnist", data_dir=str(data_root), train_subset=300, test_subset=50, method="full",
                epochs=10, batch_size=150, sigma=SIGMA, accountant="pld", noise="reproducible", threads=1,
                audit_canaries=M)
    base.update(kw)
    return TrainConfig(**base).resolve()


def train(cfg: TrainConfig, out: Path) -> dict:
    assert rundir.prepare_out(cfg, out, {}) == "new"
    return loop.run(cfg, out, log=lambda s: None)


def test_without_noise_every_guess_is_right_and_the_audit_reaches_its_ceiling(data_root, tmp_path, monkeypatch) -> None:
    """The noise removed where Opacus draws it (sigma = 0 in effect): the released sum minus the real part
    is C times the canary's draws, 0 for an excluded one. 20 steps at q = 1/2: every included canary is
    drawn (miss probability 2^-20 each)."""
    import opacus.optimizers.optimizer as opacus_optimizer

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    summary = train(config(data_root), tmp_path / "run")
    audit = json.loads((tmp_path / "run" / rundir.AUDIT).read_text())
    r = M // 2
    assert (audit["canaries"], audit["guesses"], audit["correct"]) == (M, r, r)
    assert audit["eps_lb"] == pytest.approx(ceiling(m=M, r=r, delta=1e-5), rel=1e-12)
    assert audit["eps_lb"] > summary["eps_total"]  # the noise is gone: the audit says so
    assert audit["eps_lb_fdp"] == pytest.approx(fdp.ceiling(m=M, r=r, delta=1e-5), rel=1e-12) == audit["ceiling_fdp"]
    assert summary["audit"]["eps_lb"] == audit["eps_lb"] and summary["audit"]["eps_lb_fdp"] == audit["eps_lb_fdp"]


@pytest.mark.parametrize("kw", [dict(method="craig", fraction=0.5, select_every=5, batch_size=75),
                                dict(method="random", random_draw="fixed", fraction=0.5, batch_size=75,
                                     clipping="adaptive")], ids=["craig", "random-fixed-adaptive"])
def test_canaries_ride_the_small_set_paths_too(data_root, tmp_path, monkeypatch, kw) -> None:
    """CRAIG (weighted clip-then-scale, a new set and q per round) and a fixed random subset under
    adaptive clipping (C moves, the canary counts as unclipped): noise removed, every guess right;
    the ceiling is above the train part of epsilon only because the noise is gone."""
    import opacus.optimizers.optimizer as opacus_optimizer

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    summary = train(config(data_root, audit_canaries=400, **kw), tmp_path / "run")
    audit = summary["audit"]
    assert (audit["guesses"], audit["correct"]) == (200, 200)
    assert audit["eps_upper"] == summary["eps_train"]


def replayed_noise(cfg: TrainConfig, params: list[torch.Tensor], coords: torch.Tensor, steps: int) -> np.ndarray:
    """What anyone who reads --seed of a reproducible-noise run can compute: the noise generator's key
    (loop.seeds), and from it every draw Opacus made, step by step, parameter by parameter."""
    from crepe.dp.secret_rng import keyed_generator

    g = keyed_generator(loop.seeds(cfg)[1], "noise")
    total = torch.zeros(len(coords), dtype=torch.float64)
    for _ in range(steps):
        flat = torch.cat([torch.normal(0.0, cfg.sigma * cfg.max_grad_norm, size=p.shape, generator=g).reshape(-1)
                          for p in params])
        total += flat[coords].to(torch.float64)
    return total.numpy()


@pytest.fixture(scope="module")
def replayable_run(data_root, tmp_path_factory):
    """A reproducible-noise run kept whole (--keep-secrets): its canaries, and the noise from its seed."""
    cfg = config(data_root, keep_secrets=True)
    out = tmp_path_factory.mktemp("audit") / "run"
    summary = train(cfg, out)
    held = ckpt.load(out / rundir.CHECKPOINT, cfg=cfg, fingerprint=None)
    from crepe.models import build_model

    params = [p for p in build_model(cfg.model, activation=cfg.activation).parameters() if p.requires_grad]
    return cfg, out, summary, held["state"]["canaries"], params


def test_replayed_noise_lets_the_audit_exceed_the_accounted_epsilon(replayable_run) -> None:
    cfg, out, summary, canaries, params = replayable_run
    noise = replayed_noise(cfg, params, canaries["coords"], int(canaries["steps"]))
    clean = canaries["scores"].numpy() - noise  # C times each canary's draws, up to float rounding
    assert np.abs(clean[~canaries["included"].numpy()]).max() < 1e-3 * cfg.max_grad_norm
    honest = json.loads((out / rundir.AUDIT).read_text())
    replayed = canaries_mod.record({**canaries, "scores": torch.from_numpy(clean)}, guesses=cfg.guesses,
                                   delta=cfg.delta, eps_upper=summary["eps_train"], epochs_done=10, complete=True)
    assert replayed["correct"] == replayed["guesses"] == M // 2
    assert replayed["eps_lb"] > summary["eps_train"] == honest["eps_upper"]  # the defect is caught
    assert replayed["eps_lb_fdp"] > replayed["eps_lb"]  # and more plainly by the f-DP conversion
    assert honest["eps_lb"] <= summary["eps_train"]  # the noise not replayed: within the bound


def test_canaries_leave_the_ledger_as_planned_for_the_real_examples(replayable_run, data_root) -> None:
    """q stays B/n (public): a run with canaries records the ledger of the same run without them."""
    from dataclasses import replace

    from crepe.training.plan import Plan

    cfg, _, summary, _, _ = replayable_run
    plain = replace(cfg, audit_canaries=None)
    assert summary["ledger"] == Plan.of(plain, counts=[30] * 10).ledger().to_list()
    assert summary["ledger"] == [{"kind": "train", "noise_multiplier": SIGMA, "sample_rate": 0.5, "steps": 20,
                                  "unit": "example"}]


def test_with_secret_noise_the_audit_stays_below_epsilon(data_root, tmp_path) -> None:
    summary = train(config(data_root, noise="secret"), tmp_path / "run")
    audit = json.loads((tmp_path / "run" / rundir.AUDIT).read_text())
    assert audit["eps_lb"] <= audit["eps_upper"] == summary["eps_train"]
    assert audit["eps_lb"] <= audit["eps_lb_fdp"] <= audit["eps_upper"]  # the Gaussian curve's bound, tighter
    assert audit["correct"] <= audit["guesses"] == M // 2
    # the secrets went with the run's end: the checkpoint has no canaries, audit.json no score, bit or coordinate
    cfg = rundir.read_config(tmp_path / "run")
    assert "canaries" not in ckpt.load(tmp_path / "run" / rundir.CHECKPOINT, cfg=cfg, fingerprint=None)["state"]
    assert not {"scores", "included", "coords"} & set(audit)


def test_an_interrupted_run_is_audited_from_its_checkpoint_and_resumes_to_the_same_audit(data_root, tmp_path,
                                                                                          capsys) -> None:
    cfg = config(data_root, epochs=4, audit_canaries=200)
    whole = train(cfg, tmp_path / "whole")
    assert rundir.prepare_out(cfg, tmp_path / "cut", {}) == "new"
    assert loop.run(cfg, tmp_path / "cut", stop_after_epochs=2, log=lambda s: None)["status"] == "incomplete"
    assert cli.main(["audit", str(tmp_path / "cut")]) == 0
    partial = json.loads((tmp_path / "cut" / rundir.AUDIT).read_text())
    assert (partial["complete"], partial["epochs_done"], partial["steps"]) == (False, 2, 4)
    assert "unfinished run: after 2 epochs" in capsys.readouterr().err
    resumed = loop.run(cfg, tmp_path / "cut", log=lambda s: None)
    assert resumed["audit"] == whole["audit"]  # the canaries and their scores survived the restart
    assert cli.main(["audit", str(tmp_path / "cut")]) == 0  # now read back from audit.json
    out = capsys.readouterr()
    assert f"eps_lb {whole['audit']['eps_lb']:.3f}" in out.out and "crepe audit: read" in out.err
    assert f"Gaussian: {whole['audit']['eps_lb_fdp']:.3f})" in out.out
    # an audit.json written before the f-DP conversion: crepe audit adds it from the counts, leaves the file
    path = tmp_path / "cut" / rundir.AUDIT
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("mu_lb", "eps_lb_fdp", "ceiling_fdp",
                                                                             "meaning_fdp")}
    path.write_text(json.dumps(old))
    assert cli.main(["audit", str(tmp_path / "cut")]) == 0
    assert f"Gaussian: {whole['audit']['eps_lb_fdp']:.3f})" in capsys.readouterr().out
    assert json.loads(path.read_text()) == old


def test_a_calibrated_craig_run_takes_canaries_and_a_calibrated_poisson_subset_is_still_refused() -> None:
    """The refusal of --random-draw poisson reads a round's releases, which for CRAIG need sigma_sel: the
    plan checks it after solving sigma from --target-epsilon (it used to stop on an assertion)."""
    from crepe.config import UsageError
    from crepe.training.plan import Plan

    base = dict(dataset="fashion-mnist", fraction=0.1, epochs=3, select_every=1, target_epsilon=3.0,
                audit_canaries=100, batch_size=50)
    plan = Plan.of(TrainConfig(method="craig", **base).resolve(), counts=[100] * 10)
    assert plan.cfg.sigma is not None and plan.cfg.select_sigma == plan.cfg.sigma
    with pytest.raises(UsageError, match="--random-draw poisson"):
        Plan.of(TrainConfig(method="random", **base).resolve(), counts=[100] * 10)


# ---- bad input


def train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
            "--train-subset", "100", "--test-subset", "50", "--epochs", "1", *extra]


@pytest.mark.parametrize(("extra", "match"), [
    (["--audit-canaries", "0"], "--audit-canaries must be an integer >= 1, got 0"),
    (["--audit-canaries", "10", "--audit-guesses", "11"], "--audit-guesses 11 is more than the 10 canaries"),
    (["--audit-guesses", "5"], "--audit-guesses applies to --audit-canaries only"),
    (["--audit-canaries", "10", "--audit", "black-box"], "unknown audit 'black-box'; valid: white-box"),
    (["--no-dp", "--audit-canaries", "10"], "--audit-canaries 10 needs DP training"),
    (["--method", "private-set", "--audit-canaries", "10"], "--method private-set trains on data that reads no private"),
    (["--method", "random", "--audit-canaries", "10"], "--random-draw poisson"),
    (["--method", "full", "--audit-canaries", "1000000"], "the model has 26010 trainable parameters"),
])
def test_bad_audit_flags_exit_2_and_write_nothing(data_root, tmp_path, capsys, extra: list[str], match: str) -> None:
    out = tmp_path / "run"
    assert cli.main(train_args(data_root, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("crepe train: error:") and len(err.strip().splitlines()) == 1, err
    assert match in err, err
    assert not out.exists()


def test_crepe_audit_refuses_a_folder_without_canaries(data_root, tmp_path, capsys) -> None:
    cfg = TrainConfig(dataset="fashion-mnist", data_dir=str(data_root)).resolve()
    rundir.prepare_out(cfg, tmp_path / "run", {})
    assert cli.main(["audit", str(tmp_path / "run")]) == 2
    assert "was trained without audit canaries: nothing to audit" in capsys.readouterr().err
    assert cli.main(["audit", str(tmp_path / "nowhere")]) == 2
    assert "is not a crepe run folder" in capsys.readouterr().err
    assert not (tmp_path / "run" / rundir.AUDIT).exists()


def test_crepe_train_audits_ones_own_model_and_refuses_more_canaries_than_it_has_parameters(tmp_path) -> None:
    import crepe
    from crepe.config import UsageError

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 8, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))  # 195 parameters
    with pytest.raises(UsageError, match="the model has 195 trainable parameters; give at most 195"):
        crepe.train(model, (x, y), method="full", epochs=1, audit_canaries=196, out=tmp_path / "no")
    assert not (tmp_path / "no").exists()
    result = crepe.train(model, (x, y), method="full", sigma=2.0, epochs=3, batch_size=30, audit_canaries=195,
                         audit_guesses=20, out=tmp_path / "run", log=lambda s: None)
    audit = result.summary["audit"]
    assert (audit["canaries"], audit["guesses"]) == (195, 20) and audit["eps_upper"] == result.epsilons["train"]
    assert json.loads((tmp_path / "run" / rundir.AUDIT).read_text())["eps_lb"] == audit["eps_lb"] <= result.epsilon
