"""What a run DRAWS and APPLIES outside the DP-SGD step must be what its ledger claims.

An outside fault-injection pass found that nothing checked this outside the DP-SGD
step (tests/test_wiring.py observes that step's noise, divisor and sampler). The
tests here wrap the real pieces of tiny runs -- the secret Poisson subset draw, the
set each epoch trains on, the Poisson batch sampler, the selection's proxy noise,
private-set generation's noisy real gradients, the checkpoint a resume reads -- and
compare what actually happened with the ledger. Each test's docstring names the
fault it catches; each fault was injected and seen to fail its test.

Adaptive clipping is left out (its count release is being reworked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.func import functional_call

from crepe import _core, cli  # noqa: F401 (an editable install rebuilds _core on first import)
from crepe.config import TrainConfig
from crepe.dp.optimizer import DPOptimizer
from crepe.privacy.accounting import epsilons
from crepe.dp.sampling import steps_per_epoch
from crepe.privacy.ledger import Ledger, Release
from crepe.selection.problem import class_budget
from crepe.smallsets import private_set, proxies as proxies_mod, sets
from crepe.smallsets.sets import Coreset
from crepe.training import epoch as epoch_mod, loop, rundir, state as ckpt

N, B, P = 300, 20, 0.5  # a Poisson random run: q = B / (p n) = 2/15, 7 steps per epoch
Q_POISSON = B / (P * N)
SIGMA = 1.3


def config(data_root: Path, **kw: Any) -> TrainConfig:
    base = dict(
        dataset="fashion-mnist", data_dir=str(data_root), train_subset=N, test_subset=50, batch_size=B, threads=1,
        seed=4, method="random", fraction=P, epochs=3, select_every=2, sigma=SIGMA, accountant="rdp",
        noise="reproducible",
    )
    return TrainConfig(**{**base, **kw}).resolve()


# ---------------------------------------------------------------------------------------------
# The observer.


@dataclass
class Seen:
    """What one run actually did, in order."""

    draws: list[np.ndarray] = field(default_factory=list)  # per poisson_subset call: the drawn indices
    sets: list[np.ndarray] = field(default_factory=list)  # per epoch: indices of the set trained on
    sampler: list[tuple[int, float, int]] = field(default_factory=list)  # per epoch: (m, q, steps) asked of the sampler
    batches: list[list[np.ndarray]] = field(default_factory=list)  # per epoch: the batches (positions in the set)
    noisy_steps: list[int] = field(default_factory=list)  # per epoch: DP noise additions
    events: list[tuple] = field(default_factory=list)  # ("subset", p) per draw, ("train", q, steps) per epoch
    proxies: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per round: (clean, noisy)


def observe(mp: pytest.MonkeyPatch, *, pin: np.ndarray | None = None, labels: np.ndarray | None = None) -> Seen:
    """Wrap the run's pieces. `pin`: after the real draw is recorded, train on this set instead
    (so two runs sample batches over the same m). `labels`: replace the training labels."""
    seen = Seen()
    draw, train_epoch, batches, privatise = sets.poisson_subset, loop.train_epoch, epoch_mod.block_batches, proxies_mod.privatise
    add_noise, load = DPOptimizer.add_noise, loop.data_mod.load

    def traced_draw(*a: Any, **k: Any) -> Coreset:
        c = draw(*a, **k)
        seen.draws.append(c.indices.copy())
        seen.events.append(("subset", k.get("probability")))
        return c if pin is None else Coreset(pin.copy(), np.ones(len(pin), dtype=np.int64))

    def traced_train_epoch(net, opt, x, y, s, sw, **k):  # type: ignore[no-untyped-def]
        seen.sets.append(s.indices.copy())
        seen.noisy_steps.append(0)
        return train_epoch(net, opt, x, y, s, sw, **k)

    def traced_batches(m: int, *, sample_rate: float, steps: int, **k: Any) -> Iterator[torch.Tensor]:
        got = list(batches(m, sample_rate=sample_rate, steps=steps, **k))
        seen.sampler.append((m, sample_rate, steps))
        seen.batches.append([b.numpy().copy() for b in got])
        seen.events.append(("train", sample_rate, len(got)))
        return iter(got)

    def traced_add_noise(self: DPOptimizer) -> None:
        seen.noisy_steps[-1] += 1
        add_noise(self)

    def traced_privatise(proxies: torch.Tensor, **k: Any) -> torch.Tensor:
        noisy = privatise(proxies, **k)
        seen.proxies.append((proxies.clone(), noisy.clone()))
        return noisy

    def relabelled(*a: Any, **k: Any):  # type: ignore[no-untyped-def]
        ds = load(*a, **k)
        return dataclasses.replace(ds, y_train=torch.from_numpy(labels)) if labels is not None else ds

    mp.setattr(sets, "poisson_subset", traced_draw)  # the methods import it from there when they choose
    mp.setattr(loop, "train_epoch", traced_train_epoch)
    mp.setattr(epoch_mod, "block_batches", traced_batches)
    mp.setattr(proxies_mod, "privatise", traced_privatise)
    mp.setattr(DPOptimizer, "add_noise", traced_add_noise)
    mp.setattr(loop.data_mod, "load", relabelled)
    return seen


def observed_run(mp: pytest.MonkeyPatch, cfg: TrainConfig, out: Path, **kw: Any) -> tuple[dict, Seen]:
    with mp.context() as m:
        seen = observe(m, **kw)
        assert rundir.prepare_out(cfg, out, {}) == "new"
        return loop.run(cfg, out, log=lambda s: None), seen


def train_labels(cfg: TrainConfig) -> np.ndarray:
    return loop.data_mod.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset,
                              test_subset=cfg.test_subset).y_train.numpy()


def marker_epochs(ledger: list[dict], steps_per_epoch: int) -> list[int]:
    """The epochs (0-based) whose steps a "subset" marker opens, read off the ledger."""
    done, marks = 0, []
    for e in ledger:
        if e["kind"] == "subset":
            assert done % steps_per_epoch == 0, "a marker in the middle of an epoch"
            marks.append(done // steps_per_epoch)
        elif e["kind"] == "train":
            done += e["steps"]
    return marks


@pytest.fixture(scope="module")
def poisson_run(data_root, tmp_path_factory) -> Iterator[tuple[dict, Seen]]:
    """A reproducible Poisson random run: 3 epochs, redrawn at epochs 0 and 2."""
    mp = pytest.MonkeyPatch()
    try:
        yield observed_run(mp, config(data_root), tmp_path_factory.mktemp("observed") / "poisson")
    finally:
        mp.undo()


# ---------------------------------------------------------------------------------------------
# 1. A fresh secret draw at each marker, the same set between markers.


def test_each_subset_marker_is_a_fresh_draw_and_the_set_stays_until_the_next(poisson_run) -> None:
    """Catches: a Poisson random run whose later phases re-use the first subset while its
    ledger records a fresh "subset" marker (and so claims a fresh amplification) at each redraw."""
    summary, seen = poisson_run
    marks = marker_epochs(summary["ledger"], steps_per_epoch(Q_POISSON))
    assert marks == [0, 2] and len(seen.sets) == 3  # --select-every 2 over 3 epochs
    for e in range(1, len(seen.sets)):
        if e in marks:  # a new phase trains on a new draw, unlike any set before it
            assert not any(np.array_equal(seen.sets[e], s) for s in seen.sets[:e]), f"epoch {e} re-uses an old set"
        else:  # within a phase the set is the one drawn at its marker
            np.testing.assert_array_equal(seen.sets[e], seen.sets[e - 1])
    assert len(seen.draws) == len(marks)  # one draw per marker, and it is what the epochs trained on
    for d, e in zip(seen.draws, marks):
        np.testing.assert_array_equal(seen.sets[e], d)


# ---------------------------------------------------------------------------------------------
# 2. The Poisson draw reads no labels.


def test_the_poisson_draw_reads_no_labels(data_root, tmp_path, monkeypatch, poisson_run) -> None:
    """Catches: a "Poisson" draw made per class from the labels (a per-class Bernoulli draw, or
    CRAIG's fixed per-class budgets) while the ledger and the public size p n stay right: its
    epsilon is reported with labels private (labels_public false) though the draw reads them.
    The same key on permuted labels must draw the very same sets; and the drawn sets' class
    counts are Poisson, not the class budgets."""
    summary, seen = poisson_run
    cfg = config(data_root)
    y = train_labels(cfg)
    permuted = y[np.random.default_rng(0).permutation(len(y))]
    assert (permuted != y).mean() > 0.8  # most labels change
    other, relabelled = observed_run(monkeypatch, cfg, tmp_path / "relabelled", labels=permuted)
    assert len(relabelled.sets) == len(seen.sets) == 3
    for a, b in zip(seen.sets, relabelled.sets):
        np.testing.assert_array_equal(a, b)  # the labels changed nothing about the draw
    assert summary["labels_public"] is False and other["labels_public"] is False
    counts = [np.bincount(y[seen.sets[e]], minlength=10) for e in (0, 2)]  # the two draws
    budgets = np.array([class_budget(int(c), P) for c in np.bincount(y, minlength=10)])
    assert not any(np.array_equal(c, budgets) for c in counts)


# ---------------------------------------------------------------------------------------------
# 3. Secret mode draws subsets and batches from the secret key, not from --seed.


def test_secret_poisson_subsets_and_batches_differ_between_runs_with_one_seed(data_root, tmp_path, monkeypatch) -> None:
    """Catches: a Poisson subset draw, or the Poisson batch sampler, seeded from the public
    --seed in secret mode (tests/test_faults_extra.py compares the generators' states of a
    CRAIG run: a draw that bypasses the keyed generators leaves those states intact).
    Each run's real draw is recorded, then training runs over one pinned set, so the
    batches of every run are drawn over the same m and compare position by position."""
    pin = np.arange(0, N, 2, dtype=np.int64)  # 150 examples
    seen = {}
    for name, mode in [("s1", "secret"), ("s2", "secret"), ("r1", "reproducible"), ("r2", "reproducible")]:
        cfg = config(data_root, noise=mode, epochs=1, select_every=1)
        _, seen[name] = observed_run(monkeypatch, cfg, tmp_path / name, pin=pin)
    draw = {k: s.draws[0] for k, s in seen.items()}
    batches = {k: np.concatenate([np.r_[len(b), b] for b in s.batches[0]]) for k, s in seen.items()}
    assert all(s.sampler[0][0] == len(pin) for s in seen.values())
    assert not np.array_equal(draw["s1"], draw["s2"]), "secret mode: one --seed drew the same subset twice"
    assert not np.array_equal(batches["s1"], batches["s2"]), "secret mode: one --seed drew the same batches twice"
    np.testing.assert_array_equal(draw["r1"], draw["r2"])  # the control: reproducible mode repeats
    np.testing.assert_array_equal(batches["r1"], batches["r2"])


# ---------------------------------------------------------------------------------------------
# 4 (and 7, "generate"). Private-set generation adds the accounted noise to each real gradient.


def clipped_sum(net: torch.nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor, clip: float) -> dict:
    """sum_i g_i min(1, C / |g_i|), per-example gradients by plain autograd, one example at a time."""
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    for i in range(len(y)):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        loss = torch.nn.functional.cross_entropy(functional_call(net, p, (x[i : i + 1],)), y[i : i + 1])
        g = torch.autograd.grad(loss, list(p.values()))
        norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in g)))
        f = min(1.0, clip / norm) if norm > 0 else 1.0
        for k, t in zip(p, g):
            total[k] += f * t.double()
    return total


def test_private_set_generation_adds_the_accounted_noise_to_each_real_gradient(data_root, tmp_path, monkeypatch) -> None:
    """Catches: private-set generation adding its noise at sigma/2 (or any scale but sigma C) while
    sigma is accounted. Each noisy real gradient times the public B, minus an independent
    clipped sum of the same batch's gradients, is the noise actually added: its std over the
    ConvNet's coordinates must be the ledger's sigma times C."""
    clip = 0.1
    cfg = config(data_root, method="private-set", train_subset=500, images_per_class=2, gen_iterations=3,
                 gen_outer_loops=2, gen_width=8, batch_size=50, max_grad_norm=clip, epochs=1, model="convnet",
                 lr=0.01, fraction=0.1, select_every=20)
    real, noise = private_set.noisy_real_gradient, []

    def traced(net, params, x, y, **k):  # type: ignore[no-untyped-def]
        out = real(net, params, x, y, **k)
        clean = clipped_sum(net, params, x, y, clip)
        noise.append(torch.cat([(out[key].double() * cfg.batch_size - clean[key]).reshape(-1) for key in params]))
        return out

    monkeypatch.setattr(private_set, "noisy_real_gradient", traced)
    summary, _ = observed_run(monkeypatch, cfg, tmp_path / "ps")
    gen = [e for e in summary["ledger"] if e["kind"] == "generate"]
    assert sum(e["steps"] for e in gen) == len(noise) == 3 * 2
    accounted = [e["noise_multiplier"] * clip for e in gen for _ in range(e["steps"])]
    assert noise[0].numel() > 2000  # ~1.5% standard error on each std
    np.testing.assert_allclose([float(z.std()) for z in noise], accounted, rtol=0.1)
    assert all(abs(float(z.mean())) < 0.1 * SIGMA * clip for z in noise)
    corr = float((noise[0] * noise[1]).sum() / (noise[0].norm() * noise[1].norm()))
    assert abs(corr) < 0.15  # fresh noise for each release


# ---------------------------------------------------------------------------------------------
# 5. A resume refuses a well-formed, re-signed checkpoint whose ledger under-reports.


def read_payload(path: Path) -> dict:
    raw = path.read_bytes()
    assert raw.startswith(ckpt.MAGIC)
    return torch.load(io.BytesIO(raw[len(ckpt.MAGIC) + 65 :]), weights_only=True)


def sign(path: Path, payload: dict) -> None:
    """Write `payload` exactly as training/state.py writes a checkpoint: MAGIC, SHA-256, payload."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    path.write_bytes(ckpt.MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)


def forge(out: Path, cfg: TrainConfig, ledger: list[dict]) -> float:
    """Put `ledger` into the checkpoint of `out` the way a forger would: the last epoch's epsilons
    rewritten from it, in the checkpoint and in metrics.jsonl alike, then the file re-signed.
    Returns the forged epsilon."""
    path = out / rundir.CHECKPOINT
    ck = read_payload(path)
    ck["state"]["ledger"] = ledger
    eps = epsilons(ledger, delta=cfg.delta, accountant=cfg.accountant)
    if ck["state"]["metrics"]:
        ck["state"]["metrics"][-1].update(rundir.eps_json(eps))
        rundir.write_metrics(out / rundir.METRICS, ck["state"]["metrics"])
    sign(path, ck)
    return eps["total"]


def refused_untouched(out: Path, capsys) -> str:
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["train", "--resume", str(out)]) == 2, "a forged ledger was resumed"
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}
    return capsys.readouterr().err


