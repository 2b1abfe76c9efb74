"""`crepe train`: DP-SGD (Opacus) on CRAIG coresets chosen from privatised proxies.

One epoch:
  1. at epochs 0, k, 2k, ... (k = select_every): a selection round with the
     current model in eval mode -- proxies for all n training examples, clip +
     noise (sigma_sel), CRAIG on the noisy proxies (or a random subset, or all);
     one Gaussian release (noise sigma_sel, sample rate 1) goes into the ledger;
  2. int(1/q) Poisson batches over the coreset S, q = B/|S|; each a DP-SGD step
     (per-example clip C, weights w = gamma/max gamma, noise sigma C, divided by
     q sum w) and one ledger entry (sigma, q);
  3. test accuracy; epsilon total/select/train at delta; metrics.jsonl line;
     an atomic checkpoint with everything needed to continue.

Run folder: config.json, metrics.jsonl, checkpoint.pt, summary.json (at the end).
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from crepe import privacy
from crepe.config import TrainConfig

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT_FORMAT = 1

LABELS_CAVEAT = (
    "per-class selection reads the true labels and class sizes without noise: "
    "this epsilon holds with labels treated as public (use --selection-scope global "
    "for an epsilon that keeps labels private)"
)


# ----------------------------------------------------------------------------- files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder + os.replace: no torn file after a kill."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())


def read_config(run_dir: Path) -> TrainConfig:
    path = run_dir / CONFIG
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a crepe run folder (no {CONFIG})")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); not a crepe run folder") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} does not hold a config object; not a crepe run folder")
    return TrainConfig.from_dict(d)


def is_complete(run_dir: Path) -> bool:
    path = run_dir / SUMMARY
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except json.JSONDecodeError:
        return False


def prepare_out(cfg: TrainConfig, out: Path) -> str:
    """Create a run folder for `cfg` at `out`, never touching a user's files.

    Returns "new", "resume" (out holds the same run, unfinished) or "complete"
    (out holds the same run, finished). Raises ValueError for anything else.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / CONFIG).is_file():
            raise ValueError(f"--out {out} exists, is not empty and is not a crepe run; choose another --out")
        old = read_config(out)
        a, b = old.identity(), cfg.identity()
        diff = sorted(k for k in a if a[k] != b[k])
        if diff:
            raise ValueError(
                f"--out {out} holds a different run (differs in {', '.join(diff)}); "
                "choose another --out, or continue that run with --resume"
            )
        return "complete" if is_complete(out) else "resume"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG, cfg.to_dict())
    return "new"


def open_run(run_dir: Path, *, data_dir: str | None = None, threads: int | None = None) -> TrainConfig:
    """The config of an existing run, with machine fields optionally replaced."""
    from dataclasses import replace

    if not run_dir.is_dir():
        raise ValueError(f"--resume {run_dir}: no such directory")
    cfg = read_config(run_dir)
    changes: dict[str, Any] = {}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if threads is not None:
        changes["threads"] = threads
    if changes:
        cfg = replace(cfg, **changes)
        atomic_write_json(run_dir / CONFIG, cfg.to_dict())
    return cfg


# ----------------------------------------------------------------------------- helpers


def final_line(summary: dict[str, Any]) -> str:
    eps = "inf" if summary["eps_total_infinite"] else f"{summary['eps_total']:.3f}"
    sel = "inf" if summary["eps_select_infinite"] else f"{summary['eps_select']:.3f}"
    trn = "inf" if summary["eps_train_infinite"] else f"{summary['eps_train']:.3f}"
    tail = ", labels treated as public" if summary["labels_public"] else ""
    return (
        f"crepe train: test accuracy {summary['test_acc']:.4f} | epsilon {eps} "
        f"(select {sel}, train {trn}) at delta {summary['delta']:g}, zero-out adjacency{tail}"
    )


