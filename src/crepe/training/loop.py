"""The training loop of `crepe train`: the run plan (training/plan.py), followed epoch by epoch.

Per epoch (epochs and k = select_every scaled under --compute steps):
  1. when the plan redraws (epochs 0, k, 2k, ... for craig and random; 0 for
     private-set), the method chooses the set (smallsets/methods/), recording
     its round's releases (craig: one "select"; a Poisson draw: a "subset"
     marker, its realised size never published; private-set: generation);
  2. one epoch of (DP-)SGD over the set (training/epoch.py); the optimizer
     records each step's release from its step hook;
  3. the recorded releases are checked against the plan (a mismatch stops
     the run before any epsilon is printed); test accuracy; epsilon
     total/select/train per privacy unit; checkpoint (atomic, checksummed),
     then the metrics.jsonl line.
After the last epoch: the summary, the checkpoint reduced to what may be
published (training/state.py; unless --keep-secrets), then summary.json.

Randomness (DESIGN.md section 9): --seed fixes model initialisation. The DP
noise, Poisson sampling and selection noise draw from generators whose whole
MT19937 state is expanded from a 256-bit key (dp/secret_rng.py): drawn from
the OS (noise = "secret") and never written, or derived from --seed (noise =
"reproducible"; every epsilon printed then says it holds only if the seed is
secret). Their states live only in the checkpoint of an unfinished run, which
therefore replays all past and future noise.

Under torchrun (dp/distributed.py) every rank runs this loop on the same data and
model: each draws its own sampling blocks' batches, the DP optimizer sums the
ranks' clipped gradients and rank 0 adds the noise; selection rounds run on every
rank and rank 0's set is the one trained on; rank 0 alone evaluates, checkpoints
(with every rank's sampling generators) and writes the run folder.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from crepe import data as data_mod
from crepe.audit import canaries as audit
from crepe.config import USER, TrainConfig, UsageError
from crepe.dp import distributed, pruning
from crepe.dp.clipping import count_noise, make_clip_rule
from crepe.dp.diagnostics import PROBE_SIZE, clipping_diagnostics
from crepe.dp.optimizer import DPOptimizer, Optimizer, PlainOptimizer
from crepe.dp.optimizers import make_base_optimizer
from crepe.dp.sampling import block_names, steps_per_epoch
from crepe.dp.secret_rng import KEY_BYTES, keyed_generator, new_key
from crepe.models import build_model
from crepe.privacy.accounting import epsilons
from crepe.smallsets.method import Round
from crepe.training import export, inputs, rundir, state as ckpt
from crepe.training.epoch import EpochStats, SetWeights, set_weights, train_epoch
from crepe.training.plan import Plan
from crepe.training.state import GENERATORS, RunState

CHECKPOINT_NOTES = {  # summary.json's checkpoint_note, by --keep-secrets
    False: "checkpoint.pt holds the final model, optimizer state, config, ledger and metrics only: its generator "
    "states, subset and label fingerprint were removed when the run finished (while a run is unfinished its "
    "checkpoint replays all past and future noise: as sensitive as the data)",
    True: "checkpoint.pt was kept with its secrets (--keep-secrets): its generator states replay all past and future "
    "noise, and it holds the subset and a label fingerprint: as sensitive as the data, never publish it",
}


@dataclass
class Run:
    """One run being trained: its plan, data, model, optimizer, generators and state."""

    plan: Plan
    ds: data_mod.LoadedData
    run_dir: Path
    say: Callable[[str], None]
    model: nn.Module
    net: nn.Module  # the model as batches go through it (Opacus' GradSampleModule under DP)
    opt: Optimizer
    gens: dict[str, torch.Generator]
    model_seed: int
    st: RunState = field(default_factory=RunState)
    head: nn.Linear | None = None  # dp-fedemb: the layer each virtual client trains afresh and keeps
    canaries: audit.WhiteBox | None = None  # --audit-canaries: inside the DP optimizer's steps
    world: distributed.World = distributed.SINGLE  # torchrun: this rank's place (dp/distributed.py)

    @property
    def cfg(self) -> TrainConfig:
        return self.plan.cfg

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the epochs run on: the training split, or the synthetic set that replaced it."""
        if self.st.synthetic is not None:
            return self.st.synthetic["images"], self.st.synthetic["labels"]
        return self.ds.x_train, self.ds.y_train

    def save(self) -> None:
        """The checkpoint (rank 0 writes it, with every rank's sampling generators' states)."""
        if self.world.size > 1:
            own = set(block_names()[b] for b in self.world.blocks())
            for states in self.world.all_gather_object({k: g.get_state() for k, g in self.gens.items() if k in own}):
                for k, state in states.items():
                    self.gens[k].set_state(state)
        if not self.world.writes:
            return
        if self.canaries is not None:  # their scores move every step: the checkpoint holds the current ones
            self.st.canaries = self.canaries.state()
        ckpt.save(self.run_dir / rundir.CHECKPOINT, config=self.cfg.to_dict(), fingerprint=self.ds.fingerprint,
                  model=self.model, optimizer=self.opt, generators=self.gens, state=self.st)


