"""Privacy ledger and epsilon: golden values and independent computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crepe.privacy import accounting
from crepe.privacy import ledger as L
from crepe.training import rundir

DELTA = 1e-5


def seed_schedule(*, select_sigma: float = 3.0, rounds: int = 3) -> L.Ledger:
    """A 60-epoch fixture (NOT the seed protocol): `rounds` selections, each followed by 20 epochs
    of 23 steps at q = 256/6000 (Fashion-MNIST, 10% coreset)."""
    ledger = L.Ledger()
    for _ in range(rounds):
        ledger.record(L.Release(kind="select", noise_multiplier=select_sigma, sample_rate=1.0))
        for _ in range(20 * 23):
            ledger.record(L.Release(kind="train", noise_multiplier=1.0, sample_rate=256 / 6000))
    return ledger


def test_golden_seed_protocol_50_epochs() -> None:
    """The seed protocol: 50 epochs, selections at epochs 0, 20, 40 (20 + 20 + 10 epochs of 23 steps),
    sigma = 1, sigma_sel = 3, delta 1e-5 -> 11.279 (Opacus 1.6 RDP, default orders)."""
    ledger = L.Ledger()
    for epochs in (20, 20, 10):
        ledger.record(L.Release(kind="select", noise_multiplier=3.0, sample_rate=1.0))
        ledger.record(L.Release(kind="train", noise_multiplier=1.0, sample_rate=256 / 6000, steps=epochs * 23))
    assert accounting.epsilon(ledger, delta=DELTA, accountant="rdp") == pytest.approx(11.279, abs=5e-4)


def test_record_merges_identical_consecutive_releases_only() -> None:
    ledger = seed_schedule()
    assert [e.kind for e in ledger] == ["select", "train"] * 3
    assert [e.steps for e in ledger] == [1, 460] * 3


def test_golden_60_epoch_fixture_rdp() -> None:
    eps = accounting.epsilons(seed_schedule(), delta=DELTA, accountant="rdp")
    # Frozen values for this fixed configuration (Opacus 1.6 RDP, default orders).
    assert eps["total"] == pytest.approx(12.400842690022552, rel=1e-9)
    assert eps["select"] == pytest.approx(2.541218097242522, rel=1e-9)
    assert eps["train"] == pytest.approx(11.934176023355883, rel=1e-9)


def test_total_equals_independent_opacus_rdp_composition() -> None:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = 3 * analysis.compute_rdp(q=1.0, noise_multiplier=3.0, steps=1, orders=orders) + analysis.compute_rdp(
        q=256 / 6000, noise_multiplier=1.0, steps=3 * 460, orders=orders
    )
    expected, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)
    assert accounting.epsilon(seed_schedule(), delta=DELTA, accountant="rdp") == pytest.approx(float(expected), rel=1e-12)


def test_selection_part_matches_gaussian_closed_form() -> None:
    # k Gaussian releases with noise multiplier s: RDP(a) = k a / (2 s^2) exactly;
    # converted to (eps, delta) with Balle et al. 2020 Thm 21 over Opacus' orders.
    from opacus.accountants import RDPAccountant

    a = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    k, s = 3, 3.0
    rdp = k * a / (2 * s * s)
    closed = np.min(rdp - (np.log(DELTA) + np.log(a)) / (a - 1) + np.log((a - 1) / a))
    assert accounting.epsilon(seed_schedule(select_sigma=s, rounds=k), delta=DELTA, accountant="rdp", kinds=("select",)) == pytest.approx(
        closed, rel=1e-12
    )


def test_one_full_epoch_matches_build_notes_figure() -> None:
    # BUILD_NOTES: one full Fashion-MNIST epoch, B = 256, sigma = 1 -> eps = 0.925 at delta 1e-5.
    ledger = L.Ledger()
    ledger.record(L.Release(kind="train", noise_multiplier=1.0, sample_rate=256 / 60000, steps=234))
    assert accounting.epsilon(ledger, delta=DELTA, accountant="rdp") == pytest.approx(0.925, abs=1e-3)


def test_prv_composes_mixed_steps_and_is_not_looser_than_rdp() -> None:
    ledger = seed_schedule()
    prv = accounting.epsilons(ledger, delta=DELTA, accountant="prv")
    rdp = accounting.epsilons(ledger, delta=DELTA, accountant="rdp")
    for k in ("total", "select", "train"):
        assert 0 < prv[k] <= rdp[k]
    assert prv["select"] < prv["total"] and prv["train"] < prv["total"]


def test_composition_costs_more_than_each_part() -> None:
    eps = accounting.epsilons(seed_schedule(), delta=DELTA, accountant="rdp")
    assert max(eps["select"], eps["train"]) < eps["total"] <= eps["select"] + eps["train"]


def test_noiseless_release_is_infinite_and_json_safe() -> None:
    ledger = seed_schedule()
    ledger.record(L.Release(kind="select", noise_multiplier=0.0, sample_rate=1.0))
    eps = accounting.epsilons(ledger, delta=DELTA, accountant="rdp")
    assert math.isinf(eps["total"]) and math.isinf(eps["select"]) and math.isfinite(eps["train"])
    j = rundir.eps_json(eps)
    assert j["eps_total"] is None and j["eps_infinite"] is True and j["eps_total_infinite"] is True
    assert j["eps_select"] is None and j["eps_select_infinite"] is True
    assert j["eps_train"] == eps["train"] and j["eps_train_infinite"] is False
    json.dumps(j, allow_nan=False)


def test_empty_ledger_is_zero() -> None:
    assert accounting.epsilons([], delta=DELTA, accountant="rdp") == {"total": 0.0, "select": 0.0, "train": 0.0}


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"kind": "eval", "noise_multiplier": 1.0, "sample_rate": 0.1}, "valid: select, generate, train, subset"),
        ({"kind": "train", "noise_multiplier": 1.0, "sample_rate": 0.0}, "sample_rate"),
        ({"kind": "train", "noise_multiplier": 1.0, "sample_rate": 1.5}, "sample_rate"),
        ({"kind": "train", "noise_multiplier": -1.0, "sample_rate": 0.5}, "noise_multiplier"),
    ],
)
def test_bad_ledger_entries(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        L.Ledger().record(L.Release(**kw))


def test_unknown_accountant() -> None:
    with pytest.raises(ValueError, match="valid: pld, rdp, prv"):
        accounting.epsilon(seed_schedule(), delta=DELTA, accountant="gdp")


def test_rdp_equals_opacus_rdp_accountant_stepped_one_release_at_a_time() -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for entry in seed_schedule(select_sigma=2.0):
        for _ in range(entry.steps):
            acc.step(noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate)
    assert accounting.epsilon(seed_schedule(select_sigma=2.0), delta=DELTA, accountant="rdp") == pytest.approx(
        acc.get_epsilon(delta=DELTA), rel=1e-12
    )
