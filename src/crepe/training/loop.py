"""The training loop of `crepe train`.

Per epoch (epochs and k = select_every scaled under --compute steps):
  1. at epochs 0, k, 2k, ... craig and random re-select the small set (craig:
     proxies for all n examples from the current model, clipped + noised with
     sigma_sel, CRAIG on the noisy proxies only; one "select" release. random:
     a secret draw that reads no data; a Poisson draw puts a "subset" marker in
     the ledger, its realised size is never published);
  2. one epoch of (DP-)SGD over the set (training/epoch.py); the optimizer
     records each step's releases in the ledger from its step hook;
  3. test accuracy; epsilon total/select/train; checkpoint (atomic,
     checksummed), then the metrics.jsonl line.
After the last epoch: the summary, the checkpoint reduced to what may be
published (training/state.py; unless --keep-secrets), then summary.json.

Randomness (DESIGN.md section 9): --seed fixes model initialisation. The DP
noise, Poisson sampling and selection noise draw from generators whose whole
MT19937 state is expanded from a 256-bit key (dp/secret_rng.py): drawn from
the OS (noise = "secret") and never written, or derived from --seed (noise =
"reproducible"; every epsilon printed then says it holds only if the seed is
secret). Their states live only in the checkpoint of an unfinished run, which
therefore replays all past and future noise.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from crepe import data as data_mod
from crepe.config import TrainConfig, UsageError
from crepe.dp.clipping import make_clip_rule
from crepe.dp.diagnostics import PROBE_SIZE, clipping_diagnostics
from crepe.dp.optimizer import DPOptimizer, PlainOptimizer
from crepe.dp.optimizers import make_base_optimizer
from crepe.dp.secret_rng import KEY_BYTES, keyed_generator, new_key
from crepe.models import build_model
from crepe.privacy.accounting import epsilons
from crepe.privacy.calibration import count_noise, planned_ledger, redraws, schedule
from crepe.privacy.ledger import record, record_subset
from crepe.smallsets.proxies import compute_proxies, privatise
from crepe.smallsets.sets import craig_coreset, full_set, poisson_subset, random_coreset, set_size
from crepe.training import rundir, state as ckpt
from crepe.training.epoch import set_weights, train_epoch
from crepe.training.state import GENERATORS, RunState


CHECKPOINT_NOTES = {  # summary.json's checkpoint_note, by --keep-secrets
    False: "checkpoint.pt holds the final model, optimizer state, config, ledger and metrics only: its generator "
    "states, subset and label fingerprint were removed when the run finished (while a run is unfinished its "
    "checkpoint replays all past and future noise: as sensitive as the data)",
    True: "checkpoint.pt was kept with its secrets (--keep-secrets): its generator states replay all past and future "
    "noise, and it holds the subset and a label fingerprint: as sensitive as the data, never publish it",
}


def seeds(cfg: TrainConfig) -> tuple[int, bytes]:
    """(model init seed, the key of the GENERATORS) -- the key secret unless noise is reproducible."""
    derived = np.random.SeedSequence(cfg.seed).generate_state(1 + KEY_BYTES // 4)  # uint32 words
    key = derived[1:].astype("<u4").tobytes() if cfg.noise == "reproducible" else new_key()
    return int(derived[0]), key


def build_optimizer(cfg: TrainConfig, model: nn.Module, noise_gen: torch.Generator, ledger: list) -> tuple[nn.Module, Any]:
    """The network to run batches through and the optimizer, DP or plain, sharing one interface."""
    assert cfg.lr is not None and cfg.sigma is not None
    base = make_base_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum)

    def on_release(kind: str, noise_multiplier: float, sample_rate: float) -> None:
        record(ledger, kind=kind, noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    if cfg.method == "private-set":  # training on synthetic images reads no private data: no release
        return model, PlainOptimizer(base, on_release=lambda *release: None)
    if not cfg.dp:
        return model, PlainOptimizer(base, on_release=on_release)
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    ModuleValidator.validate(model, strict=True)
    rule = make_clip_rule(cfg.clipping, max_grad_norm=cfg.max_grad_norm, quantile=cfg.clip_quantile, lr=cfg.clip_lr)
    opt = DPOptimizer(
        base,
        noise_multiplier=cfg.sigma,
        clip_rule=rule,
        generator=noise_gen,
        on_release=on_release,
        count_noise=count_noise(cfg.batch_size),
    )
    return GradSampleModule(model, batch_first=True, loss_reduction="sum"), opt


def _generate(cfg: TrainConfig, st: RunState, x: torch.Tensor, y: torch.Tensor, gens: dict[str, torch.Generator],
              save: Callable[[], None], say: Callable[[str], None], run_dir: Path) -> dict[str, torch.Tensor]:
    """Private set generation (smallsets/private_set.py), checkpointed after every iteration; its
    noisy real gradients go into the ledger as "generate" releases. Writes synthetic.npz/.png."""
    from crepe.smallsets.private_set import LEDGER_KIND, GenerationState, generate, save_synthetic, schedule_of

    schedule = schedule_of(cfg)
    resume = None if st.generation is None else GenerationState.from_dict(st.generation)
    if resume is not None:  # the checkpoint's ledger must hold exactly the releases of its iterations
        done = sum(e["steps"] for e in st.ledger if e["kind"] == LEDGER_KIND)
        if done != resume.iteration * schedule.outer_loops * schedule.batch_loops:
            raise UsageError(f"{run_dir}: the checkpoint's ledger ({done} releases) does not match its generation state")

    def on_release(sigma: float, q: float) -> None:
        record(st.ledger, kind=LEDGER_KIND, noise_multiplier=sigma, sample_rate=q)

    last = [time.perf_counter()]

    def on_checkpoint(g: GenerationState) -> None:
        now = time.perf_counter()
        st.select_time_s += now - last[0]  # generation time: the "select" column of a private-set run
        st.total_time_s += now - last[0]
        last[0] = now
        st.generation = g.to_dict()
        save()
        say(f"generation: iteration {g.iteration}/{schedule.iterations} ({st.select_time_s:.0f}s)")

    assert cfg.sigma is not None
    try:
        images, labels = generate(
            x, y, schedule=schedule, sigma=cfg.sigma, noise_gen=gens["noise"], sample_gen=gens["sampler"],
            init_gen=gens["select"], on_release=on_release, classes=10,
            state=resume, on_checkpoint=on_checkpoint,
        )
    except ValueError as e:  # generate checks its inputs (spc against the class sizes, B against n) first
        raise UsageError(str(e)) from None
    st.generation = None
    mean, std = data_mod.NORMALISATION[cfg.dataset]
    save_synthetic(run_dir, images, labels, mean=mean, std=std)
    return {"images": images, "labels": labels}


def _progress(enabled: bool, label: str) -> Callable[[int, int], None]:
    def show(i: int, total: int) -> None:
        if enabled and (i == total or i % max(1, total // 50) == 0):
            done = int(30 * i / total)
            sys.stderr.write(f"\r  {label} [{'#' * done}{'.' * (30 - done)}] {i}/{total}")
            if i == total:
                sys.stderr.write("\r" + " " * 72 + "\r")
            sys.stderr.flush()

    return show


def run(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train `cfg` (resolved) in `run_dir` (prepared by rundir.prepare_out), continuing from its
    checkpoint if there is one. Returns the summary, or, when `stop_after_epochs` (epochs to run
    in this call) stops it early, {"status": "incomplete", "epoch": e} (the folder stays resumable).
    """
    say = log if log is not None else (lambda s: print(s, file=sys.stderr, flush=True))
    bar = log is None and sys.stderr.isatty()
    run_dir = Path(run_dir)
    assert cfg.sigma is not None and cfg.select_sigma is not None and cfg.lr is not None, "resolve the config first"
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)

    ds = data_mod.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset, test_subset=cfg.test_subset)
    x_tr, y_tr, x_te, y_te = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    y_np = y_tr.numpy()
    n = len(y_tr)
    say(f"crepe train: {cfg.dataset} from {ds.source}: {n} train / {len(y_te)} test examples")
    if ds.split != "standard":
        say(f"crepe train: MNIST has no training split offline; training on {ds.split} of its test digits (fixed split)")

    model_seed, key = seeds(cfg)
    torch.manual_seed(model_seed)
    model = build_model(cfg.model, activation=cfg.activation)
    gens = {name: keyed_generator(key, name) for name in GENERATORS}
    st = RunState()
    net, opt = build_optimizer(cfg, model, gens["noise"], st.ledger)
    config = cfg.to_dict()

    ckpt_path = run_dir / rundir.CHECKPOINT
    if ckpt_path.is_file():
        ck = ckpt.load(ckpt_path, cfg=cfg, fingerprint=ds.fingerprint)
        if ck["summary"] is not None:  # finished, but stopped before summary.json was written
            rundir.atomic_write_json(run_dir / rundir.SUMMARY, ck["summary"])
            return ck["summary"]
        restored = ckpt.restore_state(ck)
        ckpt.verify_against_metrics(
            restored, rundir.read_metrics(run_dir), delta=cfg.delta, accountant=cfg.accountant, where=run_dir
        )
        generated = None if restored.generation is None else int(restored.generation["iteration"])
        expected = planned_ledger(cfg, n=n, set_size=set_size(y_np, cfg), epochs_done=restored.epoch, generated=generated)
        ckpt.verify_ledger(restored, expected, where=run_dir)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        for k, g in gens.items():
            g.set_state(ck["generators"][k])
        st.ledger.extend(restored.ledger)  # the optimizer records into this very list
        restored.ledger = st.ledger
        st = restored
        rundir.write_metrics(run_dir / rundir.METRICS, st.metrics)  # at most the last line was missing
        if rundir.read_config(run_dir) != cfg:  # --resume with new machine flags
            rundir.write_config(run_dir, cfg, rundir.read_json(run_dir / rundir.CONFIG).get("provenance", {}))
        say(f"crepe train: resumed {run_dir} after epoch {st.epoch}/{cfg.epochs}")
    elif rundir.read_metrics(run_dir):
        raise UsageError(
            f"{run_dir}: metrics.jsonl records epochs but {rundir.CHECKPOINT} is missing: the run cannot continue "
            "(its noise and ledger are gone); start a new --out"
        )

    def save() -> None:
        ckpt.save(ckpt_path, config=config, fingerprint=ds.fingerprint, model=model, optimizer=opt, generators=gens, state=st)

    if cfg.method == "private-set":  # generate the synthetic set first; the epochs train on it
        if st.synthetic is None:
            st.synthetic = _generate(cfg, st, x_tr, y_tr, gens, save, say, run_dir)
            save()
        x_tr, y_tr = st.synthetic["images"], st.synthetic["labels"]
        y_np = y_tr.numpy()
        n = len(y_tr)
    size = set_size(y_np, cfg)  # the public |S|; for full and private-set the n of the set trained on
    epochs, every = schedule(cfg, n=n, set_size=size)
    poisson = cfg.poisson_draw  # realised |S| and examples seen stay secret

    caveats = rundir.caveat_tail(labels_public=cfg.labels_public, reproducible=cfg.noise == "reproducible")
    probe = None
    if cfg.diagnostics:  # a fixed probe of training examples (seeded by --seed: not a DP release)
        probe = torch.randperm(n, generator=torch.Generator().manual_seed(model_seed))[:PROBE_SIZE]

    @torch.no_grad()
    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        model.eval()
        correct = sum(int((model(x[s : s + 2048]).argmax(1) == y[s : s + 2048]).sum()) for s in range(0, len(y), 2048))
        model.train()
        return correct / max(1, len(y))

    ran = 0
    with warnings.catch_warnings():
        # Opacus' hooks on a first layer whose input needs no grad: harmless (BUILD_NOTES).
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        while st.epoch < epochs:
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                return {"status": "incomplete", "epoch": st.epoch}
            t_epoch = time.perf_counter()

            # ---- 1. selection round
            selected, select_time = False, 0.0
            if cfg.method in ("full", "private-set"):
                st.coreset = st.coreset or full_set(n)
            elif st.coreset is None or redraws(cfg, st.epoch, every=every):
                t0 = time.perf_counter()
                if cfg.method == "craig":
                    clean = compute_proxies(model, x_tr, y_tr, kind=cfg.proxy)
                    noisy = privatise(clean, clip=cfg.select_clip, sigma=cfg.select_sigma, generator=gens["select"])
                    del clean  # nothing below may read the clean proxies
                    st.coreset = craig_coreset(
                        noisy, y_np, fraction=cfg.fraction, scope=cfg.selection_scope, threads=cfg.threads
                    )
                    record(st.ledger, kind="select", noise_multiplier=cfg.select_sigma, sample_rate=1.0)
                elif poisson:
                    st.coreset = poisson_subset(n, probability=cfg.fraction, generator=gens["select"])
                    record_subset(st.ledger, inclusion_probability=cfg.fraction)
                else:
                    st.coreset = random_coreset(y_np, fraction=cfg.fraction, scope=cfg.selection_scope, generator=gens["select"])
                select_time, selected = time.perf_counter() - t0, True
            assert st.coreset is not None

            # ---- 2. one epoch of (DP-)SGD over the set
            t0 = time.perf_counter()
            sw = set_weights(st.coreset, batch_size=cfg.batch_size, dp=cfg.dp, weighting=cfg.weights, size=size)
            es = train_epoch(
                net, opt, x_tr, y_tr, st.coreset, sw, generator=gens["sampler"], progress=_progress(bar, f"epoch {st.epoch + 1}")
            )
            train_time = time.perf_counter() - t0
            if not math.isfinite(es.loss_sum):
                raise RuntimeError(
                    f"training diverged in epoch {st.epoch + 1} (the loss is {es.loss_sum}); lower --lr. "
                    f"The run folder keeps its last good checkpoint (epoch {st.epoch})"
                )

            # ---- 3. evaluate, account, record, checkpoint
            t0 = time.perf_counter()
            last_epoch = st.epoch + 1 == epochs
            test_acc = accuracy(x_te, y_te) if last_epoch or (st.epoch + 1) % cfg.eval_every == 0 else None
            diag = None
            if probe is not None:
                diag = clipping_diagnostics(
                    net, list(model.parameters()), opt.clip_rule, x_tr[probe], y_tr[probe], sigma=cfg.sigma, batch_size=sw.normaliser
                )
            eval_time = time.perf_counter() - t0
            eps = epsilons(st.ledger, delta=cfg.delta, accountant=cfg.accountant)
            st.epoch += 1
            ran += 1
            st.select_time_s += select_time
            st.train_time_s += train_time
            st.eval_time_s += eval_time
            st.examples_seen += es.seen
            st.total_time_s += time.perf_counter() - t_epoch
            # Not covered by epsilon; and a Poisson subset's figures are withheld: correct/seen and
            # loss/seen are rationals whose denominator gives back the secret realised size.
            batch_figures = es.seen > 0 and not poisson
            row: dict[str, Any] = {
                "epoch": st.epoch,
                "train_loss": es.loss_sum / es.seen if batch_figures else None,
                "train_acc": es.correct / es.seen if batch_figures else None,
                "test_acc": test_acc,
                **rundir.eps_json(eps),
                "delta": cfg.delta,
                "selected": selected,
                "coreset_size": size,  # the public size (a Poisson subset's realised size is secret)
                "sample_rate": sw.sample_rate,
                "steps": es.steps,
                "clip_norm": opt.clip_rule.max_grad_norm if isinstance(opt, DPOptimizer) else None,
                "examples_seen": None if poisson else es.seen,
                "examples_seen_total": None if poisson else st.examples_seen,
                "select_time_s": select_time,
                "train_time_s": train_time,
                "eval_time_s": eval_time,
            }
            if diag is not None:
                row["diagnostics"] = diag  # not covered by epsilon
            st.metrics.append(row)
            save()
            rundir.append_line(run_dir / rundir.METRICS, row)
            loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
            say(
                f"epoch {st.epoch}/{epochs}: train loss {loss} ({rundir.NOT_COVERED}) "
                f"test acc {'-' if test_acc is None else f'{test_acc:.4f}'} eps {rundir.fmt_eps(eps['total'])} "
                f"(select {rundir.fmt_eps(eps['select'])}, train {rundir.fmt_eps(eps['train'])}){caveats} "
                f"select {select_time:.2f}s train {train_time:.2f}s |S| {row['coreset_size']}"
            )

    # ---- summary
    t0 = time.perf_counter()
    train_acc = accuracy(ds.x_train, ds.y_train)
    st.total_time_s += time.perf_counter() - t0
    eps = epsilons(st.ledger, delta=cfg.delta, accountant=cfg.accountant)
    last = st.metrics[-1]
    summary: dict[str, Any] = {
        "status": "complete",
        "epochs": epochs,
        "test_acc": last["test_acc"],
        "train_acc": train_acc,  # the final model on the whole training split
        "train_acc_batches": last["train_acc"],  # the last epoch's Poisson batches, training mode (None: withheld)
        "train_acc_note": rundir.NOT_COVERED,
        **rundir.eps_json(eps),
        "delta": cfg.delta,
        "accountant": cfg.accountant,
        "adjacency": "zero-out",
        "noise": cfg.noise,
        "labels_public": cfg.labels_public,
        "caveat": rundir.LABELS_CAVEAT if cfg.labels_public else None,
        "noise_caveat": rundir.REPRODUCIBLE_CAVEAT if cfg.noise == "reproducible" else None,
        "checkpoint_note": CHECKPOINT_NOTES[cfg.keep_secrets],
        "private_selection": cfg.private_selection,
        "sigma": cfg.sigma,
        "select_sigma": cfg.select_sigma,
        "select_time_s": st.select_time_s,
        "train_time_s": st.train_time_s,
        "eval_time_s": st.eval_time_s,
        "total_time_s": st.total_time_s,
        "examples_seen": None if poisson else st.examples_seen,
        "coreset_size": last["coreset_size"],
        "n_train": len(ds.y_train),
        "n_test": len(y_te),
        "data_split": ds.split,
        "data_source": ds.source,
        "ledger": st.ledger,
    }
    # The secrets go before summary.json marks the run complete: a run stopped in between is
    # finished by --resume from the published checkpoint, never left complete with its secrets.
    if not cfg.keep_secrets:
        ckpt.save_finished(ckpt_path, config=config, model=model, optimizer=opt, state=st, summary=summary)
    rundir.atomic_write_json(run_dir / rundir.SUMMARY, summary)
    return summary
