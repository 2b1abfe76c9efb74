"""What the one-run audit costs (issue 27): a small full-data run with and without M = 1,000
white-box canaries, against each other in the same session. Run:

    OMP_WAIT_POLICY=PASSIVE python -m pytest bench/bench_audit.py -s -p no:randomly \
        --benchmark-json=bench-audit.json [--quick]

Both sides go through the real code path (`crepe.training.loop.run` on data loaded once):
Fashion-MNIST, the CNN, B = 256, sigma = 1, 2 threads, 6,000 training images and 2 epochs
(--quick: 1,500 and 1 epoch). The two are timed in alternating rounds (the machine drifts
+-10-25% minute to minute) and reported as the ratio of median wall times of the whole run, and
of its training time alone (metrics' train_time_s); target <= 1.10. The canaries' own work per
step (inject + observe, timed in isolation) is reported against a plain step too: on a loaded
machine it is the steadier figure. Before timing, the audited run is checked: the same ledger
as the plain run, and an audit.json within its ceiling.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from crepe.config import TrainConfig

DATA = Path(os.environ.get("CREPE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
THREADS = 2
CANARIES = 1000
ROUNDS = 3


def config(quick: bool, **kw: object) -> TrainConfig:
    base = dict(dataset="fashion-mnist", data_dir=str(DATA / "fashion-mnist"), model="cnn", method="full",
                batch_size=256, sigma=1.0, threads=THREADS, seed=0, epochs=1 if quick else 2,
                train_subset=1500 if quick else 6000, test_subset=500)
    base.update(kw)
    return TrainConfig(**base).resolve()  # type: ignore[arg-type]


def test_canaries_overhead(benchmark, quick: bool, tmp_path: Path) -> None:
    from crepe.training import inputs, loop, rundir

    plain, audited = config(quick), config(quick, audit_canaries=CANARIES)
    ds = inputs.load_data(plain)
    runs = iter(range(10**6))

    def one(cfg: TrainConfig) -> tuple[float, dict]:
        out = tmp_path / f"run{next(runs)}"
        assert rundir.prepare_out(cfg, out, {}) == "new"
        t0 = time.perf_counter()
        summary = loop.run(cfg, out, data=ds, log=lambda s: None)
        return time.perf_counter() - t0, summary

    # Check first: canaries leave the ledger alone, and the audit is a valid record.
    _, s_plain = one(plain)
    _, s_audit = one(audited)
    assert s_audit["ledger"] == s_plain["ledger"] and s_audit["eps_total"] == s_plain["eps_total"]
    record = json.loads((tmp_path / "run1" / rundir.AUDIT).read_text())
    assert record["canaries"] == CANARIES and 0 <= record["eps_lb"] <= record["ceiling"]

    times: dict[str, list[float]] = {"plain": [], "audited": []}
    train: dict[str, list[float]] = {"plain": [], "audited": []}

    def rounds() -> None:
        for _ in range(ROUNDS):  # alternating: drift hits both sides alike
            for name, cfg in (("plain", plain), ("audited", audited)):
                wall, summary = one(cfg)
                times[name].append(wall)
                train[name].append(summary["train_time_s"])

    load_before = [round(x, 2) for x in os.getloadavg()]
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    hooks_ms = hooks_per_step_ms(plain.batch_size / s_plain["n_train"])
    steps = sum(e["steps"] for e in s_plain["ledger"])
    med = {k: statistics.median(v) for k, v in times.items()}
    med_train = {k: statistics.median(v) for k, v in train.items()}
    out = {
        "n_train": s_plain["n_train"], "epochs": plain.epochs, "canaries": CANARIES, "rounds": ROUNDS,
        "wall_s": times, "train_s": train,
        "wall_ratio": med["audited"] / med["plain"],
        "train_ratio": med_train["audited"] / med_train["plain"],
        "canary_hooks_ms_per_step": hooks_ms,
        "hooks_over_plain_step": hooks_ms / 1e3 / (med_train["plain"] / steps),
        "eps_total": s_plain["eps_total"], "eps_lb": record["eps_lb"],
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    benchmark.extra_info.update(out)
    print("\n" + json.dumps(out, indent=1))


def hooks_per_step_ms(q: float, steps: int = 300) -> float:
    """The canaries' own work per step (inject before the noise, observe after it) on the CNN's
    parameters, in isolation: the part of the overhead that run-to-run drift cannot hide.
    Checked first: at q = 1 with every canary included, inject adds exactly C at each coordinate."""
    import torch

    from crepe.audit.canaries import WhiteBox
    from crepe.models import build_model

    torch.set_num_threads(THREADS)
    params = list(build_model("cnn").parameters())
    for p in params:
        p.summed_grad, p.grad = torch.randn_like(p), torch.randn_like(p)
    c = WhiteBox.draw(CANARIES, params, torch.Generator().manual_seed(0))
    c.included[:] = True
    before = torch.cat([p.summed_grad.reshape(-1) for p in params])[c.coords]
    assert c.inject(params, max_grad_norm=0.5, sample_rate=1.0) == CANARIES
    after = torch.cat([p.summed_grad.reshape(-1) for p in params])[c.coords]
    torch.testing.assert_close(after - before, torch.full((CANARIES,), 0.5))
    t0 = time.perf_counter()
    for _ in range(steps):
        c.inject(params, max_grad_norm=1.0, sample_rate=q)
        c.observe(params)
    return (time.perf_counter() - t0) / steps * 1e3
