"""Tests added by the fault-injection pass: each catches a fault the privacy tests let through.

- secret_rng: a torch whose Generator.set_state silently drops part of the state is refused
  (the runtime check after set_state), not used to draw noise from a partly known state;
- the PLD mixture transform of a phase on a secret Poisson subset (`accounting._on_subset`):
  the connect-the-dots split keeps, in each direction, both distributions' masses exactly (what
  makes it pessimistic), and the infinite-loss mass is p times the inner one (removal);
- the planned ledger (`Plan.ledger`) of a private-set run counts every noisy real gradient of the
  generation iterations done: iterations x outer_loops x batch_loops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crepe.dp import secret_rng
from crepe.privacy import accounting

KEY = bytes(range(3, 3 + secret_rng.KEY_BYTES))


class DropsLastWord(torch.Generator):
    """A torch whose set_state keeps all but the last MT word (it zeroes it)."""

    def set_state(self, state: torch.Tensor) -> torch.Generator:  # type: ignore[override]
        s = state.clone()
        end = secret_rng._HEADER.size + secret_rng._WORDS.size
        s[end - 8 : end] = 0
        return super().set_state(s)


def test_a_set_state_that_does_not_keep_the_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: keyed_generator trusting set_state without reading the state back."""
    keyed = secret_rng.keyed_generator(KEY, "noise")  # the layout check runs (and is cached) first
    assert torch.equal(keyed.get_state(), secret_rng._pack(secret_rng.mt19937_words(KEY, "noise")))
    monkeypatch.setattr(torch, "Generator", DropsLastWord)
    with pytest.raises(RuntimeError, match="set_state did not keep the state it was given"):
        secret_rng.keyed_generator(KEY, "noise")


def _grid_losses(pmf) -> np.ndarray:  # type: ignore[no-untyped-def]
    return (pmf._lower_loss + np.arange(pmf.size)) * pmf._discretization


@pytest.mark.parametrize("history, p", [(((2.0, 0.5, 3),), 0.1), (((1.5, 0.3, 5),), 0.6), (((4.0, 1.0, 2),), 0.3)])
def test_the_subset_mixture_keeps_both_masses_and_the_infinite_loss_mass(history, p: float) -> None:
    """Catches, in `_on_subset`: a dropped term or mass of the mixture (p w + (1 - p) e^-l w, the
    residual (1 - p) * rest, the p-scaled infinite mass), a wrong loss in the addition direction,
    and a split between grid points that is not connect-the-dots (e.g. linear in l, or rounding
    to the nearest point), which keeps the upper mass but not the lower: no longer pessimistic.

    Removal: upper (1 - p) B + p A, lower B; before the split the atoms hold the upper mass
    p w + (1 - p) e^-L w and the lower mass e^-L w, plus B's mass outside A's support at loss
    log(1 - p). Addition: upper B, lower (1 - p) B + p A: atom mass b, lower mass
    (1 - p) b + p b e^-L, plus A's mass outside B's support at the finite loss -log(1 - p)."""
    inner = accounting._composed(history)
    remove, add = inner._pmf_remove.to_dense_pmf(), inner._pmf_add.to_dense_pmf()
    out = accounting._on_subset(history, p)
    o_rem, o_add = out._pmf_remove, out._pmf_add

    loss, w = _grid_losses(remove), remove._probs
    below = np.exp(-loss) * w
    rest = max(0.0, 1.0 - float(below.sum()))
    upper = float((p * w + (1 - p) * below).sum()) + (1 - p) * rest
    lower = float(below.sum()) + rest
    got = _grid_losses(o_rem)
    assert float(o_rem._probs.sum()) == pytest.approx(upper, rel=1e-12, abs=0)
    assert float((o_rem._probs * np.exp(-got)).sum()) == pytest.approx(lower, rel=1e-12, abs=0)
    assert o_rem._infinity_mass == pytest.approx(p * remove._infinity_mass, rel=1e-9, abs=0)
    assert remove._infinity_mass > 0  # the check above is not vacuous

    loss, b = _grid_losses(add), add._probs
    upper = float(b.sum()) + add._infinity_mass
    lower = float(((1 - p) * b + p * b * np.exp(-loss)).sum()) + (1 - p) * add._infinity_mass
    got = _grid_losses(o_add)
    assert o_add._infinity_mass == 0.0  # p < 1: A's mass outside B's support has a finite loss
    assert float(o_add._probs.sum()) == pytest.approx(upper, rel=1e-12, abs=0)
    assert float((o_add._probs * np.exp(-got)).sum()) == pytest.approx(lower, rel=1e-12, abs=0)
    # and the largest finite loss of the addition direction is -log(1 - p), on the grid above it
    assert got[np.nonzero(o_add._probs)[0].max()] == pytest.approx(-math.log1p(-p), abs=o_add._discretization * 1.01)


