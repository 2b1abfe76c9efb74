"""User-level DP (DESIGN.md section 11): the epsilon of each trainer against Opacus' accountants
stepped by hand, the noise applied per round, user-level DP-SGD with one example per user against
example-level DP-SGD, the sampler's independence of the data, resume, group privacy, bad input."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import crepe
from crepe.config import TrainConfig, UsageError
from crepe.dp.sampling import block_names
from crepe.dp.sampling import steps_per_epoch
from crepe.privacy.group import user_epsilon
from crepe.training import api, inputs, loop
from crepe.training.plan import Plan, new_run_config
from crepe.users import rounds


class MLP(nn.Module):
    def __init__(self, d: int = 12, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def blobs(n: int = 600, users: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(9))[y] + torch.randn(n, 12, generator=g)
    return x, y, torch.arange(n) % users


ALGORITHMS = [
    ({"algorithm": "dp-sgd"}, 1.0),
    ({"algorithm": "dp-fedavg", "local_epochs": 2}, 1.0),
    ({"algorithm": "dp-fedemb", "virtual_client_size": 1}, 1.0),
    ({"algorithm": "dp-fedemb", "virtual_client_size": 8}, 2.0),
]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("options, sensitivity", ALGORITHMS)
def test_each_trainers_epsilon_is_opacus_stepped_by_hand(tmp_path: Path, options, sensitivity, accountant) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    x, y, uid = blobs()
    result = crepe.train(MLP(), (x, y), user_ids=uid, method="full", privacy_unit="user", users_per_round=16,
                         sigma=1.3, epochs=2, lr=0.5, accountant=accountant, out=tmp_path / "run",
                         log=lambda s: None, **options)
    q = 16 / 60
    steps = 2 * steps_per_epoch(q)
    by_hand = (RDPAccountant if accountant == "rdp" else PRVAccountant)()
    for _ in range(steps):
        by_hand.step(noise_multiplier=1.3 / sensitivity, sample_rate=q)
    assert result.epsilon == pytest.approx(by_hand.get_epsilon(delta=1e-5), abs=1e-6)
    assert [(r.kind, r.noise_multiplier, r.sample_rate, r.steps, r.unit) for r in result.ledger] == [
        ("train", 1.3 / sensitivity, q, steps, "user")]


@pytest.mark.parametrize("options, sensitivity", ALGORITHMS)
def test_the_noise_applied_per_round_is_the_ledgers_sigma_times_the_sensitivity(monkeypatch, options, sensitivity) -> None:
    """Every unit's update is made zero: what moves the parameters is the noise alone, sigma C per
    coordinate over the expected units (SGD, lr 1)."""
    cfg = new_run_config({"dataset": "user", "model": "user", "method": "full", "privacy_unit": "user",
                          "users_per_round": 16, "sigma": 1.3, "max_grad_norm": 0.7, "lr": 1.0, "epochs": 1, **options})
    x, y, uid = blobs()
    model = nn.Sequential(nn.Linear(12, 400), nn.Tanh(), nn.Linear(400, 3))
    plan = Plan.of(cfg, counts=[200, 200, 200], users=60)
    recorded = []
    head = model[2] if cfg.algorithm == "dp-fedemb" else None
    _, opt = loop.build_optimizer(plan, model, torch.Generator().manual_seed(1), on_release=recorded.append, head=head)
    monkeypatch.setattr(rounds, "update", lambda model, named, x, y, **kw: [torch.zeros_like(p) for _, p in named])
    covered = [p for _, p in rounds.unit_parameters(model, cfg, head)]
    before = [p.detach().clone() for p in covered]
    rounds.user_epoch(model, opt, x, y, rounds.Users.of(uid), cfg=cfg, head=head, sample_rate=plan.sample_rate, steps=1,
                      generators=gens(2, local=3), dp=True)
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, covered)])
    expected_units = plan.sample_rate * 60 / cfg.virtual_client_size
    (release,) = recorded
    assert release.noise_multiplier == pytest.approx(1.3 / sensitivity) and release.unit == "user"
    std = float(moved.std()) * expected_units
    assert std == pytest.approx(release.noise_multiplier * sensitivity * 0.7, rel=0.03)  # 4.8k+ coordinates
    if head is not None:  # the head is never aggregated: untouched by the server
        assert all(p.grad is None for p in head.parameters())


def test_user_level_dp_sgd_with_one_example_per_user_is_example_level_dp_sgd() -> None:
    """sigma 0, every user sampled (q = 1): one clipped step over the same batch, both ways."""
    from crepe.smallsets.sets import Coreset
    from crepe.training.epoch import set_weights, train_epoch

    x, y, _ = blobs(n=40, users=40)
    uid = torch.arange(40)
    torch.manual_seed(5)
    a, b = MLP(), MLP()
    b.load_state_dict(a.state_dict())
    init = {k: v.clone() for k, v in a.state_dict().items()}
    base = {"dataset": "user", "model": "user", "method": "full", "sigma": 1.0, "max_grad_norm": 0.05, "lr": 0.5,
            "epochs": 1, "batch_size": 40}
    example_plan = Plan.of(new_run_config(base), counts=[40], users=None)
    user_cfg = new_run_config({**base, "privacy_unit": "user", "users_per_round": 40, "batch_size": 256})
    user_plan = Plan.of(user_cfg, counts=[40], users=40)
    assert example_plan.sample_rate == user_plan.sample_rate == 1.0
    net, opt_a = loop.build_optimizer(example_plan, a, torch.Generator(), on_release=lambda r: None)
    _, opt_b = loop.build_optimizer(user_plan, b, torch.Generator(), on_release=lambda r: None)
    opt_a.noise_multiplier = opt_b.noise_multiplier = 0.0
    s = Coreset(np.arange(40), np.ones(40, dtype=np.int64))
    sw = set_weights(s, batch_size=40, dp=True, weighting="none", size=40)
    train_epoch(net, opt_a, x, y, s, sw, generators={n: torch.Generator().manual_seed(i) for i, n in enumerate(block_names())})
    rounds.user_epoch(b, opt_b, x, y, rounds.Users.of(uid), cfg=user_cfg, head=None, sample_rate=1.0, steps=1,
                      generators=gens(0), dp=True)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), name
        assert not torch.allclose(pa, init[name], atol=1e-4), name  # the step moved it


@pytest.mark.parametrize("algorithm", ["dp-fedavg", "dp-fedemb"])
def test_the_sampler_never_reads_the_data(algorithm: str) -> None:
    """Zeroing out a user (its examples gone) leaves the sampler's stream (who is sampled, how users
    are grouped) as it was: local training draws from its own generator."""
    x, y, uid = blobs()
    keep = uid != 7
    cfg = new_run_config({"dataset": "user", "model": "user", "method": "full", "privacy_unit": "user",
                          "users_per_round": 16, "sigma": 1.0, "lr": 1.0, "epochs": 1, "algorithm": algorithm,
                          **({"virtual_client_size": 4} if algorithm == "dp-fedemb" else {})})
    states = []
    for xs, ys, ids in ((x, y, uid), (x[keep], y[keep], uid[keep])):
        model = MLP()
        plan = Plan.of(cfg, counts=[len(ys)], users=60)
        head = model.head if algorithm == "dp-fedemb" else None
        _, opt = loop.build_optimizer(plan, model, torch.Generator().manual_seed(1), on_release=lambda r: None, head=head)
        users = rounds.Users.of(ids) if len(torch.unique(ids)) == 60 else _with_empty_user(ids, 7)
        g = gens(2, local=3)
        rounds.user_epoch(model, opt, xs, ys, users, cfg=cfg, head=head, sample_rate=plan.sample_rate, steps=4,
                          generators=g, dp=True)
        states.append([s.get_state() for n, s in g.items() if n != "select"])
    assert all(torch.equal(a, b) for a, b in zip(*states))


def gens(seed: int, *, local: int = 0) -> dict[str, torch.Generator]:
    """A run's generators for user rounds: sampler and sampling blocks from `seed`, local training's from `local`."""
    names = ("sampler", *block_names())
    return {"select": torch.Generator().manual_seed(local),
            **{n: torch.Generator().manual_seed(seed * 1000 + i) for i, n in enumerate(names)}}


def _with_empty_user(ids: torch.Tensor, empty: int) -> rounds.Users:
    counts = torch.bincount(ids, minlength=60)
    assert counts[empty] == 0
    starts = torch.zeros(61, dtype=torch.int64)
    starts[1:] = torch.cumsum(counts, 0)
    return rounds.Users(torch.argsort(ids, stable=True), starts)


def test_a_user_level_run_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    x, y, uid = blobs()
    given = {"dataset": "user", "model": "user", "method": "full", "privacy_unit": "user", "algorithm": "dp-fedemb",
             "virtual_client_size": 2, "local_epochs": 1, "users_per_round": 10, "sigma": 1.0, "lr": 1.0,
             "epochs": 3, "noise": "reproducible", "seed": 4, "threads": 1}
    cfg = new_run_config(given)
    ds = inputs.prepare(api._data((x, y), (x[:50], y[:50])), cfg, user_ids=uid)
    from crepe.training import rundir

    finals = []
    for name, stops in (("whole", [None]), ("resumed", [1, None])):
        torch.manual_seed(0)
        model = MLP()
        rundir.prepare_out(cfg, tmp_path / name, {})
        for stop in stops:
            m = MLP()
            m.load_state_dict(model.state_dict())
            out = loop.run(cfg, tmp_path / name, data=ds, model=m, stop_after_epochs=stop, log=lambda s: None)
        finals.append((out, m.state_dict()))
    (whole, w), (resumed, r) = finals
    assert resumed["status"] == "complete" and resumed["ledger"] == whole["ledger"]
    assert resumed["eps_total"] == whole["eps_total"]
    assert all(torch.equal(w[k], r[k]) for k in w)


def test_an_example_level_run_on_users_reports_epsilon_per_user_by_group_privacy(tmp_path: Path) -> None:
    x, y, uid = blobs()
    result = crepe.train(MLP(), (x, y), user_ids=uid, method="full", sigma=1.5, epochs=1, batch_size=60,
                         max_per_user=10, out=tmp_path / "run", log=lambda s: None)
    s = result.summary
    assert s["max_per_user"] == 10 and s["max_per_user_public"]
    assert s["eps_user"] == pytest.approx(user_epsilon(result.ledger, k=10, delta=1e-5, accountant="pld"), abs=0)
    assert s["eps_user"] > 3 * result.epsilon


@pytest.mark.parametrize("given, message", [
    ({"privacy_unit": "user", "method": "craig"}, "--method full only"),
    ({"privacy_unit": "user", "method": "full", "virtual_client_size": 8, "algorithm": "dp-fedemb",
      "users_per_round": 4}, "--virtual-client-size 8 exceeds --users-per-round 4"),
    ({"privacy_unit": "user", "method": "full"}, "needs users"),
    ({"method": "full", "local_epochs": 3}, "--local-epochs applies to --algorithm dp-fedavg or dp-fedemb only"),
    ({"method": "full", "algorithm": "dp-fedavg"}, "--algorithm applies to --privacy-unit user only"),
    ({"method": "full", "user_count": 5}, "--user-count applies to --users synthetic only"),
    ({"method": "full", "max_per_user": 5}, "--max-per-user is the most examples one user holds: it needs users"),
    ({"method": "full", "privacy_unit": "user", "clipping": "automatic"}, "--clipping and --diagnostics do not apply"),
])
def test_user_level_runs_that_cannot_be_honoured_are_refused(tmp_path: Path, given, message) -> None:
    x, y, _ = blobs()
    with pytest.raises(UsageError, match=message):
        crepe.train(MLP(), (x, y), epochs=1, out=tmp_path / "run", **given)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("ids, message", [
    (torch.arange(599) % 60, "user ids hold 599 entries for n = 600"),
    (torch.where(torch.arange(600) % 60 == 3, 4, torch.arange(600) % 60), "hold none"),
    (-(torch.arange(600) % 60), "must be >= 0"),
])
def test_user_ids_that_do_not_match_the_data_are_refused(tmp_path: Path, ids, message) -> None:
    x, y, _ = blobs()
    with pytest.raises(UsageError, match=message):
        crepe.train(MLP(), (x, y), user_ids=ids, method="full", privacy_unit="user", epochs=1, out=tmp_path / "r")


def test_the_command_line_refuses_more_synthetic_users_than_examples(data_root, capsys) -> None:
    from crepe.cli import main

    code = main(["train", "--out", "/nonexistent/never", "--dataset", "fashion-mnist", "--data-dir", str(data_root),
                 "--train-subset", "500", "--method", "full", "--privacy-unit", "user", "--users", "synthetic",
                 "--user-count", "1000"])
    assert code == 2
    assert "users (U) must be an integer in 1..n = 500" in capsys.readouterr().err


def test_a_user_level_run_whose_weights_diverge_stops_in_that_epoch(tmp_path: Path) -> None:
    """User-level rounds have no training loss: non-finite weights end the run in the epoch they appear,
    not after the last one, with the last good checkpoint kept."""
    x, y, uid = blobs()
    given = {"dataset": "user", "model": "user", "method": "full", "privacy_unit": "user", "algorithm": "dp-fedemb",
             "virtual_client_size": 2, "users_per_round": 10, "sigma": 1.0, "lr": 1e38, "local_lr": 1e38,
             "epochs": 3, "threads": 1}
    cfg = new_run_config(given)
    ds = inputs.prepare(api._data((x, y), (x[:50], y[:50])), cfg, user_ids=uid)
    from crepe.training import rundir

    rundir.prepare_out(cfg, tmp_path / "run", {})
    with pytest.raises(RuntimeError, match=r"training diverged in epoch 1 \(the loss is .*, the weights not finite\)"):
        loop.run(cfg, tmp_path / "run", data=ds, model=MLP(), log=lambda s: None)
    assert not rundir.read_metrics(tmp_path / "run")  # nothing of the diverged epoch was recorded


@pytest.mark.parametrize("options, sensitivity", [ALGORITHMS[0], ALGORITHMS[3]], ids=["dp-sgd", "dp-fedemb-K8"])
def test_canary_users_add_the_users_sensitivity_and_the_audit_reaches_its_ceiling_without_noise(
        tmp_path: Path, monkeypatch, options, sensitivity) -> None:
    """--audit-canaries in a user-level run: canary users sampled at q_u, each adding sensitivity x C e_j
    (2C in a virtual client of K > 1, the sensitivity the ledger's sigma / 2 is for). With the noise removed
    every score is a whole number of such contributions, 0 for an excluded canary, and every guess is right."""
    import json

    import opacus.optimizers.optimizer as opacus_optimizer

    from crepe.audit.bound import ceiling
    from crepe.training import rundir, state as ckpt

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    x, y, uid = blobs()
    m, C = 100, 0.5
    result = crepe.train(MLP(), (x, y), user_ids=uid, method="full", privacy_unit="user", users_per_round=30,
                         sigma=1.0, max_grad_norm=C, lr=0.1, epochs=10, audit_canaries=m, keep_secrets=True,
                         noise="reproducible", out=tmp_path / "run", log=lambda s: None, **options)
    audit = json.loads((tmp_path / "run" / rundir.AUDIT).read_text())
    assert (audit["canaries"], audit["correct"]) == (m, m // 2)
    assert audit["eps_lb"] == pytest.approx(ceiling(m=m, r=m // 2, delta=1e-5), rel=1e-12)
    assert audit["eps_upper"] == result.epsilons["train"]  # per user
    cfg = rundir.read_config(tmp_path / "run")
    state = ckpt.load(tmp_path / "run" / rundir.CHECKPOINT, cfg=cfg, fingerprint=None)["state"]["canaries"]
    draws = state["scores"] / (sensitivity * C)  # times each canary was sampled, over 20 rounds at q_u = 1/2
    torch.testing.assert_close(draws, draws.round(), atol=1e-5, rtol=0)
    assert bool((draws[~state["included"]] == 0).all()) and bool((draws[state["included"]] >= 1).all())
    assert 8 < float(draws[state["included"]].mean()) < 12


def test_canary_users_with_secret_noise_stay_below_the_user_level_epsilon(tmp_path: Path) -> None:
    x, y, uid = blobs()
    result = crepe.train(MLP(), (x, y), user_ids=uid, method="full", privacy_unit="user", users_per_round=30,
                         algorithm="dp-fedemb", virtual_client_size=8, sigma=1.0, lr=0.1, epochs=10,
                         audit_canaries=100, out=tmp_path / "run", log=lambda s: None)
    audit = result.summary["audit"]
    assert audit["eps_lb"] <= audit["eps_upper"] == result.epsilons["train"]


def test_target_unit_user_calibrates_an_example_level_run_to_its_epsilon_per_user(tmp_path: Path) -> None:
    """--target-epsilon E --target-unit user: sigma solved so that the group-privacy epsilon per user of at
    most k examples (privacy/group.py, pld) lands in [0.99 E, E]; the example-level epsilon is far smaller."""
    x, y, uid = blobs()
    common = dict(user_ids=uid, method="full", epochs=2, batch_size=60, max_per_user=10, log=lambda s: None)
    per_user = crepe.train(MLP(), (x, y), target_epsilon=4.0, target_unit="user", out=tmp_path / "user", **common)
    s = per_user.summary
    assert 0.99 * 4.0 <= s["eps_user"] <= 4.0
    assert s["eps_user"] == pytest.approx(user_epsilon(per_user.ledger, k=10, delta=1e-5, accountant="pld"), abs=0)
    assert per_user.epsilon < s["eps_user"] / 3
    per_example = crepe.train(MLP(), (x, y), target_epsilon=4.0, out=tmp_path / "example", **common)
    assert 0.99 * 4.0 <= per_example.epsilon <= 4.0 and per_user.sigma > 2 * per_example.sigma


@pytest.mark.parametrize("given, message", [
    ({"target_unit": "user"}, "--target-unit says what --target-epsilon is per: give both"),
    ({"target_epsilon": 3.0, "target_unit": "example", "privacy_unit": "user"},
     "--target-unit example with --privacy-unit user"),
    ({"target_epsilon": 3.0, "target_unit": "people"}, "unknown target unit 'people'; valid: example, user"),
])
def test_bad_target_units_are_refused(given, message) -> None:
    with pytest.raises(UsageError, match=message):
        new_run_config({"dataset": "fashion-mnist", "method": "full", **given})


def test_target_unit_user_needs_users(tmp_path: Path) -> None:
    x, y, _ = blobs()
    with pytest.raises(UsageError, match="--target-unit user calibrates to epsilon per user of at most k examples: it "
                                         "needs users"):
        crepe.train(MLP(), (x, y), method="full", target_epsilon=3.0, target_unit="user", out=tmp_path / "r",
                    log=lambda s: None)
    assert not (tmp_path / "r").exists()


def test_a_dry_run_prints_the_per_user_epsilon_it_calibrates_to(data_root, capsys) -> None:
    from crepe import cli

    code = cli.main(["train", "--dry-run", "--dataset", "fashion-mnist", "--data-dir", str(data_root), "--method",
                     "full", "--train-subset", "600", "--users", "synthetic", "--user-count", "30", "--epochs", "3",
                     "--batch-size", "60", "--target-epsilon", "5", "--target-unit", "user", "--accountant", "rdp"])
    out = capsys.readouterr().out
    assert code == 0 and "per user of at most 40 examples" in out  # k = 2 ceil(600 / 30)
    line = next(x for x in out.splitlines() if x.startswith("crepe train: planned epsilon") and "per user" in x)
    assert 0.99 * 5 <= float(line.split()[4]) <= 5


def test_local_momentum_is_torch_sgd_with_momentum_from_zero_each_round() -> None:
    x, y, _ = blobs(n=30)
    cfg = new_run_config({"dataset": "user", "model": "user", "method": "full", "privacy_unit": "user",
                          "algorithm": "dp-fedavg", "local_epochs": 2, "local_batch_size": 8, "local_lr": 0.1,
                          "local_momentum": 0.9, "sigma": 1.0})
    torch.manual_seed(1)
    model = MLP()
    got = rounds.local_training(model, x, y, cfg=cfg, head=None, generator=torch.Generator().manual_seed(4))
    oracle = MLP()
    oracle.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(oracle.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        perm = torch.randperm(30, generator=g)
        for s in range(0, 30, 8):
            opt.zero_grad()
            nn.functional.cross_entropy(oracle(x[perm[s : s + 8]]), y[perm[s : s + 8]]).backward()
            opt.step()
    for n, p in oracle.named_parameters():
        torch.testing.assert_close(got[n], p, atol=1e-6, rtol=0)
    assert not torch.allclose(got["head.weight"], model.head.weight)


def test_head_warm_steps_train_the_fresh_head_alone() -> None:
    x, y, _ = blobs(n=40)
    given = {"dataset": "user", "model": "user", "method": "full", "privacy_unit": "user", "algorithm": "dp-fedemb",
             "local_batch_size": 8, "local_lr": 0.1, "head_lr_scale": 10.0, "sigma": 1.0}
    torch.manual_seed(2)
    model = MLP()
    warm_only = new_run_config({**given, "head_warm_steps": 3, "max_local_steps": 3})
    got = rounds.local_training(model, x, y, cfg=warm_only, head=model.head, generator=torch.Generator().manual_seed(0))
    for n, p in model.body.named_parameters():
        assert torch.equal(got[f"body.{n}"], p)  # frozen: the backbone delta is zero
    assert not torch.equal(got["head.weight"], model.head.weight)
    after = new_run_config({**given, "head_warm_steps": 3, "max_local_steps": 4})  # one joint step after the warm-up
    got = rounds.local_training(model, x, y, cfg=after, head=model.head, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(got["body.0.weight"], model.body[0].weight)
    with pytest.raises(UsageError, match="--head-warm-steps apply to --algorithm dp-fedemb only"):
        new_run_config({**given, "algorithm": "dp-fedavg", "head_warm_steps": 3})