def _drop_steps(led: list[dict]) -> None:
    [e for e in led if e["kind"] == "train"][-1]["steps"] -= 1


def _drop_round(led: list[dict]) -> None:
    i = max(i for i, e in enumerate(led) if e["kind"] == "select")
    led[i - 1]["steps"] += led[i + 1]["steps"]
    del led[i : i + 2]


def _raise_sigma(led: list[dict]) -> None:
    for e in led:
        e["noise_multiplier"] *= 1.5


def _lower_rate(led: list[dict]) -> None:
    for e in led:
        if e["kind"] == "train":
            e["sample_rate"] /= 2


def _add_markers(led: list[dict]) -> None:  # claim amplification by a secret draw for a CRAIG set
    for i in reversed(range(len(led))):
        led.insert(i, {"kind": "subset", "noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1, "unit": "example"})


@pytest.fixture(scope="module")
def stopped_craig(data_root, tmp_path_factory) -> tuple[TrainConfig, Path]:
    """A CRAIG run stopped after 2 of 3 epochs (a selection round and 7 steps in each), with the
    default accountant (pld, under which a forged marker lowers epsilon)."""
    cfg = config(data_root, method="craig", select_every=1, select_sigma=2.0, accountant="pld")
    out = tmp_path_factory.mktemp("forged") / "stopped"
    assert rundir.prepare_out(cfg, out, {}) == "new"
    assert loop.run(cfg, out, stop_after_epochs=2, log=lambda s: None)["status"] == "incomplete"
    return cfg, out


def test_a_re_signed_unchanged_checkpoint_still_resumes(stopped_craig, tmp_path, capsys) -> None:
    """The control of the forgeries below: re-signing changes nothing a resume can see."""
    cfg, stopped = stopped_craig
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    ck = read_payload(out / rundir.CHECKPOINT)
    assert forge(out, cfg, ck["state"]["ledger"]) == ck["state"]["metrics"][-1]["eps_total"]
    assert cli.main(["train", "--resume", str(out)]) == 0
    assert rundir.read_summary(out)["status"] == "complete"


@pytest.mark.parametrize("forgery", [_drop_steps, _drop_round, _raise_sigma, _lower_rate, _add_markers])
def test_resume_refuses_a_re_signed_checkpoint_whose_ledger_under_reports(stopped_craig, tmp_path, capsys, forgery) -> None:
    """Catches: a resume that accepts a well-formed checkpoint (valid checksum, epsilons in the
    checkpoint and in metrics.jsonl rewritten to agree) whose ledger under-reports: steps or a
    selection round removed, sigma raised, q lowered, or a Poisson marker claimed for a CRAIG set.
    The ledger must be the one the run's configuration writes in the epochs it has done."""
    cfg, stopped = stopped_craig
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    true = read_payload(out / rundir.CHECKPOINT)["state"]
    led = [dict(e) for e in true["ledger"]]
    forgery(led)
    assert forge(out, cfg, led) < true["metrics"][-1]["eps_total"]  # an under-report
    err = refused_untouched(out, capsys)
    assert "ledger" in err


@pytest.mark.parametrize("when", ["mid-generation", "generated"])
def test_resume_refuses_a_private_set_checkpoint_whose_generation_ledger_under_reports(
    data_root, tmp_path, monkeypatch, capsys, when
) -> None:
    """Catches: a resume of private-set generation that accepts a re-signed checkpoint with its
    "generate" releases under-reported. Before the first training epoch there is no metrics row
    whose epsilon a forger would need to match: mid-generation only the release count was
    checked (sigma raised passes), and once generated nothing was (steps removed pass).
    "generated" is the checkpoint of the last generation iteration (generation is the first
    epoch's selection round: its state is kept until the first epoch's checkpoint)."""
    cfg = config(data_root, method="private-set", train_subset=500, images_per_class=2, gen_iterations=3,
                 gen_outer_loops=2, gen_width=8, batch_size=50, max_grad_norm=0.1, epochs=1, model="convnet",
                 lr=0.01, fraction=0.1, select_every=20)
    out = tmp_path / "run"
    assert rundir.prepare_out(cfg, out, {}) == "new"
    real_save, stop_at = ckpt.save, cfg.gen_iterations if when == "generated" else 1
    saves = [0]

    def save_then_stop(*a: Any, **k: Any) -> None:  # a kill right after generation iteration `stop_at`'s checkpoint
        real_save(*a, **k)
        saves[0] += 1
        if saves[0] == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        loop.run(cfg, out, log=lambda s: None)
    monkeypatch.setattr(ckpt, "save", real_save)
    true = read_payload(out / rundir.CHECKPOINT)["state"]
    assert true["generation"]["iteration"] == stop_at and true["epoch"] == 0 and not true["metrics"]
    led = [dict(e) for e in true["ledger"]]
    if when == "generated":
        led[0]["steps"] //= 2
    else:
        led[0]["noise_multiplier"] *= 2
    assert forge(out, cfg, led) < epsilons(true["ledger"], delta=cfg.delta, accountant=cfg.accountant)["total"]
    err = refused_untouched(out, capsys)
    assert "ledger" in err


# ---------------------------------------------------------------------------------------------
# 6. Releases at different sample rates are never merged; the ledger is what the sampler ran.


def test_consecutive_releases_merge_only_when_identical() -> None:
    """Catches: `Ledger.record` merging consecutive releases that differ in sample rate (or in noise
    multiplier, or kind) into one entry, which accounts all of them at the first one's (sigma, q)."""
    led = Ledger()
    led.record(Release("train", 1.0, 0.1))
    led.record(Release("train", 1.0, 0.1))
    led.record(Release("train", 1.0, 0.2))
    led.record(Release("train", 2.0, 0.2, steps=3))
    led.record(Release("generate", 2.0, 0.2))
    assert [(e.kind, e.noise_multiplier, e.sample_rate, e.steps) for e in led] == [
        ("train", 1.0, 0.1, 2), ("train", 1.0, 0.2, 1), ("train", 2.0, 0.2, 3), ("generate", 2.0, 0.2, 1)
    ]


def test_the_ledger_is_exactly_the_draws_rates_and_steps_the_run_applied(poisson_run) -> None:
    """Catches: a ledger whose sample rate or step count differs from what the sampler ran
    (e.g. batches drawn at B/|S| of the realised draw while B/(p n) is accounted, a step
    count off by one, a draw without its marker). The ledger is rebuilt from the observed
    events alone -- a marker per draw, per epoch the sampler's q and its batch count, merged
    only when (sigma, q) is unchanged -- and must equal the run's, entry for entry."""
    summary, seen = poisson_run
    expected: list[dict] = []
    for ev in seen.events:
        if ev[0] == "subset":
            expected.append({"kind": "subset", "noise_multiplier": 0.0, "sample_rate": ev[1], "steps": 1, "unit": "example"})
        elif expected and expected[-1]["kind"] == "train" and expected[-1]["sample_rate"] == ev[1]:
            expected[-1]["steps"] += ev[2]
        else:
            expected.append({"kind": "train", "noise_multiplier": SIGMA, "sample_rate": ev[1], "steps": ev[2], "unit": "example"})
    assert summary["ledger"] == expected
    assert seen.noisy_steps == [steps for _, _, steps in seen.sampler]  # one noisy step per batch drawn
    assert [m for m, _, _ in seen.sampler] == [len(s) for s in seen.sets]  # batches over the set trained on
    assert {q for _, q, _ in seen.sampler} == {Q_POISSON}


# ---------------------------------------------------------------------------------------------
# 7. "select": each selection round adds fresh, independent noise at sigma_sel C_sel.
# ("train" is observed by tests/test_wiring.py, "generate" by test 4 above.)


def test_each_selection_round_adds_fresh_independent_noise_at_the_accounted_scale(data_root, tmp_path, monkeypatch) -> None:
    """Catches: CRAIG's proxy noise at another scale than the ledger's sigma_sel times C_sel (e.g.
    sigma_sel / 2); one noise vector shared by all examples (the overall std still looks
    right); the same noise re-used by a later round (the ledger counts independent releases)."""
    c_sel, sigma_sel = 0.7, 2.5
    cfg = config(data_root, method="craig", fraction=0.1, select_every=1, epochs=2, proxy="last-layer",
                 select_clip=c_sel, select_sigma=sigma_sel)
    summary, seen = observed_run(monkeypatch, cfg, tmp_path / "craig")
    sel = [e for e in summary["ledger"] if e["kind"] == "select"]
    assert sum(e["steps"] for e in sel) == len(seen.proxies) == 2 and all(e["sample_rate"] == 1.0 for e in sel)
    residuals = []
    for (clean, noisy), e in zip(seen.proxies, [e for e in sel for _ in range(e["steps"])]):
        norms = clean.double().norm(dim=1, keepdim=True)
        r = noisy.double() - clean.double() * (c_sel / norms.clamp(min=1e-12)).clamp(max=1.0)  # (n, d)
        scale = e["noise_multiplier"] * c_sel
        n, d = r.shape
        assert d == 330 and float(r.std()) == pytest.approx(scale, rel=0.03)
        # independent across examples: the mean over rows has the std of a mean of n draws
        assert float(r.mean(0).std()) == pytest.approx(scale / n**0.5, rel=0.25)
        rows = r.std(1)  # and each example gets its own full-scale noise
        assert float(rows.min()) > 0.7 * scale and float(rows.max()) < 1.3 * scale
        residuals.append(r.reshape(-1))
    corr = float((residuals[0] * residuals[1]).sum() / (residuals[0].norm() * residuals[1].norm()))
    assert abs(corr) < 0.03  # ~99k coordinates: the two rounds' noise is independent