def run(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    data: data_mod.LoadedData | None = None,
    model: nn.Module | None = None,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train `cfg` (resolved) in `run_dir` (prepared by rundir.prepare_out), continuing from its
    checkpoint if there is one, on `data` (loaded here if not given), training `model` (crepe.train:
    one's own, trained in place; else cfg.model, built here from --seed). Returns the summary, or, when
    `stop_after_epochs` (epochs to run in this call) stops it early, {"status": "incomplete",
    "epoch": e} (the folder stays resumable)."""
    world = distributed.current()
    say = log if log is not None else (lambda s: print(s, file=sys.stderr, flush=True))
    if not world.writes:
        say = lambda s: None  # noqa: E731 -- rank 0 prints
    assert cfg.sigma is not None and cfg.select_sigma is not None and cfg.lr is not None, "resolve the config first"
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    ds = data if data is not None else inputs.load_data(cfg)
    announce(cfg, ds, say)
    r = build(Plan.for_data(cfg, ds), ds, Path(run_dir), say, model=model, world=world)
    finished = resume(r)
    if finished is not None:  # finished, but stopped before summary.json was written
        return finished
    say(r.plan.line())
    st, plan, ran = r.st, r.plan, 0
    bar = _progress(log is None and sys.stderr.isatty())
    with warnings.catch_warnings():
        # Opacus' hooks on a first layer whose input needs no grad: harmless (BUILD_NOTES).
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        while st.epoch < plan.epochs:
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                return {"status": "incomplete", "epoch": st.epoch}
            due = pruning.schedule(r.cfg.prune_at, r.cfg.sparsity, warmup=r.cfg.prune_warmup, epochs=plan.epochs)
            if st.epoch in due and (r.cfg.prune_at == "iterative" or st.masks is None):  # a resume never re-prunes
                prune(r, due[st.epoch])
            selected, select_time = select_round(r)  # the method chooses the set when the plan says so
            t_epoch = time.perf_counter()
            x, y = r.train_data()
            t0 = time.perf_counter()
            if plan.user_level:
                sw, es = None, user_epoch(r, bar(st.epoch + 1))
            else:
                sw = set_weights(st.coreset, batch_size=r.cfg.batch_size, dp=r.cfg.dp, weighting=r.cfg.weights,
                                 size=plan.set_size)
                es = train_epoch(r.net, r.opt, x, y, st.coreset, sw, generators=r.gens, world=r.world,
                                 progress=bar(st.epoch + 1))
            train_time = time.perf_counter() - t0
            finite = all(bool(torch.isfinite(p).all()) for p in r.model.parameters())  # user-level rounds have no loss
            if not math.isfinite(es.loss_sum) or not finite:  # nothing of this epoch is saved: the last checkpoint stays good
                raise RuntimeError(f"training diverged in epoch {st.epoch + 1} (the loss is {es.loss_sum}, the weights "
                                   f"{'finite' if finite else 'not finite'}); lower --lr. "
                                   f"The run folder keeps its last good checkpoint (epoch {st.epoch})")
            plan.check(st.ledger, epochs_done=st.epoch + 1)  # planned = recorded, before any epsilon is printed
            t0 = time.perf_counter()
            last = st.epoch + 1 == plan.epochs
            evaluate = r.world.writes and len(r.ds.y_test) > 0 and plan.no_test_accuracy is None and (
                last or (st.epoch + 1) % r.cfg.eval_every == 0)
            test_acc, test_loss = evaluation(r.model, r.ds.x_test, r.ds.y_test) if evaluate else (None, None)
            diag = diagnostics(r, x, y, sw)  # not covered by epsilon
            eval_time = time.perf_counter() - t0
            st.epoch, ran = st.epoch + 1, ran + 1
            st.select_time_s += select_time
            st.train_time_s += train_time
            st.eval_time_s += eval_time
            st.examples_seen += es.seen
            st.total_time_s += select_time + time.perf_counter() - t_epoch
            row = epoch_row(r, es, test_acc=test_acc, test_loss=test_loss, diag=diag, selected=selected,
                            times=(select_time, train_time, eval_time))
            st.metrics.append(row)
            r.save()  # the checkpoint first: metrics.jsonl never holds an epoch the checkpoint lacks
            if r.world.writes:
                rundir.append_line(r.run_dir / rundir.METRICS, row)
            say(epoch_line(r, row))
    return finish(r)


def announce(cfg: TrainConfig, ds: data_mod.LoadedData, say: Callable[[str], None]) -> None:
    what = "your data" if cfg.dataset == USER else f"{cfg.dataset} from {ds.source}"
    say(f"crepe train: {what}: {len(ds.y_train)} train / {len(ds.y_test)} test examples")
    if ds.split.startswith("mnist-t10k"):
        say(f"crepe train: MNIST has no training split offline; training on {ds.split} of its test digits (fixed split)")


def seeds(cfg: TrainConfig, world: distributed.World = distributed.SINGLE) -> tuple[int, bytes]:
    """(model init seed, the key of the generators) -- the key secret unless noise is reproducible
    (rank 0's, on every rank)."""
    derived = np.random.SeedSequence(cfg.seed).generate_state(1 + KEY_BYTES // 4)  # uint32 words
    key = derived[1:].astype("<u4").tobytes() if cfg.noise == "reproducible" else new_key()
    return int(derived[0]), world.broadcast_object(key)


def build(plan: Plan, ds: data_mod.LoadedData, run_dir: Path, say: Callable[[str], None], *,
          model: nn.Module | None = None, world: distributed.World = distributed.SINGLE) -> Run:
    """The model (one's own, or built from --seed), the run's generators (from its key) and its optimizer."""
    cfg = plan.cfg
    model_seed, key = seeds(cfg, world)
    torch.manual_seed(model_seed)  # also what a model of one's own draws in training (dropout)
    if model is None:
        model = new_model(cfg, ds)
    if cfg.pretrain is not None and not (run_dir / rundir.CHECKPOINT).is_file():  # a resumed run loads its weights
        from crepe.training.pretrain import pretrain

        record = pretrain(model, cfg, seed=model_seed, say=say)
        if world.writes:
            rundir.atomic_write_json(run_dir / rundir.PRETRAIN, record)
    world.broadcast_([p.data for p in model.parameters()])  # every rank starts from rank 0's weights
    gens = {name: keyed_generator(key, name) for name in GENERATORS}
    st = RunState()
    head = head_of(model, ds.x_train[:2]) if plan.user_level and cfg.algorithm == "dp-fedemb" else None
    net, opt = build_optimizer(plan, model, gens["noise"], on_release=lambda release: st.ledger.record(release), head=head,
                               world=world)
    canaries = None
    if cfg.audit_canaries is not None and world.writes:  # drawn from the run's key: secret unless the noise is reproducible
        assert isinstance(opt, DPOptimizer)
        gens["audit"] = keyed_generator(key, "audit")
        canaries = audit.WhiteBox.draw(cfg.audit_canaries, opt.params, gens["audit"])
        opt.canaries = canaries
    r = Run(plan, ds, run_dir, say, model, net, opt, gens, model_seed, st, head=head, canaries=canaries, world=world)
    if cfg.sparsity > 0 and cfg.prune_at == "init":  # from the initial weights: no data (a resume loads its own)
        prune(r, cfg.sparsity)
    return r


def prune(r: Run, sparsity: float) -> None:
    """Take the run's mask at `sparsity` from the model's weights now (--prune-at init: the initial ones;
    warmup, iterative: the DP-trained ones, post-processing) and prune with it; an earlier mask's pruned
    weights stay pruned."""
    masks = pruning.magnitude_masks(r.model, sparsity, scope=r.cfg.prune_scope)
    if r.st.masks is not None:
        masks = {k: m & r.st.masks[k] for k, m in masks.items()}
    r.st.masks = masks
    use_masks(r)
    if r.cfg.prune_at != "init":
        r.say(f"crepe train: pruned {sparsity:.4g} of the weights ({r.cfg.prune_scope}) by magnitude after "
              f"{r.st.epoch} epochs (the DP-trained weights: no epsilon)")


def use_masks(r: Run) -> None:
    assert r.st.masks is not None
    pruning.apply(r.model, r.st.masks)
    r.opt.set_masks(pruning.pairs(r.model, r.st.masks))


def new_model(cfg: TrainConfig, ds: data_mod.LoadedData) -> nn.Module:
    """--model for the images of `ds` (initialised from the global torch RNG: seed it first)."""
    return build_model(cfg.model, activation=cfg.activation, shape=tuple(ds.x_train.shape[1:]),
                       classes=data_mod.classes(cfg.dataset), norm_groups=cfg.norm_groups)


def build_optimizer(plan: Plan, model: nn.Module, noise_gen: torch.Generator, *, on_release: Any,
                    head: nn.Linear | None = None,
                    world: distributed.World = distributed.SINGLE) -> tuple[nn.Module, Optimizer]:
    """The network to run batches through and the optimizer, DP or plain, sharing one interface. A
    user-level run's optimizer is the server's: over the parameters a unit's update covers."""
    cfg = plan.cfg
    assert cfg.lr is not None and cfg.sigma is not None
    if plan.user_level:
        from crepe.users.algorithms import sensitivity
        from crepe.users.rounds import unit_parameters

        base = make_base_optimizer(cfg.optimizer, [p for _, p in unit_parameters(model, cfg, head)], lr=cfg.lr,
                                   momentum=cfg.momentum)
        if not cfg.dp:
            return model, PlainOptimizer(base, on_release=on_release, unit="user", world=world)
        return model, DPOptimizer(base, noise_multiplier=cfg.sigma, clip_rule=make_clip_rule("flat", max_grad_norm=cfg.max_grad_norm),
                                  generator=noise_gen, on_release=on_release, unit="user", sensitivity=sensitivity(cfg),
                                  world=world)
    base = make_base_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    if not plan.method.trains_privately:  # training on synthetic images reads no private data: no release
        return model, PlainOptimizer(base, on_release=lambda release: None, world=world)
    if not cfg.dp:
        return model, PlainOptimizer(base, on_release=on_release, world=world)
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    ModuleValidator.validate(model, strict=True)
    rule = make_clip_rule(cfg.clipping, max_grad_norm=cfg.max_grad_norm, quantile=cfg.clip_quantile, lr=cfg.clip_lr)
    opt = DPOptimizer(base, noise_multiplier=cfg.sigma, clip_rule=rule, generator=noise_gen, on_release=on_release,
                      count_noise=count_noise(cfg.batch_size), world=world)
    return GradSampleModule(model, batch_first=True, loss_reduction="sum"), opt


def resume(r: Run) -> dict[str, Any] | None:
    """Continue from the checkpoint, if any, once it is verified (checksum, data, configuration,
    metrics.jsonl, and its ledger against the plan). Returns the summary of a run that finished
    but stopped before writing summary.json."""
    cfg, ckpt_path = r.cfg, r.run_dir / rundir.CHECKPOINT
    if not ckpt_path.is_file():
        if rundir.read_metrics(r.run_dir):
            raise UsageError(f"{r.run_dir}: metrics.jsonl records epochs but {rundir.CHECKPOINT} is missing: the run "
                             "cannot continue (its noise and ledger are gone); start a new --out")
        return None
    ck = ckpt.load(ckpt_path, cfg=cfg, fingerprint=r.ds.fingerprint)
    if ck["summary"] is not None:
        if r.world.writes:
            export.write(r.run_dir, ck["model"], cfg, ck["summary"])
            rundir.atomic_write_json(r.run_dir / rundir.SUMMARY, ck["summary"])
        return ck["summary"]
    restored = ckpt.restore_state(ck)
    if restored.synthetic is not None and restored.progress is None and restored.epoch == 0:
        raise UsageError(f"{ckpt_path} was written by an older crepe between generation and the first epoch, where "
                         "this version keeps the generation state instead: it cannot be resumed; start a new --out")
    ckpt.verify_against_metrics(restored, rundir.read_metrics(r.run_dir), delta=cfg.delta, accountant=cfg.accountant,
                                where=r.run_dir)
    ckpt.verify_ledger(restored, r.plan.ledger(restored.epoch, progress=restored.progress), where=r.run_dir)
    r.model.load_state_dict(ck["model"])
    r.opt.load_state_dict(ck["optimizer"])
    missing = sorted(set(r.gens) - set(ck["generators"]))
    if missing:
        raise UsageError(f"{ckpt_path} was written by an older crepe that drew Poisson batches from one generator; "
                         f"it has no state for {missing[0]} and cannot be resumed: start a new run with another --out")
    for name, g in r.gens.items():
        g.set_state(ck["generators"][name])
    if r.canaries is not None:
        r.canaries.load(restored.canaries)
    r.st.ledger.extend(restored.ledger)  # the optimizer records into this very ledger
    restored.ledger = r.st.ledger
    r.st = restored
    if r.st.masks is not None:  # the mask taken before the checkpoint, never recomputed
        use_masks(r)
    if r.world.writes:
        rundir.write_metrics(r.run_dir / rundir.METRICS, r.st.metrics)  # at most the last line was missing
        if rundir.read_config(r.run_dir) != cfg:  # --resume with new machine flags
            rundir.write_config(r.run_dir, cfg, rundir.read_json(r.run_dir / rundir.CONFIG).get("provenance", {}))
    r.say(f"crepe train: resumed {r.run_dir} after epoch {r.st.epoch}/{r.plan.epochs}")
    return None


def select_round(r: Run) -> tuple[bool, float]:
    """(whether the plan redraws the set now, the seconds of its round not yet counted): the method's
    `choose`, also for a first set that no round releases anything for (full). A round saved part
    way counts its time up to each save in the state it saves."""
    st, redraw = r.st, r.plan.redraws(r.st.epoch)
    if st.coreset is not None and not redraw:
        return False, 0.0
    t0 = [time.perf_counter()]

    def save_progress(progress: dict[str, Any] | None) -> None:
        now = time.perf_counter()
        st.select_time_s += now - t0[0]
        st.total_time_s += now - t0[0]
        t0[0] = now
        st.progress = progress
        if progress is not None:
            r.save()

    rnd = Round(r.model, r.ds.x_train, r.ds.y_train, r.gens, record=st.ledger.record, say=r.say, run_dir=r.run_dir,
                progress=st.progress, save_progress=save_progress)
    chosen = r.world.broadcast_object(r.plan.method.choose(r.cfg, rnd))  # every rank chose; rank 0's set is trained on
    st.coreset = chosen.coreset
    st.synthetic = chosen.synthetic if chosen.synthetic is not None else st.synthetic
    return redraw, time.perf_counter() - t0[0]


def user_epoch(r: Run, progress: Callable[[int, int], None]) -> EpochStats:
    """One epoch of the user-level trainer (users/rounds.py)."""
    from crepe.users.rounds import Users, user_epoch as rounds

    assert r.ds.user_ids is not None
    q = r.plan.sample_rate
    st = rounds(r.model, r.opt, r.ds.x_train, r.ds.y_train, Users.of(r.ds.user_ids), cfg=r.cfg, head=r.head,
                sample_rate=q, steps=steps_per_epoch(q), generators=r.gens, dp=r.cfg.dp, world=r.world,
                progress=progress)
    return EpochStats(steps=st.rounds)


def head_of(model: nn.Module, probe: torch.Tensor) -> nn.Linear:
    from crepe.smallsets.proxies import head_call

    was_training = model.training
    model.eval()
    with torch.no_grad():
        head = head_call(model, probe)[0]
    model.train(was_training)
    return head


@torch.no_grad()
def evaluation(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` in eval mode on (x, y)."""
    model.eval()
    correct, loss = 0, 0.0
    for s in range(0, len(y), 2048):
        out = model(x[s : s + 2048])
        correct += int((out.argmax(1) == y[s : s + 2048]).sum())
        loss += float(nn.functional.cross_entropy(out, y[s : s + 2048], reduction="sum"))
    model.train()
    return correct / max(1, len(y)), loss / max(1, len(y))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return evaluation(model, x, y)[0]


def diagnostics(r: Run, x: torch.Tensor, y: torch.Tensor, sw: SetWeights | None) -> dict[str, Any] | None:
    """Clipping diagnostics on a fixed probe of training examples (seeded by --seed: not a DP release)."""
    if not r.cfg.diagnostics or sw is None or not r.world.writes:  # a user-level run has none (refused with its options)
        return None
    probe = torch.randperm(len(y), generator=torch.Generator().manual_seed(r.model_seed))[:PROBE_SIZE]
    return clipping_diagnostics(r.net, list(r.model.parameters()), r.opt.clip_rule, x[probe], y[probe],
                                sigma=r.cfg.sigma, batch_size=sw.normaliser)


def epoch_row(r: Run, es: EpochStats, *, test_acc: float | None, test_loss: float | None, diag: dict[str, Any] | None,
              selected: bool, times: tuple[float, float, float]) -> dict[str, Any]:
    """The metrics.jsonl line of the epoch just done. Training figures are not covered by epsilon;
    a Poisson subset's are withheld: correct/seen and loss/seen are rationals whose denominator
    gives back its secret realised size."""
    cfg, st, secret = r.cfg, r.st, r.plan.secret_size
    eps = epsilons(st.ledger, delta=cfg.delta, accountant=cfg.accountant)
    figures = es.seen > 0 and not secret
    row: dict[str, Any] = {
        "epoch": st.epoch,
        "train_loss": es.loss_sum / es.seen if figures else None,
        "train_acc": es.correct / es.seen if figures else None,
        "test_acc": test_acc,
        "test_loss": test_loss,  # held-out data
        **rundir.eps_json(eps),
        "delta": cfg.delta,
        "selected": selected,
        "coreset_size": r.plan.set_size,  # the public size (a Poisson subset's realised size is secret)
        "sample_rate": r.plan.sample_rate,
        "steps": es.steps,
        "clip_norm": r.opt.clip_rule.max_grad_norm if isinstance(r.opt, DPOptimizer) else None,
        "examples_seen": None if secret else es.seen,
        "examples_seen_total": None if secret else st.examples_seen,
        "select_time_s": times[0],
        "train_time_s": times[1],
        "eval_time_s": times[2],
        "noise_to_signal": r.opt.take_noise_to_signal(),  # of the clipped sums: not covered by epsilon
    }
    if cfg.sparsity > 0:
        row["sparsity"] = pruning.realised(r.model)
    if diag is not None:
        row["diagnostics"] = diag
    return row


def epoch_line(r: Run, row: dict[str, Any]) -> str:
    loss, acc = row["train_loss"], row["test_acc"]
    tail = rundir.caveat_tail(labels_public=r.plan.labels_public, reproducible=r.cfg.noise == "reproducible")
    return (
        f"epoch {row['epoch']}/{r.plan.epochs}: train loss {'-' if loss is None else f'{loss:.4f}'} ({rundir.NOT_COVERED}) "
        f"test acc {'-' if acc is None else f'{acc:.4f}'} eps "
        f"{rundir.eps_parts(row, (x.kind for x in r.plan.round_releases()))} per {r.st.ledger.unit}{tail} "
        f"select {row['select_time_s']:.2f}s train {row['train_time_s']:.2f}s |S| {row['coreset_size']:g}"
    )


def finish(r: Run) -> dict[str, Any]:
    """The summary; the checkpoint reduced to what may be published; then summary.json. The secrets
    go before summary.json marks the run complete: a run stopped in between is finished by --resume
    from the published checkpoint, never left complete with its secrets."""
    cfg, st, plan, ds = r.cfg, r.st, r.plan, r.ds
    if not r.world.writes:
        return {"status": "complete", "rank": r.world.rank}  # rank 0 writes the summary
    t0 = time.perf_counter()
    train_acc = accuracy(r.model, ds.x_train, ds.y_train)
    st.total_time_s += time.perf_counter() - t0
    eps = epsilons(st.ledger, delta=cfg.delta, accountant=cfg.accountant)
    last, secret = st.metrics[-1], plan.secret_size
    summary: dict[str, Any] = {
        "status": "complete",
        "epochs": plan.epochs,
        "test_acc": last["test_acc"],
        "test_acc_note": plan.no_test_accuracy or (None if len(ds.y_test) else "no test data"),
        "train_acc": train_acc,  # the final model on the whole training split
        "train_acc_batches": last["train_acc"],  # the last epoch's Poisson batches, training mode (None: withheld)
        "train_acc_note": rundir.NOT_COVERED,
        **rundir.eps_json(eps),
        "delta": cfg.delta,
        "accountant": cfg.accountant,
        "unit": st.ledger.unit,
        **user_level_by_group(r, eps_total=eps["total"]),
        "adjacency": "zero-out",
        "noise": cfg.noise,
        "labels_public": plan.labels_public,
        "caveat": rundir.LABELS_CAVEAT if plan.labels_public else None,
        "noise_caveat": rundir.REPRODUCIBLE_CAVEAT if cfg.noise == "reproducible" else None,
        "checkpoint_note": CHECKPOINT_NOTES[cfg.keep_secrets],
        "private_selection": plan.private_selection,
        "sigma": cfg.sigma,
        "select_sigma": cfg.select_sigma,
        "select_time_s": st.select_time_s,
        "train_time_s": st.train_time_s,
        "eval_time_s": st.eval_time_s,
        "total_time_s": st.total_time_s,
        "examples_seen": None if secret else st.examples_seen,
        "coreset_size": last["coreset_size"],
        "n_train": len(ds.y_train),
        "n_test": len(ds.y_test),
        "data_split": ds.split,
        "data_source": ds.source,
        **export.architecture(r.model, ds.x_train),
        "pretrain": rundir.read_json(r.run_dir / rundir.PRETRAIN) if cfg.pretrain is not None else None,
        **embedding_metrics(r),
        **audit_of(r, eps_train=eps["train"]),
        "ledger": st.ledger.to_list(),
    }
    if not cfg.keep_secrets:
        ckpt.save_finished(r.run_dir / rundir.CHECKPOINT, config=cfg.to_dict(), model=r.model, optimizer=r.opt,
                           state=st, summary=summary)
    export.write(r.run_dir, r.model.state_dict(), cfg, summary)  # the publishable model, before "complete"
    rundir.atomic_write_json(r.run_dir / rundir.SUMMARY, summary)
    return summary


def audit_of(r: Run, *, eps_train: float) -> dict[str, Any]:
    """--audit-canaries: audit.json, computed while the canaries are still there (finish removes them
    with the other secrets), and what summary.json repeats of it."""
    if r.canaries is None:
        return {}
    result = audit.record(r.canaries.state(), guesses=r.cfg.guesses, delta=r.cfg.delta, eps_upper=eps_train,
                          epochs_done=r.st.epoch, complete=True)
    rundir.atomic_write_json(r.run_dir / rundir.AUDIT, result)
    return {"audit": {k: result[k] for k in audit.SUMMARY_KEYS}}


def embedding_metrics(r: Run) -> dict[str, Any]:
    """--held-out-classes: the model's embeddings (the input of its last nn.Linear, L2-normalised) of
    the held-out classes' test examples: exact pair recall at FAR 1e-3 and 0.1 over all their pairs,
    1-NN accuracy with the first test example of each class as the gallery (users/embedding.py)."""
    ds = r.ds
    if ds.x_held is None or ds.y_held is None or len(ds.y_held) == 0:
        return {}
    from crepe.smallsets.proxies import head_input
    from crepe.users.embedding import embed, nearest_neighbour_accuracy, pair_recall_at_far

    emb = embed(lambda xb: head_input(r.model, xb)[0], ds.x_held)
    recall = pair_recall_at_far(emb, ds.y_held, fars=(1e-3, 0.1))
    return {"embedding": {
        "classes": sorted(int(c) for c in torch.unique(ds.y_held)), "test_examples": len(ds.y_held),
        "recall_at_far_1e-3": recall[1e-3], "recall_at_far_0.1": recall[0.1],
        "nn1_accuracy": nearest_neighbour_accuracy(emb, ds.y_held, gallery_per_class=1),
        "nn1_gallery": "the first test example of each held-out class (by index); the rest are probes",
        "note": "held-out classes never trained on; their test examples only"}}


def user_level_by_group(r: Run, *, eps_total: float) -> dict[str, Any]:
    """An example-level run on data with users: epsilon per user of at most k examples by group
    privacy (privacy/group.py), so that it compares with user-level runs."""
    ds, cfg = r.ds, r.cfg
    if r.plan.user_level or ds.max_per_user is None:
        return {}
    from crepe.privacy.group import group_accountant, user_epsilon

    accountant = group_accountant(cfg.accountant)
    k = ds.max_per_user
    eps = eps_total if k == 1 else user_epsilon(r.st.ledger, k=k, delta=cfg.delta, accountant=accountant)
    return {"eps_user": None if math.isinf(eps) else eps, "eps_user_infinite": math.isinf(eps), "max_per_user": k,
            "max_per_user_public": ds.max_per_user_public, "eps_user_accountant": accountant}


def _progress(enabled: bool) -> Callable[[int], Callable[[int, int], None]]:
    """A progress bar on a terminal, per epoch."""

    def for_epoch(epoch: int) -> Callable[[int, int], None]:
        def show(i: int, total: int) -> None:
            if enabled and (i == total or i % max(1, total // 50) == 0):
                done = int(30 * i / total)
                sys.stderr.write(f"\r  epoch {epoch} [{'#' * done}{'.' * (30 - done)}] {i}/{total}")
                if i == total:
                    sys.stderr.write("\r" + " " * 72 + "\r")
                sys.stderr.flush()

        return show

    return for_epoch
