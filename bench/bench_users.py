"""Wall time of one user-level round (issue 24): DP-FedEmb at U = 1,000 users, K = 1 / 4 / 8 users
per virtual client, 1 and 2 local epochs; user-level DP-SGD and DP-FedAvg beside it. Run:

    OMP_WAIT_POLICY=PASSIVE python -m pytest bench/bench_users.py -s -p no:randomly \
        --benchmark-json=bench-users.json [--quick]

Everything goes through the real code path: the run's data as `crepe train` loads it (Fashion-MNIST,
classes 7-9 held out, 1,000 synthetic writers of ~41 examples, `--user-seed 0`), the run's model,
generators and DP optimizer (`crepe.training.loop.build`), and `crepe.users.rounds.user_epoch` for
ROUNDS rounds at a time; a round's time is the mean over them. Settings: 100 users per round
(q = 0.1), the CNN, C = 1, sigma = 1, local minibatches of 16, local lr 0.05, head lr x100, server
SGD lr 0.1, momentum 0.9, THREADS torch threads. Before timing, each configuration is checked: a
round moves every parameter it aggregates and, for dp-fedemb, leaves the global head (which never
leaves a virtual client) exactly as it was. The machine load (os.getloadavg) is recorded before and
after each measurement: the 2 cores here are shared, so compare figures within one session only.
--quick: 200 users, 20 per round, one round per measurement.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from crepe.config import TrainConfig

DATA = Path(os.environ.get("CREPE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
THREADS = int(os.environ.get("CREPE_BENCH_THREADS", "2"))
RESULTS: dict[str, dict] = {}

FEDEMB = [(k, e) for e in (1, 2) for k in (1, 4, 8)]  # (K, local epochs)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def config(quick: bool, **kw: object) -> TrainConfig:
    base = dict(
        dataset="fashion-mnist", data_dir=str(DATA / "fashion-mnist"), method="full", model="cnn",
        privacy_unit="user", users="synthetic", user_count=200 if quick else 1000,
        users_per_round=20 if quick else 100, held_out_classes=3, sigma=1.0, max_grad_norm=1.0,
        lr=0.1, momentum=0.9, threads=THREADS, seed=0, epochs=1, noise="reproducible",
    )
    base.update(kw)
    return TrainConfig(**base).resolve()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(quick: bool):
    from crepe.training.inputs import load_data

    return load_data(config(quick))  # users and held-out classes do not depend on the algorithm


def time_rounds(cfg: TrainConfig, ds, tmp: Path, rounds: int) -> dict:
    """Build the run as `crepe train` does, check one round, then time `rounds` more."""
    import torch

    from crepe.training.loop import build
    from crepe.training.plan import Plan
    from crepe.users.rounds import Users, unit_parameters, user_epoch

    torch.set_num_threads(THREADS)
    plan = Plan.for_data(cfg, ds)
    r = build(plan, ds, tmp, lambda s: None)
    users = Users.of(ds.user_ids)

    def go(steps: int):
        return user_epoch(r.model, r.opt, ds.x_train, ds.y_train, users, cfg=cfg, head=r.head,
                          sample_rate=plan.sample_rate, steps=steps, generators=r.gens, dp=True)

    # Check: one round moves what it aggregates and, for dp-fedemb, never the global head.
    named = unit_parameters(r.model, cfg, r.head)
    before = {n: p.detach().clone() for n, p in r.model.named_parameters()}
    st = go(1)
    assert st.rounds == 1 and st.units > 0
    aggregated = {n for n, _ in named}
    for n, p in r.model.named_parameters():
        moved = not torch.equal(p.detach(), before[n])
        assert moved == (n in aggregated), (n, moved)
    if cfg.algorithm == "dp-fedemb":
        assert len(aggregated) < len(before)  # the head is not aggregated

    load_before = load()
    t0 = time.perf_counter()
    st = go(rounds)
    wall = time.perf_counter() - t0
    return {
        "users": users.count, "users_per_round": cfg.users_per_round, "examples": int(len(ds.y_train)),
        "rounds_timed": st.rounds, "units_per_round_mean": st.units / st.rounds,
        "round_s": wall / st.rounds, "load_before": load_before, "load_after": load(),
    }


@pytest.mark.parametrize("k,local_epochs", FEDEMB, ids=[f"K{k}-E{e}" for k, e in FEDEMB])
def test_fedemb_round(benchmark, quick: bool, data, tmp_path: Path, k: int, local_epochs: int) -> None:
    cfg = config(quick, algorithm="dp-fedemb", virtual_client_size=k, local_epochs=local_epochs)
    rounds = 1 if quick else 5
    box: dict = {}
    benchmark.pedantic(lambda: box.update(time_rounds(cfg, data, tmp_path, rounds)), rounds=1, iterations=1)
    out = {"algorithm": "dp-fedemb", "K": k, "local_epochs": local_epochs, **box}
    benchmark.extra_info.update(out)
    RESULTS[f"dp-fedemb K={k} E={local_epochs}"] = out
    print("\n" + json.dumps(out))


@pytest.mark.parametrize("algorithm", ["dp-sgd", "dp-fedavg"])
def test_other_round(benchmark, quick: bool, data, tmp_path: Path, algorithm: str) -> None:
    cfg = config(quick, algorithm=algorithm)
    rounds = 1 if quick else 5
    box: dict = {}
    benchmark.pedantic(lambda: box.update(time_rounds(cfg, data, tmp_path, rounds)), rounds=1, iterations=1)
    out = {"algorithm": algorithm, "K": 1, "local_epochs": 1 if algorithm == "dp-fedavg" else None, **box}
    benchmark.extra_info.update(out)
    RESULTS[algorithm] = out
    print("\n" + json.dumps(out))


def test_summary() -> None:
    """The table of every round measured in this session (runs last)."""
    if not RESULTS:
        pytest.skip("no round measured")
    print("\n| algorithm | K | local epochs | units per round | s per round | load before -> after |")
    print("|---|---|---|---|---|---|")
    for out in RESULTS.values():
        print(f"| {out['algorithm']} | {out['K']} | {out['local_epochs'] if out['local_epochs'] else '-'} | "
              f"{out['units_per_round_mean']:.1f} | {out['round_s']:.3f} | {out['load_before'][0]} -> "
              f"{out['load_after'][0]} |")
