"""The user-level epsilon of example-level runs by group privacy (crepe.privacy.group), against
outside figures and independent computations.

- Outside anchors (DESIGN.md §11, delta = 1e-5): the Tramer & Boneh FMNIST recipe at sigma = 2.15
  (B = 2048, n = 60000, 40 epochs) gives 2.39 per example and 5.3 / 16.2 / 41.5 per user at
  k = 2 / 5 / 10; they reproduce at floor(40 n / B) = 1171 steps, the paper's 40 epochs (crepe's
  int(1/q) = 29 steps per epoch, 1160 steps, gives 2.38 per example). The second anchor, crepe's
  sigma = 1.927 over 1160 steps quoted as 2.80 per example and 6.16 / 18.3 per user at k = 2 / 5,
  does NOT reproduce: crepe gets 2.740 / 6.102 / 19.02 (the per-example figure is the plain
  example-level PLD of `accounting.epsilon`), held as crepe's golden values, with the outside
  figures kept as a strict xfail.
- k = 1 is the example-level epsilon; the mixture machinery at k = 1 agrees with the Gaussian one.
- One step: dp-accounting's PLD of the mixture against the hockey-stick divergence integrated
  numerically in NumPy, both directions; the numerical RDP at k = 1 against Opacus' compute_rdp.
- Soundness of the scalar reduction: a 2-D vector mixture with shifts of norm <= |J| is never
  above the aligned scalar mixture (numerical integration in the plane).
- Selection rounds (sqrt(k)) and q = 1 sums (k) against the analytic Gaussian.
- Monotone in k, rdp >= pld, markers, unit "user", bad input.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import optimize, stats

from crepe.config import UsageError
from crepe.privacy import accounting, group
from crepe.privacy import ledger as L

DELTA = 1e-5
Q_RECIPE = 2048 / 60000


def train(sigma: float, q: float, steps: int) -> L.Ledger:
    return L.Ledger([L.Release(kind="train", noise_multiplier=sigma, sample_rate=q, steps=steps)])


@functools.lru_cache(maxsize=None)
def recipe(sigma: float, steps: int, k: int, accountant: str = "pld") -> float:
    return group.user_epsilon(train(sigma, Q_RECIPE, steps), k=k, delta=DELTA, accountant=accountant)


# ---- outside anchors

def test_tramer_recipe_anchor_at_published_sigma() -> None:
    steps = math.floor(40 * 60000 / 2048)  # 1171: the paper's 40 epochs
    assert steps == 1171
    assert round(recipe(2.15, steps, 1), 2) == 2.39
    assert round(recipe(2.15, steps, 2), 1) == 5.3
    assert round(recipe(2.15, steps, 5), 1) == 16.2
    assert round(recipe(2.15, steps, 10), 1) == 41.5
    # crepe's schedule, int(1/q) = 29 steps per epoch: the 2.38 docs/privacy.md §3 quotes
    assert round(accounting.epsilon(train(2.15, Q_RECIPE, 40 * 29), delta=DELTA), 2) == 2.38


def test_crepe_sigma_golden() -> None:
    """crepe's sigma = 1.927 (RDP-calibrated to 3 over 1160 steps): crepe's own figures."""
    assert recipe(1.927, 1160, 1) == pytest.approx(2.740, abs=1e-3)
    assert recipe(1.927, 1160, 2) == pytest.approx(6.102, abs=1e-3)
    assert recipe(1.927, 1160, 5) == pytest.approx(19.02, abs=1e-2)


@pytest.mark.xfail(reason="the outside figures for sigma = 1.927 (2.80 / 6.16 / 18.3) do not reproduce: "
                          "crepe gets 2.740 / 6.102 / 19.02; see docs/privacy.md §10", strict=True)
def test_crepe_sigma_outside_anchor() -> None:
    got = [round(recipe(1.927, 1160, 1), 2), round(recipe(1.927, 1160, 2), 2), round(recipe(1.927, 1160, 5), 1)]
    assert got == [2.80, 6.16, 18.3]


# ---- k = 1 is the example-level epsilon

def mixed_ledger() -> L.Ledger:
    """Every kind once (mixture PLDs at these sigmas cost about a second each to build)."""
    ledger = L.Ledger()
    ledger.record(L.Release(kind="select", noise_multiplier=3.0, sample_rate=1.0))
    ledger.record(L.Release(kind="train", noise_multiplier=2.5, sample_rate=0.01, steps=300))
    ledger.record(L.Release(kind="generate", noise_multiplier=3.0, sample_rate=0.02, steps=50))
    return ledger


def marker_ledger() -> L.Ledger:
    ledger = L.Ledger()
    for _ in range(2):
        ledger.record(L.subset(0.1))
        ledger.record(L.Release(kind="train", noise_multiplier=3.0, sample_rate=0.02, steps=100))
    return ledger


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("make", [mixed_ledger, marker_ledger])
def test_k1_is_example_level(make, accountant) -> None:
    ledger = make()
    for kinds in (None, ("train",), ("select", "generate")):
        assert group.user_epsilon(ledger, k=1, delta=DELTA, accountant=accountant, kinds=kinds) == accounting.epsilon(
            ledger, delta=DELTA, accountant=accountant, kinds=kinds)
    assert group.user_epsilons(ledger, k=1, delta=DELTA, accountant=accountant) == accounting.epsilons(
        ledger, delta=DELTA, accountant=accountant)


def test_mixture_machinery_at_k1_matches_gaussian() -> None:
    """The k > 1 code paths (mixture PLD, numerical RDP), run at k = 1, against the example-level ones."""
    for sigma, q, steps in [(2.15, Q_RECIPE, 1160), (1.0, 0.2, 30)]:
        pld = group.step_pld(sigma, q, 1, "sum").self_compose(steps).get_epsilon_for_delta(DELTA)
        assert pld == pytest.approx(accounting.epsilon(train(sigma, q, steps), delta=DELTA), rel=1e-6)
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as analysis

        opacus = np.asarray(analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS))
        np.testing.assert_allclose(group.step_rdp(sigma, q, 1, "sum"), opacus, rtol=1e-6)


# ---- one step against numerical integration

def hockey_stick(sigma: float, q: float, k: int, eps: float) -> tuple[float, float]:
    """(H_{e^eps}(P || Q), H_{e^eps}(Q || P)), P = sum_j Binom(k, q)(j) N(j, sigma^2), Q = N(0, sigma^2),
    by a Riemann sum of the positive part on a fine grid (no monotonicity or PLD used)."""
    j = np.arange(k + 1)
    w = stats.binom.pmf(j, k, q)
    x = np.linspace(-30 * sigma, k + 30 * sigma, 400_001)
    h = x[1] - x[0]
    p = (w[:, None] * stats.norm.pdf(x[None, :], loc=j[:, None], scale=sigma)).sum(axis=0)
    qq = stats.norm.pdf(x, scale=sigma)
    return float(np.maximum(p - math.exp(eps) * qq, 0).sum() * h), float(np.maximum(qq - math.exp(eps) * p, 0).sum() * h)


@pytest.mark.parametrize("sigma,q,k", [(2.15, Q_RECIPE, 10), (2.5, 0.01, 5), (2.0, 0.3, 3), (1.5, 0.1, 2)])
def test_one_step_pld_against_integration(sigma, q, k) -> None:
    pld = group.step_pld(sigma, q, k, "sum")
    for eps in (0.1, 0.5, 1.0, 2.0):
        remove, add = hockey_stick(sigma, q, k, eps)
        # dp-accounting's REMOVE holds the pair (P, Q) (mirrored), ADD the pair (Q, P)
        assert pld._pmf_remove.get_delta_for_epsilon(eps) == pytest.approx(remove, rel=1e-6, abs=1e-15)  # noqa: SLF001
        assert pld._pmf_add.get_delta_for_epsilon(eps) == pytest.approx(add, rel=1e-6, abs=1e-15)  # noqa: SLF001
    # and the epsilon one step reports is the larger direction's, at delta
    one = group.user_epsilon(train(sigma, q, 1), k=k, delta=1e-3, accountant="pld")
    assert max(hockey_stick(sigma, q, k, one)) == pytest.approx(1e-3, rel=1e-3)


def test_vector_mixture_dominated_by_aligned_scalar() -> None:
    """Shifts v_J = sum_{i in J} g_i of 2-D vectors with |g_i| <= 1 (the user's clipped gradients):
    the hockey-stick divergence never exceeds the aligned scalar mixture's (equality when aligned)."""
    sigma, q, k = 1.0, 0.3, 3
    rng = np.random.default_rng(0)
    g = np.linspace(-8.0, 11.0, 951)
    h = g[1] - g[0]
    x, y = np.meshgrid(g, g, indexing="ij")
    base = stats.norm.pdf(x, scale=sigma) * stats.norm.pdf(y, scale=sigma)
    configs = [np.array([[1.0, 0.0]] * k)]  # aligned
    for _ in range(4):
        angles = rng.uniform(0, 2 * np.pi, k)
        radii = rng.uniform(0.3, 1.0, k)
        configs.append(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))
    for eps in (0.2, 1.0):
        remove, add = hockey_stick(sigma, q, k, eps)
        for n, vecs in enumerate(configs):
            p = np.zeros_like(base)
            for mask in range(2**k):
                members = [i for i in range(k) if mask >> i & 1]
                v = vecs[members].sum(axis=0) if members else np.zeros(2)
                weight = q ** len(members) * (1 - q) ** (k - len(members))
                p += weight * stats.norm.pdf(x, loc=v[0], scale=sigma) * stats.norm.pdf(y, loc=v[1], scale=sigma)
            vec_remove = float(np.maximum(p - math.exp(eps) * base, 0).sum() * h * h)
            vec_add = float(np.maximum(base - math.exp(eps) * p, 0).sum() * h * h)
            if n == 0:
                assert vec_remove == pytest.approx(remove, rel=1e-4) and vec_add == pytest.approx(add, rel=1e-4, abs=1e-12)
            else:
                assert vec_remove <= remove * (1 + 1e-4) and vec_add <= add * (1 + 1e-4) + 1e-12


