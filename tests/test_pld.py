"""The PLD accountant (crepe.privacy.accounting, "pld"), against independent computations.

- Plain ledgers: the composition dp-accounting computes from the same releases, fed by hand,
  and never above Opacus' RDP.
- Phases on a secret Poisson subset (bound P, docs/privacy.md §9), three oracles that share no
  code with crepe's mixture transform:
  * q = 1 (every step of a phase takes the whole subset, as in the 20k study): T Gaussian steps
    are one Gaussian with sigma / sqrt(T), so a phase is dp-accounting's own Poisson-subsampled
    Gaussian at rate p;
  * T = 1: a phase is one step whose example is in the batch with probability p q: a
    subsampled Gaussian at rate p q;
  * any (sigma, q, T, p, K): a NumPy computation of the privacy loss of the pair
    ((1 - p) B + p A, B) and its reverse from the exact distribution of log(A/B) under B,
    composed by FFT (`oracle_epsilon` below).
  crepe's figure must never be below the exact references and at most 10% above them (the issue's
  bar); it is within 0.1% of them in every case here, and within the NumPy oracle's own
  discretisation error (~0.5%) of the oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from crepe.privacy import accounting
from crepe.privacy import ledger as L

DELTA = 1e-5


def subset_ledger(sigma: float, q: float, *, steps: int, phases: int, p: float) -> L.Ledger:
    ledger = L.Ledger()
    for _ in range(phases):
        ledger.record(L.subset(p))
        ledger.record(L.Release(kind="train", noise_multiplier=sigma, sample_rate=q, steps=steps))
    return ledger


def dp_accounting_epsilon(sigma: float, q: float, steps: int, grid: float = 1e-5) -> float:
    from dp_accounting.pld import privacy_loss_distribution as pld

    return float(
        pld.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=grid)
        .self_compose(steps)
        .get_epsilon_for_delta(DELTA)
    )


def _compose(losses: np.ndarray, mass: np.ndarray, times: int, h: float) -> tuple[np.ndarray, np.ndarray]:
    """The distribution of the sum of `times` independent copies of (losses, mass), on a grid h
    (nearest rounding), by FFT."""
    index = np.rint(losses / h).astype(np.int64)
    low = int(index.min())
    pmf = np.bincount(index - low, weights=mass)
    size = times * (len(pmf) - 1) + 1
    n = 1 << int(math.ceil(math.log2(size)))
    out = np.fft.irfft(np.fft.rfft(pmf, n) ** times, n)[:size]
    return (times * low + np.arange(size)) * h, np.clip(out, 0, None)


def _epsilon_for_delta(losses: np.ndarray, mass: np.ndarray, infinity_mass: float) -> float:
    def delta(eps: float) -> float:
        with np.errstate(over="ignore"):  # very negative losses contribute 0
            return float(np.sum(mass * np.clip(-np.expm1(eps - losses), 0, None))) + infinity_mass

    lo, hi = 0.0, 200.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta(mid) > DELTA else (lo, mid)
    return hi


def oracle_epsilon(sigma: float, q: float, *, steps: int, phases: int, p: float, h: float = 2e-4) -> float:
    """epsilon of `phases` phases, each `steps` Poisson-subsampled Gaussian steps (sigma, q) on a
    subset drawn with probability p, from first principles.

    One step: A = (1 - q) N(0, s^2) + q N(1, s^2) (the example in the subset), B = N(0, s^2); the
    loss l(x) = log(1 - q + q e^((2x - 1) / (2 s^2))) is increasing in x, so B's mass of each loss
    bin is a difference of normal CDFs at the inverted bin edges. T steps: the T-fold sum under
    B. A phase: removal (upper (1 - p) B + p A, lower B) has loss log(1 - p + p e^L) with upper
    mass (1 - p + p e^L) b(L); addition (upper B) has loss -log(1 - p + p e^L) with mass b(L).
    Phases: the K-fold sum of each direction's loss; epsilon the larger of the two.
    """
    top = (1 + 40 * sigma) / sigma**2 + 1  # beyond: less than e^-800 of A's or B's mass
    edges = np.arange(math.log1p(-q) if q < 1 else -top, top, h)
    if q < 1:
        # the first edge, log(1 - q), inverts to x = -inf: its argument is 0, or a rounding error below it
        with np.errstate(divide="ignore"):
            x = sigma**2 * np.log(np.clip(np.expm1(edges) / q + 1.0, 0.0, None)) + 0.5
    else:
        x = sigma**2 * edges + 0.5
    x = np.append(x, np.inf)
    under_b = np.diff(stats.norm.cdf(x / sigma))
    under_a = (1 - q) * under_b + q * np.diff(stats.norm.cdf((x - 1) / sigma))
    loss = np.append((edges[:-1] + edges[1:]) / 2, edges[-1] + h / 2)
    # the T-step loss L under B and under A, each composed on its own (A's mass is never computed
    # as e^L times B's: FFT noise would be amplified)
    loss_t, b = _compose(loss, under_b, steps, h)
    _, a = _compose(loss, under_a, steps, h)
    log_stay = math.log1p(-p) if p < 1 else -np.inf
    eps = 0.0
    for phase_loss, phase_mass in (
        (np.logaddexp(log_stay, math.log(p) + loss_t), (1 - p) * b + p * a),  # removal, under (1 - p) B + p A
        (-np.logaddexp(log_stay, math.log(p) + loss_t), b),  # addition, under B
    ):
        losses, m = _compose(phase_loss, phase_mass, phases, h)
        eps = max(eps, _epsilon_for_delta(losses, m, 0.0))
    return eps


def test_a_plain_ledger_is_dp_accountings_composition_and_below_rdp() -> None:
    from dp_accounting.pld import privacy_loss_distribution as pld

    ledger = L.Ledger()
    for _ in range(3):
        ledger.record(L.Release(kind="select", noise_multiplier=3.0, sample_rate=1.0))
        ledger.record(L.Release(kind="train", noise_multiplier=1.0, sample_rate=256 / 6000, steps=460))
    by_hand = (
        pld.from_gaussian_mechanism(3.0, value_discretization_interval=accounting.PLD_GRID).self_compose(3)
        .compose(pld.from_gaussian_mechanism(1.0, sampling_prob=256 / 6000, value_discretization_interval=accounting.PLD_GRID)
                 .self_compose(1380))
    )
    eps = accounting.epsilon(ledger, delta=DELTA)
    assert eps == pytest.approx(by_hand.get_epsilon_for_delta(DELTA), rel=1e-9)
    assert eps < accounting.epsilon(ledger, delta=DELTA, accountant="rdp")
    # the grid: within 0.2% above dp-accounting at a 100x finer grid, never below it
    fine = (
        pld.from_gaussian_mechanism(3.0, value_discretization_interval=1e-5).self_compose(3)
        .compose(pld.from_gaussian_mechanism(1.0, sampling_prob=256 / 6000, value_discretization_interval=1e-5).self_compose(1380))
    ).get_epsilon_for_delta(DELTA)
    assert fine <= eps <= 1.002 * fine


def test_the_full_data_anchor_recipe() -> None:
    """Tramer & Boneh's Fashion-MNIST recipe at the published sigma = 2.15 (B = 2048 of 60,000, 40
    epochs, 29 steps each): 2.39 by PLD in an outside computation (DESIGN.md section 11); 2.38 here,
    within 0.1% of dp-accounting at a 100x finer grid."""
    ledger = L.Ledger()
    ledger.record(L.Release(kind="train", noise_multiplier=2.15, sample_rate=2048 / 60000, steps=40 * 29))
    eps = accounting.epsilon(ledger, delta=DELTA)
    assert eps == pytest.approx(2.39, abs=0.015)
    fine = dp_accounting_epsilon(2.15, 2048 / 60000, 40 * 29)
    assert fine <= eps <= 1.001 * fine


@pytest.mark.parametrize("sigma, target", [(9.49, 1.0), (5.66, 3.0), (3.49, 8.0)])
def test_the_20k_study_random_subset_is_a_subsampled_gaussian_per_phase(sigma: float, target: float) -> None:
    """The 20k study's random cells at equal steps: 3 phases of 45 steps at q = 1 (B = 2048 >= p n
    = 2,000), p = 0.1. The audit's tight sigma for epsilon 1 / 3 / 8 are 9.49 / 5.66 / 3.49."""
    ours = accounting.epsilon(subset_ledger(sigma, 1.0, steps=45, phases=3, p=0.1), delta=DELTA)
    from dp_accounting.pld import privacy_loss_distribution as pld

    exact = pld.from_gaussian_mechanism(
        sigma / math.sqrt(45), sampling_prob=0.1, value_discretization_interval=1e-5
    ).self_compose(3).get_epsilon_for_delta(DELTA)
    assert exact <= ours <= 1.001 * exact
    assert ours == pytest.approx(target, rel=0.01)
    # the bound that crepe reported before (RDP, phases by basic composition) was 2.9-3.3x this
    assert accounting.epsilon(subset_ledger(sigma, 1.0, steps=45, phases=3, p=0.1), delta=DELTA, accountant="rdp") > 2.5 * ours


