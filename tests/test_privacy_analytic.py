"""Selection rounds are plain Gaussian mechanisms (sample rate 1): their epsilon
has an exact closed form (Balle & Wang 2018, Theorem 8), independent of any
accountant. Both accountants must bound it from above; PRV within its error."""

from __future__ import annotations

import math

import pytest

from crepe.privacy import accounting
from crepe.privacy import ledger as L
from crepe.training import rundir

DELTA = 1e-5


def gaussian_delta(eps: float, sigma: float) -> float:
    """delta(eps) of the Gaussian mechanism with sensitivity 1 and noise std sigma."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731 (standard normal CDF)
    return phi(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * phi(-eps * sigma - 1 / (2 * sigma))


def gaussian_epsilon(delta: float, sigma: float, rounds: int) -> float:
    """Exact epsilon of `rounds` composed Gaussian mechanisms (= one with sigma / sqrt(rounds))."""
    s = sigma / math.sqrt(rounds)
    lo, hi = 0.0, 200.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, s) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("sigma", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("rounds", [1, 3])
def test_selection_epsilon_bounds_the_exact_gaussian_epsilon(sigma: float, rounds: int) -> None:
    ledger = L.Ledger()
    for _ in range(rounds):
        ledger.record(L.Release(kind="select", noise_multiplier=sigma, sample_rate=1.0))
        ledger.record(L.Release(kind="train", noise_multiplier=sigma, sample_rate=0.1, steps=10))
    exact = gaussian_epsilon(DELTA, sigma, rounds)
    prv = accounting.epsilons(ledger, delta=DELTA, accountant="prv")["select"]
    rdp = accounting.epsilons(ledger, delta=DELTA, accountant="rdp")["select"]
    assert exact <= prv <= exact + 0.011  # Opacus PRV: upper bound with eps_error 0.01
    assert exact <= rdp <= exact * 1.12  # RDP: valid, somewhat looser