def _seeds(seed: int) -> list[int]:
    """Independent seeds for: model init, batch sampler, DP-SGD noise, selection."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(4)]


def _progress(enabled: bool, label: str, i: int, total: int) -> None:
    if enabled and (i == total or i % max(1, total // 50) == 0):
        done = int(30 * i / total)
        sys.stderr.write(f"\r  {label} [{'#' * done}{'.' * (30 - done)}] {i}/{total}")
        if i == total:
            sys.stderr.write("\r" + " " * 72 + "\r")
        sys.stderr.flush()


# ----------------------------------------------------------------------------- the run


def run(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train `cfg` in `run_dir` (prepared by prepare_out/open_run), continuing
    from its checkpoint if there is one. Returns the summary, or, when
    `stop_after_epochs` (epochs to run in this call) stops it early, a dict with
    status "incomplete" (the folder stays resumable).
    """
    import torch
    from torch import nn

    from crepe import data as data_mod
    from crepe.dpsgd import WeightedDPOptimizer, poisson_batches, steps_per_epoch
    from crepe.models import build_model
    from crepe.proxies import Coreset, compute_proxies, craig_coreset, privatise, random_coreset

    say = log if log is not None else (lambda s: print(s, file=sys.stderr, flush=True))
    bar = log is None and sys.stderr.isatty()
    run_dir = Path(run_dir)
    cfg = cfg.resolve()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    assert cfg.select_sigma is not None and cfg.lr is not None  # resolved

    ds = data_mod.load(
        cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset, test_subset=cfg.test_subset
    )
    x_tr, y_tr, x_te, y_te = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    y_tr_np = y_tr.numpy()
    n = len(y_tr)
    say(f"crepe train: {cfg.dataset} from {ds.source}: {n} train / {len(y_te)} test")
    if ds.split != "standard":
        say(f"crepe train: NOTE offline MNIST has no train split; using the documented t10k split {ds.split}")

    seed_model, seed_sampler, seed_noise, seed_select = _seeds(cfg.seed)
    torch.manual_seed(seed_model)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = build_model(cfg.model)
    sampler_gen = torch.Generator().manual_seed(seed_sampler)
    noise_gen = torch.Generator().manual_seed(seed_noise)
    select_gen = torch.Generator().manual_seed(seed_select)

    base_opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        base_opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    else:
        base_opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.dp:
        from opacus import GradSampleModule
        from opacus.validators import ModuleValidator

        ModuleValidator.validate(model, strict=True)
        net: nn.Module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        opt: Any = WeightedDPOptimizer(
            base_opt,
            noise_multiplier=cfg.sigma,
            max_grad_norm=cfg.max_grad_norm,
            expected_batch_size=1,  # set per coreset below
            loss_reduction="mean",
            generator=noise_gen,
        )
    else:
        net, opt = model, base_opt

    # ---- state: fresh, or from the checkpoint
    epoch = 0
    coreset: Coreset | None = None
    ledger: list[privacy.Entry] = []
    metrics: list[dict[str, Any]] = []
    totals = {"select_time_s": 0.0, "train_time_s": 0.0, "eval_time_s": 0.0, "total_time_s": 0.0, "examples_seen": 0}
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, weights_only=True)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path}: unsupported checkpoint format {ck.get('format')!r}")
        if ck["fingerprint"] != ds.fingerprint:
            raise ValueError(
                f"{ckpt_path} was written for different data (fingerprint {ck['fingerprint']}, "
                f"now {ds.fingerprint}): check --data-dir"
            )
        if TrainConfig.from_dict(ck["config"]).identity() != cfg.identity():
            raise ValueError(f"{ckpt_path} belongs to a different configuration than {run_dir / CONFIG}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"])
        sampler_gen.set_state(rng["sampler"])
        noise_gen.set_state(rng["noise"])
        select_gen.set_state(rng["select"])
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        np.random.set_state(("MT19937", rng["numpy"][0].numpy().astype(np.uint32), *rng["numpy"][1]))
        epoch = int(ck["epoch"])
        if ck["coreset"] is not None:
            coreset = Coreset(ck["coreset"]["indices"].numpy(), ck["coreset"]["gamma"].numpy())
        ledger, metrics, totals = ck["ledger"], ck["metrics"], ck["totals"]
        write_metrics(run_dir / METRICS, metrics)  # drop any line written after the checkpoint
        say(f"crepe train: resumed {run_dir} after epoch {epoch}/{cfg.epochs}")

    def save_checkpoint() -> None:
        np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
        py_state = random.getstate()
        ck = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": cfg.to_dict(),
            "fingerprint": ds.fingerprint,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "sampler": sampler_gen.get_state(),
                "noise": noise_gen.get_state(),
                "select": select_gen.get_state(),
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), list(np_state[2:])],
            },
            "coreset": None
            if coreset is None
            else {"indices": torch.from_numpy(coreset.indices), "gamma": torch.from_numpy(coreset.gamma)},
            "ledger": ledger,
            "metrics": metrics,
            "totals": totals,
        }
        buf = io.BytesIO()
        torch.save(ck, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())

    @torch.no_grad()
    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        model.eval()
        correct = sum(
            int((model(x[s : s + 2048]).argmax(1) == y[s : s + 2048]).sum()) for s in range(0, len(y), 2048)
        )
        model.train()
        return correct / max(1, len(y))

    ran = 0
    with warnings.catch_warnings():
        # Opacus' hooks on a first layer whose input needs no grad: harmless (BUILD_NOTES).
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        while epoch < cfg.epochs:
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                return {"status": "incomplete", "epoch": epoch}
            t_epoch = time.perf_counter()

            # ---- 1. selection round
            selected = False
            select_time = 0.0
            if cfg.method == "full":
                if coreset is None:
                    coreset = Coreset(np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64))
            elif coreset is None or epoch % cfg.select_every == 0:
                t0 = time.perf_counter()
                if cfg.method == "craig":
                    clean = compute_proxies(model, x_tr, y_tr, kind=cfg.proxy)
                    noisy = privatise(clean, clip=cfg.select_clip, sigma=cfg.select_sigma, generator=select_gen)
                    del clean  # nothing below may read the clean proxies
                    coreset = craig_coreset(noisy, y_tr_np, fraction=cfg.fraction, scope=cfg.selection_scope, threads=cfg.threads)
                    privacy.record(ledger, kind="select", noise_multiplier=cfg.select_sigma, sample_rate=1.0)
                else:
                    coreset = random_coreset(y_tr_np, fraction=cfg.fraction, scope=cfg.selection_scope, generator=select_gen)
                select_time = time.perf_counter() - t0
                selected = True
            assert coreset is not None

            # ---- 2. one epoch of (DP-)SGD over the coreset
            t0 = time.perf_counter()
            S = torch.from_numpy(coreset.indices)  # (m,)
            m = len(S)
            gamma = torch.from_numpy(coreset.gamma).to(torch.float32)  # (m,)
            weighted = cfg.method == "craig" and cfg.weights != "none"
            w = gamma / gamma.max() if weighted else torch.ones(m)  # (m,) in (0, 1]
            q = min(1.0, cfg.batch_size / m)
            steps = steps_per_epoch(q)
            if cfg.dp and cfg.method == "craig" and cfg.weights == "weight-then-clip":
                loss_w, opt_w, expected = gamma, None, q * m  # weighted loss; clipping cancels large weights
            elif cfg.dp:
                loss_w, opt_w, expected = None, (w if weighted else None), q * float(w.sum())
            else:
                loss_w, opt_w, expected = w, None, q * float(w.sum())
            if cfg.dp:
                opt.expected_batch_size = expected
            loss_sum, correct, seen = 0.0, 0, 0
            for i, pos in enumerate(poisson_batches(m, sample_rate=q, steps=steps, generator=sampler_gen), 1):
                idx = S[pos]
                if len(idx) == 0:
                    if cfg.dp:  # an empty Poisson batch is still a noisy step
                        for p in opt.params:
                            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                        opt.sample_weights = None
                        opt.step()
                else:
                    out = net(x_tr[idx])  # (b, 10)
                    losses = nn.functional.cross_entropy(out, y_tr[idx], reduction="none")  # (b,)
                    lw = losses if loss_w is None else losses * loss_w[pos]
                    if cfg.dp:
                        lw.sum().backward()
                        opt.sample_weights = None if opt_w is None else opt_w[pos]
                    else:
                        (lw.sum() / expected).backward()
                    opt.step()
                    loss_sum += float(losses.detach().sum())
                    correct += int((out.detach().argmax(1) == y_tr[idx]).sum())
                    seen += len(idx)
                opt.zero_grad(set_to_none=True)
                privacy.record(ledger, kind="train", noise_multiplier=cfg.sigma if cfg.dp else 0.0, sample_rate=q)
                _progress(bar, f"epoch {epoch + 1}", i, steps)
            train_time = time.perf_counter() - t0

            # ---- 3. evaluate, account, record, checkpoint
            t0 = time.perf_counter()
            test_acc = accuracy(x_te, y_te)
            eval_time = time.perf_counter() - t0
            eps = privacy.epsilons(ledger, delta=cfg.delta, accountant=cfg.accountant)
            epoch += 1
            ran += 1
            totals["select_time_s"] += select_time
            totals["train_time_s"] += train_time
            totals["eval_time_s"] += eval_time
            totals["examples_seen"] += seen
            totals["total_time_s"] += time.perf_counter() - t_epoch
            row = {
                "epoch": epoch,
                "train_loss": loss_sum / seen if seen else None,
                "train_acc": correct / seen if seen else None,
                "test_acc": test_acc,
                **privacy.as_json(eps),
                "delta": cfg.delta,
                "selected": selected,
                "coreset_size": m,
                "sample_rate": q,
                "steps": steps,
                "examples_seen": seen,
                "examples_seen_total": totals["examples_seen"],
                "select_time_s": select_time,
                "train_time_s": train_time,
                "eval_time_s": eval_time,
            }
            metrics.append(row)
            save_checkpoint()
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(row, allow_nan=False) + "\n")
            say(
                f"epoch {epoch}/{cfg.epochs}: loss {row['train_loss'] if seen else float('nan'):.4f} "
                f"test acc {test_acc:.4f} eps {privacy.fmt(eps['total'])} "
                f"(select {privacy.fmt(eps['select'])}, train {privacy.fmt(eps['train'])}) "
                f"select {select_time:.2f}s train {train_time:.2f}s |S| {m}"
            )

    # ---- summary
    t0 = time.perf_counter()
    train_acc_full = accuracy(x_tr, y_tr)
    totals["total_time_s"] += time.perf_counter() - t0
    eps = privacy.epsilons(ledger, delta=cfg.delta, accountant=cfg.accountant)
    last = metrics[-1]
    summary: dict[str, Any] = {
        "status": "complete",
        "epochs": cfg.epochs,
        "test_acc": last["test_acc"],
        "train_acc": train_acc_full,  # final model on the whole training split (eval mode)
        "train_acc_batches": last["train_acc"],  # last epoch's Poisson batches (training mode)
        **privacy.as_json(eps),
        "delta": cfg.delta,
        "accountant": cfg.accountant,
        "adjacency": "zero-out",
        "labels_public": cfg.labels_public,
        "caveat": LABELS_CAVEAT if cfg.labels_public else None,
        "private_selection": cfg.private_selection,
        "select_time_s": totals["select_time_s"],
        "train_time_s": totals["train_time_s"],
        "eval_time_s": totals["eval_time_s"],
        "total_time_s": totals["total_time_s"],
        "examples_seen": totals["examples_seen"],
        "coreset_size": last["coreset_size"],
        "n_train": n,
        "n_test": len(y_te),
        "data_split": ds.split,
        "data_source": ds.source,
        "ledger": ledger,
    }
    atomic_write_json(run_dir / SUMMARY, summary)
    return summary

