"""Random subsets drawn by secret Poisson selection: the amplified epsilon (docs/privacy.md, "Random subsets").

Three layers, each against an independent computation:
1. the amplification form itself, against exact privacy profiles of a Poisson-subsampled Gaussian
   integrated numerically, in both directions;
2. the fixed-size counterexample of DESIGN.md section 4 (why only Poisson draws, marked in the
   ledger, are amplified);
3. `accounting.epsilon` on ledgers with "subset" markers, against Opacus' accountants stepped by
   hand per phase + the formula + the minima.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import norm

from crepe.privacy import accounting
from crepe.privacy import ledger as L

DELTA = 1e-5

# ---------------------------------------------------------------- 1. the amplification form


def amplified(eps: float, p: float) -> float:
    """The form under test, written out: log(1 + p (e^eps - 1))."""
    return math.log(1.0 + p * (math.exp(eps) - 1.0))


def hockey_stick(f: Callable[[np.ndarray], np.ndarray], g: Callable[[np.ndarray], np.ndarray], eps: float) -> float:
    """delta(eps) = integral of max(0, f - e^eps g) over the real line, by the trapezoid rule on a fine grid
    (every density here is a mixture of N(mu, sigma^2) with mu in [0, 2], sigma <= 2: [-60, 62] holds all
    their mass to far below 1e-100; step 1.2e-4)."""
    x = np.linspace(-60.0, 62.0, 1_000_001)
    return float(np.trapezoid(np.maximum(0.0, f(x) - math.exp(eps) * g(x)), x))


def gauss(mu: float, sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: norm.pdf(x, mu, sigma)


def mix(p: float, f: Callable[[np.ndarray], np.ndarray], g: Callable[[np.ndarray], np.ndarray]):
    """(1 - p) f + p g."""
    return lambda x: (1.0 - p) * f(x) + p * g(x)


def gaussian_delta(eps: float, sigma: float) -> float:
    """The exact privacy profile of the Gaussian mechanism, sensitivity 1 (Balle & Wang 2018)."""
    return float(norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma))


def test_integrator_reproduces_the_gaussian_profile() -> None:
    # The integrator is the oracle of this file: first check it on the one profile known in closed form.
    for sigma, eps in [(0.5, 1.0), (1.0, 3.0), (2.0, 1.0)]:
        assert hockey_stick(gauss(1.0, sigma), gauss(0.0, sigma), eps) == pytest.approx(
            gaussian_delta(eps, sigma), rel=1e-7
        )


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("eps_s", [1.0, 3.0])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_poisson_amplification_holds_in_both_directions(p: float, eps_s: float, sigma: float) -> None:
    """Zero-out neighbours under a secret Poisson draw: the differing example is in S with probability p,
    and a null example in S behaves like an absent one, so the two output distributions are
    P = (1-p) N(0) + p N(1) (with the example) and Q = N(0) (with the null). The base mechanism on S is
    (eps_S, delta_S)-DP with delta_S its exact profile; the claim is (eps', p delta_S) both ways."""
    delta_s = gaussian_delta(eps_s, sigma)
    eps_prime = accounting._amplified(eps_s, p)  # the code's own form
    assert eps_prime == pytest.approx(amplified(eps_s, p), rel=1e-12)
    P = mix(p, gauss(0.0, sigma), gauss(1.0, sigma))
    Q = gauss(0.0, sigma)
    forward, backward = hockey_stick(P, Q, eps_prime), hockey_stick(Q, P, eps_prime)
    assert forward <= p * delta_s * (1 + 1e-6) + 1e-14
    assert backward <= p * delta_s * (1 + 1e-6) + 1e-14
    # The form is tight in the first direction (P - e^eps' Q = p (N(1) - e^eps_S N(0)) exactly), so a
    # looser-than-valid epsilon (a tenth smaller) must break the bound: the check has teeth.
    assert forward == pytest.approx(p * delta_s, rel=1e-6)
    assert hockey_stick(P, Q, 0.9 * eps_prime) > p * delta_s * 1.01


def test_amplified_is_stable_at_the_extremes() -> None:
    assert accounting._amplified(0.0, 0.1) == 0.0
    assert accounting._amplified(800.0, 0.1) == pytest.approx(800.0 + math.log(0.1), rel=1e-12)
    assert accounting._amplified(math.inf, 0.1) == math.inf
    assert accounting._amplified(2.5, 1.0) == pytest.approx(2.5, rel=1e-12)
    for eps in (1e-6, 0.5, 1.0, 1.0 + 1e-12, 5.0):
        assert accounting._amplified(eps, 0.3) == pytest.approx(amplified(eps, 0.3), rel=1e-12)


# ---------------------------------------------------------------- 2. fixed-size draws get nothing

P_AUDIT, SIGMA_AUDIT = 0.1, 1.00215  # the audit's base mechanism: (3, 1.5e-3)-DP


def test_fixed_size_counterexample_breaks_the_familiar_form() -> None:
    """A fixed-size draw: the example, if drawn (probability p), displaces another one (output 2 vs 1),
    so the neighbour's distribution is itself a mixture and the Poisson form does not hold."""
    sigma, p = SIGMA_AUDIT, P_AUDIT
    delta_s = gaussian_delta(3.0, sigma)
    assert delta_s == pytest.approx(1.5e-3, rel=1e-3)
    eps_prime = amplified(3.0, p)
    assert eps_prime == pytest.approx(1.0677, abs=1e-4)
    P = mix(p, gauss(0.0, sigma), gauss(2.0, sigma))
    Q = mix(p, gauss(0.0, sigma), gauss(1.0, sigma))
    actual = hockey_stick(P, Q, eps_prime)
    assert actual == pytest.approx(6.87e-3, rel=2e-3)
    assert actual > 40 * p * delta_s  # the familiar form claims 1.5e-4
    # DESIGN.md's valid two-direction bound for fixed-size draws covers it, both ways.
    eps_fixed = math.log((1 - p + p * math.exp(2 * 3.0)) / (1 - p + p * math.exp(3.0)))
    delta_fixed = p * delta_s * (1 + math.exp(3.0) - math.exp(eps_fixed))
    assert hockey_stick(P, Q, eps_fixed) <= delta_fixed
    assert hockey_stick(Q, P, eps_fixed) <= delta_fixed


def test_a_ledger_without_markers_is_never_amplified() -> None:
    """A fixed-size random run (or a CRAIG run) records no marker: its epsilon is the plain composition,
    bit for bit, even where a marker would lower it."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    plain = seed_schedule(3.0, marker=False)
    orders = RDPAccountant.DEFAULT_ALPHAS
    curve = np.asarray(analysis.compute_rdp(q=Q_SEED, noise_multiplier=3.0, steps=1, orders=orders), dtype=float)
    expected, _ = analysis.get_privacy_spent(orders=orders, rdp=50 * 23 * curve, delta=DELTA)
    assert accounting.epsilon(plain, delta=DELTA, accountant="rdp") == float(expected)
    assert accounting.epsilon(seed_schedule(3.0), delta=DELTA, accountant="rdp") < 0.5 * float(expected)


# ---------------------------------------------------------------- 3. ledgers with markers

N, P_SEED, B = 60_000, 0.1, 256
Q_SEED = B / (P_SEED * N)  # public: never B / |S| of the realised draw
STEPS_PER_EPOCH = int(1 / Q_SEED)  # 23
PHASE_EPOCHS = (20, 20, 10)  # 50 epochs, re-drawn at epochs 0, 20, 40


def seed_schedule(sigma: float, *, marker: bool = True, epochs: tuple[int, ...] = PHASE_EPOCHS) -> L.Ledger:
    """DP-SGD on a 10% Poisson subset of Fashion-MNIST, one step per record call."""
    ledger = L.Ledger()
    for e in epochs:
        if marker:
            ledger.record(L.subset(P_SEED))
        for _ in range(e * STEPS_PER_EPOCH):
            ledger.record(L.Release("train", sigma, Q_SEED))
    return ledger


Phase = tuple[float | None, bool, list[tuple[float, float, int]]]  # (p, amplifiable, [(sigma, q, steps)])


def opacus_epsilon(releases: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Opacus' accountant stepped one release at a time."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for sigma, q, steps in releases:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        with np.errstate(divide="ignore"):
            return float(acc.get_epsilon(delta=delta))


def by_hand(phases: list[Phase], *, delta: float, accountant: str = "rdp") -> tuple[float, float]:
    """(bound A, bound M) of DESIGN.md section 4 (a), (b) with basic composition over the phases."""
    plain = opacus_epsilon([r for _, _, releases in phases for r in releases], delta, accountant)
    k = len(phases)
    m = 0.0
    for p, amplifiable, releases in phases:
        cost = opacus_epsilon(releases, delta / k, accountant)
        if p is not None and amplifiable:
            cost = min(cost, amplified(opacus_epsilon(releases, delta / (k * p), accountant), p))
        m += cost
    return plain, m


def seed_phases(sigma: float) -> list[Phase]:
    return [(P_SEED, True, [(sigma, Q_SEED, e * STEPS_PER_EPOCH)]) for e in PHASE_EPOCHS]


# The seed schedule's figures (Opacus 1.6 RDP, default orders, delta 1e-5): (bound A, bound M).
SEED_FIGURES = {1.0: (10.788446, 10.221980), 3.0: (2.192144, 0.568311), 5.0: (1.215159, 0.246396)}


@pytest.mark.parametrize("sigma", [1.0, 3.0, 5.0])
def test_seed_schedule_against_opacus_by_hand(sigma: float) -> None:
    a, m = by_hand(seed_phases(sigma), delta=DELTA)
    eps = accounting.epsilon(seed_schedule(sigma), delta=DELTA, accountant="rdp")
    assert eps == pytest.approx(min(a, m), rel=1e-9)
    assert (a, m) == pytest.approx(SEED_FIGURES[sigma], abs=1e-5)
    assert m < a  # on this schedule the amplified bound wins from sigma = 1 up
    assert accounting.epsilon(seed_schedule(sigma, marker=False), delta=DELTA, accountant="rdp") == pytest.approx(a, rel=1e-9)


@pytest.mark.parametrize(
    ("sigma", "epochs"),
    [(0.7, PHASE_EPOCHS), (1.0, (1,) * 50)],  # small sigma; a re-draw every epoch (50 phases share delta)
)
def test_plain_bound_wins_where_basic_composition_over_phases_costs_more(sigma: float, epochs: tuple[int, ...]) -> None:
    phases: list[Phase] = [(P_SEED, True, [(sigma, Q_SEED, e * STEPS_PER_EPOCH)]) for e in epochs]
    a, m = by_hand(phases, delta=DELTA)
    assert a < m
    assert accounting.epsilon(seed_schedule(sigma, epochs=epochs), delta=DELTA, accountant="rdp") == pytest.approx(a, rel=1e-9)


def test_adaptive_clipping_steps_are_amplified_like_any_step() -> None:
    """An adaptive step (gradient and count of one batch: one release at the joint multiplier) is
    computed on the subset only, so its phase is amplified by the draw."""
    sigma, sigma_b = 3.0, B / 20
    joint = (sigma**-2 + sigma_b**-2) ** -0.5
    ledger = L.Ledger()
    for e in PHASE_EPOCHS:
        ledger.record(L.subset(P_SEED))
        for _ in range(e * STEPS_PER_EPOCH):
            ledger.record(L.Release("train", joint, Q_SEED))
    steps = [e * STEPS_PER_EPOCH for e in PHASE_EPOCHS]
    phases: list[Phase] = [(P_SEED, True, [(joint, Q_SEED, s)]) for s in steps]
    a, m = by_hand(phases, delta=DELTA)
    assert m < a
    eps = accounting.epsilons(ledger, delta=DELTA, accountant="rdp")
    assert eps["total"] == pytest.approx(m, rel=1e-9)
    assert eps["train"] == eps["total"] and eps["select"] == 0.0


def test_a_release_on_the_full_data_disables_amplification_of_its_phase() -> None:
    """A selection round (or a generation gradient) inside a phase reads the full data, not the subset:
    that phase costs its plain epsilon at delta/k; the other phases are still amplified."""
    sigma = 3.0
    for kind in ("select", "generate"):
        ledger = seed_schedule(sigma).to_list()
        second = [i for i, e in enumerate(ledger) if e["kind"] == L.MARKER][1]
        q_kind = 1.0 if kind == "select" else B / N
        ledger.insert(second + 1, {"kind": kind, "noise_multiplier": sigma, "sample_rate": q_kind, "steps": 1})
        L.Ledger.from_list(ledger)
        phases = seed_phases(sigma)
        phases[1] = (P_SEED, False, [(sigma, q_kind, 1), *phases[1][2]])
        a, m = by_hand(phases, delta=DELTA)
        assert accounting.epsilon(ledger, delta=DELTA, accountant="rdp") == pytest.approx(min(a, m), rel=1e-9)
        amplified_anyway = by_hand([(P_SEED, True, ph[2]) for ph in phases], delta=DELTA)[1]
        assert amplified_anyway < min(a, m)  # the test can tell the difference
        # The train part leaves that release out: its phases hold only steps on the subset.
        train_only = by_hand(seed_phases(sigma), delta=DELTA)
        train_part = accounting.epsilon(ledger, delta=DELTA, accountant="rdp", kinds=L.parts()["train"])
        assert train_part == pytest.approx(min(train_only), rel=1e-9)


def test_releases_before_the_first_marker_are_not_amplified() -> None:
    sigma = 3.0
    ledger = L.Ledger()
    ledger.record(L.Release("train", sigma, Q_SEED, steps=10 * STEPS_PER_EPOCH))
    ledger.record(L.subset(P_SEED))
    ledger.record(L.Release("train", sigma, Q_SEED, steps=40 * STEPS_PER_EPOCH))
    phases: list[Phase] = [
        (None, True, [(sigma, Q_SEED, 10 * STEPS_PER_EPOCH)]),
        (P_SEED, True, [(sigma, Q_SEED, 40 * STEPS_PER_EPOCH)]),
    ]
    a, m = by_hand(phases, delta=DELTA)
    assert m < a
    assert accounting.epsilon(ledger, delta=DELTA, accountant="rdp") == pytest.approx(m, rel=1e-9)
    # Phases without included releases do not take a share of delta (k counts the others only).
    padded = L.Ledger([ledger[0]])
    padded.record(L.subset(P_SEED))
    padded.extend(list(ledger)[1:])
    assert accounting.epsilon(padded, delta=DELTA, accountant="rdp") == accounting.epsilon(ledger, delta=DELTA, accountant="rdp")


def test_noise_free_release_is_still_infinite_and_a_tiny_p_is_not_amplified() -> None:
    ledger = seed_schedule(3.0)
    ledger.record(L.Release("train", 0.0, Q_SEED))
    assert math.isinf(accounting.epsilon(ledger, delta=DELTA, accountant="rdp"))
    # delta_S = delta / (k p) >= 1 says nothing: the phase costs its plain epsilon.
    tiny = L.Ledger()
    tiny.record(L.subset(1e-6))
    tiny.record(L.Release("train", 3.0, 0.5, steps=10))
    assert accounting.epsilon(tiny, delta=DELTA, accountant="rdp") == accounting.epsilon(list(tiny)[1:], delta=DELTA, accountant="rdp")


def test_prv_path_composes_each_phase() -> None:
    sigma = 3.0
    a, m = by_hand(seed_phases(sigma), delta=DELTA, accountant="prv")
    eps = accounting.epsilon(seed_schedule(sigma), delta=DELTA, accountant="prv")
    plain = accounting.epsilon(seed_schedule(sigma, marker=False), delta=DELTA, accountant="prv")
    assert plain == pytest.approx(a, rel=1e-9)
    assert eps == pytest.approx(min(a, m), rel=1e-9)
    assert eps < 0.5 * plain


# ---------------------------------------------------------------- the marker itself


def test_markers_are_recorded_apart_and_survive_a_checkpoint() -> None:
    ledger = L.Ledger()
    ledger.record(L.subset(0.25))
    ledger.record(L.subset(0.25))
    assert ledger.to_list() == [{"kind": "subset", "noise_multiplier": 0.0, "sample_rate": 0.25, "steps": 1, "unit": "example"}] * 2
    ledger.record(L.Release("train", 1.0, 0.1))
    ledger.record(L.subset(0.25))
    ledger.record(L.Release("train", 1.0, 0.1))
    assert [e.kind for e in ledger] == ["subset", "subset", "train", "subset", "train"]  # not merged across
    restored = json.loads(json.dumps(seed_schedule(3.0).to_list()))
    assert L.Ledger.from_list(restored) == seed_schedule(3.0)
    assert accounting.epsilon(restored, delta=DELTA) == accounting.epsilon(seed_schedule(3.0), delta=DELTA)


@pytest.mark.parametrize(
    "change",
    [
        {"noise_multiplier": 0.5},
        {"steps": 2},
        {"steps": 0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"sample_rate": math.nan},
        {"kind": "subsets"},
    ],
)
def test_a_damaged_marker_is_refused(change: dict) -> None:
    ledger = seed_schedule(3.0, epochs=(1, 1)).to_list()
    bad = copy.deepcopy(ledger)
    bad[0].update(change)
    with pytest.raises(ValueError, match="malformed ledger entry"):
        L.Ledger.from_list(bad)
    missing = copy.deepcopy(ledger)
    del missing[0]["steps"]
    with pytest.raises(ValueError, match="malformed ledger entry"):
        L.Ledger.from_list(missing)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, math.nan])
def test_subset_refuses_a_bad_probability(p: float) -> None:
    with pytest.raises(ValueError, match="inclusion_probability"):
        L.subset(p)


def test_a_marker_is_only_what_subset_writes() -> None:
    """A marker is no release: it carries only its p (noise 0, one step), exactly what `subset` writes;
    any other "subset" entry is refused, and the marker kind is not a release kind."""
    assert L.subset(0.1) == L.Release("subset", 0.0, 0.1, 1)
    for bad in (dict(noise_multiplier=1.0), dict(steps=2)):
        with pytest.raises(ValueError, match="a marker carries only its p"):
            L.Release(**{**dict(kind="subset", noise_multiplier=0.0, sample_rate=0.1, steps=1), **bad})
    with pytest.raises(ValueError, match="valid: select, generate, train, subset"):
        L.Release("subsets", 0.0, 0.1)
    assert L.MARKER not in L.KINDS