def test_a_private_set_planned_ledger_counts_every_batch_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: the planned ledger (the resume check's reference) counting generation releases as
    iterations x outer_loops, without batch_loops (latent: crepe's CLI fixes batch_loops = 1)."""
    from dataclasses import replace as dc_replace

    from crepe.config import TrainConfig
    from crepe.smallsets.methods import private_set
    from crepe.training.plan import Plan

    cfg = TrainConfig(method="private-set", sigma=1.0, select_sigma=1.0, gen_iterations=4, gen_outer_loops=3, batch_size=50)
    real = private_set.schedule_of
    monkeypatch.setattr(private_set, "schedule_of", lambda c: dc_replace(real(c), batch_loops=2))
    plan = Plan.of(cfg, counts=[50] * 10)  # n = 500
    assert plan.ledger()[0].steps == 4 * 3 * 2
    assert plan.ledger(0, progress={"iteration": 1})[0].steps == 3 * 2


def _opacus_rdp(history, delta: float) -> float:  # type: ignore[no-untyped-def]
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def test_bound_m_splits_delta_evenly_over_the_phases() -> None:
    """Catches: bound M (rdp/prv with "subset" markers) costing each phase at the full delta
    instead of delta / k, which composes k phases at delta each (k delta in all): an under-report.
    Oracle: Opacus' RDP accountant per phase, by hand."""
    from crepe.privacy import ledger as L

    delta = 1e-5
    ledger = [
        {"kind": "select", "noise_multiplier": 3.0, "sample_rate": 1.0, "steps": 1},
        {"kind": "subset", "noise_multiplier": 0.0, "sample_rate": 0.9, "steps": 1},
        {"kind": "train", "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 10},
        {"kind": "subset", "noise_multiplier": 0.0, "sample_rate": 0.9, "steps": 1},
        {"kind": "select", "noise_multiplier": 3.0, "sample_rate": 1.0, "steps": 1},
        {"kind": "train", "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 10},
    ]
    first, second, third = ((3.0, 1.0, 1),), ((1.0, 0.5, 10),), ((1.0, 0.5, 10), (3.0, 1.0, 1))
    k = 3
    amplified = math.log1p(0.9 * math.expm1(_opacus_rdp(second, delta / (k * 0.9))))
    by_hand = _opacus_rdp(first, delta / k) + min(_opacus_rdp(second, delta / k), amplified) + _opacus_rdp(third, delta / k)
    phases = accounting._phases(L.Ledger.from_list(ledger), ("select", "train", "generate"))
    assert accounting._phased(phases, delta, accountant="rdp") == pytest.approx(by_hand, rel=1e-9)


@pytest.mark.parametrize("accountant", ["pld", "rdp", "prv"])
@pytest.mark.parametrize("marked", [False, True], ids=["plain", "subset"])
def test_a_noise_free_release_is_infinite_under_every_accountant(accountant: str, marked: bool) -> None:
    """Catches: epsilon's guard for releases without noise lost, which leaves the PLD accountant
    (the default) to fail on a Gaussian of standard deviation 0 instead of reporting infinity."""
    from crepe.privacy import ledger as L

    led = L.Ledger()
    if marked:
        led.record(L.subset(0.5))
    led.record(L.Release("train", 1.0, 0.1, steps=5))
    led.record(L.Release("train", 0.0, 0.1))
    assert accounting.epsilon(led, delta=1e-5, accountant=accountant) == math.inf
    assert math.isfinite(accounting.epsilon(list(led)[:-1], delta=1e-5, accountant=accountant))


def test_a_checkpoint_whose_last_epoch_printed_another_epsilon_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Catches: verify_against_metrics checking only the epoch count, so a checkpoint whose last
    metrics row (and metrics.jsonl, edited alike) records a smaller epsilon than its ledger gives
    is resumed, and the forged row stays in the published metrics."""
    from crepe.config import UsageError
    from crepe.privacy import ledger as L
    from crepe.training import state as ckpt

    led = L.Ledger([L.Release("train", 1.0, 0.1, steps=10)])
    eps = accounting.epsilon(led, delta=1e-5, accountant="rdp")
    honest = [{"epoch": 1, "eps_total": eps}]
    ckpt.verify_against_metrics(ckpt.RunState(epoch=1, ledger=led, metrics=honest), honest, delta=1e-5,
                                accountant="rdp", where=tmp_path)  # the control: accepted
    forged = [{"epoch": 1, "eps_total": eps / 2}]
    with pytest.raises(UsageError, match="privacy ledger gives epsilon"):
        ckpt.verify_against_metrics(ckpt.RunState(epoch=1, ledger=led, metrics=forged), forged, delta=1e-5,
                                    accountant="rdp", where=tmp_path)