# ---- selection rounds and full batches: Gaussians

def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """epsilon at delta of a Gaussian of sensitivity/noise mu (Balle & Wang 2018, both directions alike)."""
    def gap(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(gap, 0.0, 200.0, xtol=1e-12)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_selection_rounds_move_by_sqrt_k(accountant) -> None:
    """Three selection rounds at sigma_sel = 3, k = 4: the user's 4 rows move the release by 2 in noise
    units, so three rounds are one Gaussian with mu = 2 sqrt(3) / 3."""
    ledger = L.Ledger([L.Release(kind="select", noise_multiplier=3.0, sample_rate=1.0, steps=3)])
    got = group.user_epsilon(ledger, k=4, delta=DELTA, accountant=accountant)
    exact = analytic_gaussian_epsilon(2 * math.sqrt(3) / 3, DELTA)
    as_example = accounting.epsilon(L.Ledger([L.Release("select", 1.5, 1.0, 3)]), delta=DELTA, accountant=accountant)
    assert got == pytest.approx(as_example, rel=1e-9)
    if accountant == "pld":
        assert exact <= got <= exact * 1.001
    else:
        assert got >= exact


def test_full_batch_sum_moves_by_k() -> None:
    ledger = train(4.0, 1.0, 10)  # q = 1: all k examples in every batch
    got = group.user_epsilon(ledger, k=3, delta=DELTA)
    exact = analytic_gaussian_epsilon(3 * math.sqrt(10) / 4, DELTA)
    assert exact <= got <= exact * 1.001


# ---- shape of the answer

@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_monotone_in_k(accountant) -> None:
    ledger = mixed_ledger()
    eps = [group.user_epsilon(ledger, k=k, delta=DELTA, accountant=accountant) for k in range(1, 6)]
    assert all(a < b for a, b in zip(eps, eps[1:])), eps


def test_rdp_above_pld() -> None:
    for k in (1, 2, 5, 10):
        assert recipe(2.15, 1171, k, "rdp") >= recipe(2.15, 1171, k, "pld")
    for k in (2, 3):
        ledger = mixed_ledger()
        assert group.user_epsilon(ledger, k=k, delta=DELTA, accountant="rdp") >= group.user_epsilon(ledger, k=k, delta=DELTA)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_markers_give_no_amplification_for_groups(accountant) -> None:
    ledger = marker_ledger()
    plain = L.Ledger([r for r in ledger if not r.marker])
    k2 = group.user_epsilon(ledger, k=2, delta=DELTA, accountant=accountant)
    assert k2 == group.user_epsilon(plain, k=2, delta=DELTA, accountant=accountant)
    assert k2 > accounting.epsilon(ledger, delta=DELTA, accountant=accountant)  # k = 1 is amplified
    assert k2 > accounting.epsilon(plain, delta=DELTA, accountant=accountant)


def test_parts() -> None:
    ledger = mixed_ledger()
    got = group.user_epsilons(ledger, k=3, delta=DELTA)
    assert set(got) == {"total", "select", "train"}
    assert got["total"] > max(got["select"], got["train"])
    assert got["train"] == group.user_epsilon(ledger, k=3, delta=DELTA, kinds=("train",))


def test_user_unit_ledger_is_its_own_epsilon() -> None:
    ledger = L.Ledger([L.Release(kind="train", noise_multiplier=1.3, sample_rate=0.1, steps=300, unit="user")])
    for k in (1, 5):
        assert group.user_epsilon(ledger, k=k, delta=DELTA) == accounting.epsilon(ledger, delta=DELTA)


def test_empty_and_noiseless() -> None:
    assert group.user_epsilon(L.Ledger(), k=3, delta=DELTA) == 0.0
    assert group.user_epsilon(mixed_ledger(), k=3, delta=DELTA, kinds=()) == 0.0
    ledger = mixed_ledger()
    ledger.record(L.Release(kind="select", noise_multiplier=0.0, sample_rate=1.0))
    assert group.user_epsilon(ledger, k=3, delta=DELTA) == math.inf
    assert group.user_epsilon(ledger, k=3, delta=DELTA, kinds=("train",)) < math.inf


# ---- bad input

@pytest.mark.parametrize("k", [0, -1, 1.5, 2.0, True, "2", None])
def test_bad_k(k) -> None:
    with pytest.raises(UsageError, match=r"k \(the most examples one user holds\) must be an integer >= 1"):
        group.user_epsilon(mixed_ledger(), k=k, delta=DELTA)


@pytest.mark.parametrize("accountant", ["prv", "gdp", "PLD"])
def test_bad_accountant(accountant) -> None:
    with pytest.raises(UsageError, match=r"unknown accountant .* valid: pld, rdp"):
        group.user_epsilon(mixed_ledger(), k=2, delta=DELTA, accountant=accountant)


@pytest.mark.parametrize("delta", [0, 1.0, -1e-5, 2, "1e-5"])
def test_bad_delta(delta) -> None:
    with pytest.raises(UsageError, match=r"delta must be a number in \(0, 1\)"):
        group.user_epsilon(mixed_ledger(), k=2, delta=delta)