@pytest.mark.parametrize("sigma, q, phases, p", [(1.0, 0.3, 200, 0.1), (2.0, 0.5, 50, 0.9), (20.0, 1.0, 100, 0.5)])
def test_one_step_per_phase_is_a_subsampled_gaussian_at_p_times_q(sigma: float, q: float, phases: int, p: float) -> None:
    ours = accounting.epsilon(subset_ledger(sigma, q, steps=1, phases=phases, p=p), delta=DELTA)
    exact = dp_accounting_epsilon(sigma, p * q, phases)
    assert exact <= ours <= 1.001 * exact


@pytest.mark.parametrize(
    "sigma, q, steps, phases, p",
    [
        (6.12, 2048 / 6000, 145, 1, 0.1),  # one phase of the 60k headline cell (q = B / (p n))
        (1.5, 0.3, 20, 3, 0.1),  # q < 1, several phases
        (2.0, 0.34, 2, 30, 0.1),  # a redraw every epoch: many short phases
        (1.0, 0.2, 10, 3, 0.9),  # p = 0.9: little to amplify
    ],
)
def test_subset_phases_against_a_numpy_oracle(sigma: float, q: float, steps: int, phases: int, p: float) -> None:
    ours = accounting.epsilon(subset_ledger(sigma, q, steps=steps, phases=phases, p=p), delta=DELTA)
    oracle = oracle_epsilon(sigma, q, steps=steps, phases=phases, p=p)
    # the oracle rounds losses to the nearest point of its grid: it is itself within ~0.5% of the
    # truth (against dp-accounting at p = 1 below), so "never below" is checked to 1% here and
    # exactly where the reference is exact (the q = 1 and T = 1 tests above)
    assert oracle * (1 - 1e-2) <= ours <= 1.10 * oracle, (ours, oracle)
    # and bound A (no amplification) is never the smaller at these settings
    plain = accounting.epsilon([e for e in subset_ledger(sigma, q, steps=steps, phases=phases, p=p) if e.kind != L.MARKER],
                               delta=DELTA)
    assert ours < plain


