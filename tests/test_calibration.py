"""Calibration's shortcuts change no sigma: the solver against the bisection crepe always ran (the
oracle below, copied from calibration.py before the probes), the README's anchors, epsilon at the
solved sigma at dp-accounting's full precision, and the dry run's plan line against the run's."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

import pytest

from crepe.config import TrainConfig
from crepe.privacy import accounting, calibration
from crepe.privacy.accounting import epsilon
from crepe.privacy.ledger import Ledger, parts
from crepe.training.plan import Plan

DELTA = 1e-5


def bisect_reference(eps: Callable[[float], float], *, target: float, smallest: float) -> float:
    """solve_sigma as it was: halve from SIGMA_MAX, then bisect in log sigma, evaluating every mid
    above the bracket (no probes, no monotone shortcuts)."""
    above = calibration.SIGMA_MAX / 2
    while eps(above) <= target:
        assert above > smallest
        above = max(above / 2, smallest)
    lo, hi = min(1e-2, above), calibration.SIGMA_MAX
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        e = math.inf if mid <= above else eps(mid)
        if e > target:
            lo = mid
        else:
            hi = mid
            if e >= 0.99 * target:
                return mid
    raise AssertionError("the reference did not converge")


def ledger_of(cfg: TrainConfig, n: int, size: float) -> Callable[[float], Ledger]:
    return lambda s: Plan(replace(cfg, sigma=s, select_sigma=s), n, size).ledger()


def counted(ledger_for: Callable[[float], Ledger], kinds: tuple[str, ...] | None = None) -> tuple[Callable[[float], float], list[float]]:
    seen: list[float] = []

    def eps(s: float) -> float:
        seen.append(s)
        return epsilon(ledger_for(s), delta=DELTA, accountant="pld", kinds=kinds)

    return eps, seen


def run(method: str, **kw: object) -> TrainConfig:
    return TrainConfig(**{**dict(method=method, epochs=2, batch_size=20), **kw}).resolve()  # type: ignore[arg-type]


CASES = [  # (config, n, |S|, kinds)
    (run("full"), 300, 300, None),
    (run("full", epochs=6, batch_size=2048), 60000, 60000, None),  # README's quick start
    (run("craig", epochs=3, select_every=1), 300, 30, None),
    (run("craig", epochs=3, select_every=1), 300, 30, parts()["select"]),  # --select-share solves this first
    (run("random", epochs=3, select_every=1, fraction=0.5), 300, 150.0, None),  # Poisson phases (bound P)
]


@pytest.mark.parametrize(("case", "target"), [(0, 1.0), (0, 3.0), (0, 8.0), (1, 1.0), (1, 3.0), (2, 3.0), (2, 8.0),
                                              (3, 1.0), (3, 3.0), (4, 1.0), (4, 3.0)])
def test_the_same_sigma_as_the_bisection_crepe_always_ran(case: int, target: float) -> None:
    cfg, n, size, kinds = CASES[case]
    ledger_for = ledger_of(cfg, n, size)
    eps, old_seen = counted(ledger_for, kinds)
    if eps(calibration.SIGMA_MAX) > target:
        pytest.skip("unreachable")  # the schedule's floor; the same error either way
    old = bisect_reference(eps, target=target, smallest=calibration.SIGMA_FLOOR["pld"])
    new_seen: list[float] = []

    def traced(ledger: Ledger, **k: object) -> float:
        new_seen.append(ledger[-1].noise_multiplier)
        return epsilon(ledger, **k)  # type: ignore[arg-type]

    calibration.epsilon, saved = traced, calibration.epsilon  # type: ignore[assignment]
    try:
        new = calibration.solve_sigma(ledger_for, target=target, delta=DELTA, accountant="pld", kinds=kinds)
    finally:
        calibration.epsilon = saved  # type: ignore[assignment]
    assert new == old  # bit for bit
    assert len(new_seen) <= len(old_seen)
    bracket = min(s for s in old_seen[:-1] if s in set(new_seen))  # the halving's last sigma, evaluated by both
    assert min(new_seen) >= bracket  # no probe below the bracket


@pytest.mark.parametrize(("epochs", "sigma"), [(6, 1.0032450470951384), (40, 1.8010286148066164)])
def test_the_readme_sigmas(epochs: int, sigma: float) -> None:
    """`crepe train --preset dp-recipe --method full --target-epsilon 3 [--epochs 6]` on Fashion-MNIST:
    the sigma the bisection gave before the probes (README: sigma 1.003, epsilon 2.995)."""
    cfg = run("full", epochs=epochs, batch_size=2048, target_epsilon=3.0)
    plan = Plan(cfg, 60000, 60000).solved()
    assert plan.cfg.sigma == sigma
    assert f"{epsilon(plan.ledger(), delta=DELTA):.3f}" == ("2.995" if epochs == 6 else "3.000")


def test_epsilon_at_the_solved_sigma_is_dp_accountings_at_full_precision() -> None:
    """The cached, term-by-term composition is dp-accounting's, uncached, at the grid PLD_GRID."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    assert accounting.PLD_GRID == 1e-3
    cfg = run("craig", epochs=3, select_every=1, target_epsilon=3.0)
    plan = Plan(cfg, 300, 30).solved()
    ledger = plan.ledger()
    fresh = None
    for sigma, q, steps in accounting._history(list(ledger)):  # noqa: SLF001
        one = pld_lib.from_gaussian_mechanism(standard_deviation=sigma, sampling_prob=q, value_discretization_interval=1e-3,
                                              pessimistic_estimate=True).self_compose(steps)
        fresh = one if fresh is None else fresh.compose(one)
    assert fresh is not None
    assert epsilon(ledger, delta=DELTA) == fresh.get_epsilon_for_delta(DELTA)
    assert 0.99 * 3.0 <= epsilon(ledger, delta=DELTA) <= 3.0


def test_a_dry_run_loads_neither_torch_nor_opacus(data_root) -> None:
    code = ("import sys; from crepe import cli; cli.main(['train', '--dry-run', '--dataset', 'fashion-mnist', "
            f"'--data-dir', {str(data_root)!r}, '--method', 'craig', '--train-subset', '400', '--sigma', '1']); "
            "print(','.join(m for m in ('torch', 'opacus') if m in sys.modules) or 'light')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "light", out.stdout + out.stderr