def test_the_oracle_knows_the_plain_subsampled_gaussian() -> None:
    """p = 1 (the subset is everything): the oracle must give dp-accounting's composition."""
    assert oracle_epsilon(1.0, 0.1, steps=100, phases=1, p=1.0) == pytest.approx(dp_accounting_epsilon(1.0, 0.1, 100), rel=5e-3)


def test_bound_a_guards_phases_that_read_the_full_data() -> None:
    """A selection round after a marker reads all n examples: its phase is not amplified."""
    ledger = list(subset_ledger(5.0, 1.0, steps=45, phases=3, p=0.1))
    ledger.insert(1, L.Release("select", 5.0, 1.0, 1))
    with_select = accounting.epsilon(ledger, delta=DELTA)
    only_train = accounting.epsilon(subset_ledger(5.0, 1.0, steps=45, phases=3, p=0.1), delta=DELTA)
    first_phase_plain = [e for e in ledger[:3] if e.kind != L.MARKER]
    assert with_select >= accounting.epsilon(first_phase_plain, delta=DELTA) > only_train


def test_pld_is_deterministic_and_cached_results_are_not_mutated() -> None:
    ledger = subset_ledger(3.0, 0.5, steps=10, phases=3, p=0.1)
    first = accounting.epsilon(ledger, delta=DELTA)
    accounting.epsilon(ledger, delta=1e-3)
    assert accounting.epsilon(ledger, delta=DELTA) == first


def test_unknown_accountant_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="pld.*rdp.*prv"):
        accounting.epsilon([], delta=DELTA, accountant="gdp")
