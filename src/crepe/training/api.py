"""crepe.train: DP training of a model of one's own on data of one's own, in Python.

    result = crepe.train(model, (x, y), method="craig", target_epsilon=3, epochs=10,
                         test_data=(x_test, y_test), out="runs/mine")
    result.model, result.epsilon, result.epsilons, result.sigma, result.ledger, result.metrics

The same run as `crepe train` (one plan, one loop, one ledger, the same run
folder): every option of `crepe train --help` is a keyword, by its name with
underscores (`batch_size=512`, `max_grad_norm=0.1`, `dp=False`), except those
that choose crepe's own data or model. What is required:
- `model`: a torch.nn.Module on the CPU mapping a batch (n, ...) to logits
  (n, C) with C > every label. Under DP, Opacus must be able to compute its
  per-example gradients (`opacus.validators.ModuleValidator.validate`: no
  BatchNorm; `ModuleValidator.fix` replaces it by GroupNorm). CRAIG's
  proxies also need the logits to be the output of an nn.Linear applied last
  to a 2-D input (n, H) (smallsets/proxies.py). Refused otherwise, before
  anything is written. The model given is not modified: a copy is trained and
  `Result.model` is the trained copy, of the same class.
- `train_data`, `test_data`: a pair (x, y) of tensors or arrays (x floating
  point, as the model takes it; y integer class indices), or a map-style
  dataset whose [i] is (x, y), stacked once into memory.
- `out`: the run folder, as `crepe train --out`: new, or holding this same run
  (an unfinished one continues from its checkpoint; a finished one is read
  back). None: a temporary folder, removed when training ends.
"""

from __future__ import annotations

import copy
import difflib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crepe import data as data_mod
from crepe.audit.rules import check_parameters
from crepe.config import USER, TrainConfig, UsageError, options
from crepe.privacy.ledger import Ledger
from crepe.training import export, rundir
from crepe.training.loop import run
from crepe.training import inputs
from crepe.training.plan import Plan, new_run_config, resolved_threads

OWN = ("dataset", "data_dir", "train_subset", "test_subset", "model", "activation")  # what one's own model and data replace


@dataclass(frozen=True)
class Result:
    """A finished run: the trained model and what its run folder records."""

    model: nn.Module  # the trained copy of the model given
    summary: dict[str, Any]  # summary.json: accuracy, epsilon and its parts, sigma, the ledger, times
    metrics: list[dict[str, Any]]  # metrics.jsonl: one row per epoch
    out: Path | None  # the run folder (None: it was temporary)

    @property
    def epsilons(self) -> dict[str, float]:
        """epsilon per part ("total", "select", "train") per privacy unit at `delta`."""
        return {k: float("inf") if self.summary[f"eps_{k}"] is None else self.summary[f"eps_{k}"]
                for k in ("total", "select", "train")}

    @property
    def epsilon(self) -> float:
        return self.epsilons["total"]

    @property
    def delta(self) -> float:
        return float(self.summary["delta"])

    @property
    def sigma(self) -> float:
        return float(self.summary["sigma"])

    @property
    def test_acc(self) -> float | None:
        return self.summary["test_acc"]

    @property
    def ledger(self) -> Ledger:
        return Ledger.from_list(self.summary["ledger"])


def train(
    model: nn.Module,
    train_data: Any,
    *,
    test_data: Any = None,
    user_ids: Any = None,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **option_values: Any,
) -> Result:
    """Train `model` on `train_data` with crepe's options (module docstring); `user_ids` (n,) gives
    each training example's user (0..U-1; for privacy_unit="user", or a user-level epsilon by group
    privacy with max_per_user); `log` receives each line `crepe train` prints (default: stderr)."""
    given = _given(option_values)
    ds = _data(train_data, test_data)
    cfg = new_run_config({**given, "dataset": USER, "model": USER})
    ds = inputs.prepare(ds, cfg, user_ids=user_ids)
    plan = Plan.for_data(cfg, ds)  # sigma solved under a target
    check_model(model, plan, ds)
    cfg = resolved_threads(plan.cfg)
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    with _folder(out) as run_dir:
        _check_same_class(run_dir, name)
        trained = copy.deepcopy(model)
        summary = start(cfg, run_dir, data=ds, model=trained, provenance=rundir.provenance(model_class=name), log=log)
        trained = copy.deepcopy(model)  # of the caller's class, without Opacus' hooks
        trained.load_state_dict(torch.load(run_dir / export.MODEL, weights_only=True))
        metrics = rundir.read_metrics(run_dir)
    return Result(trained, summary, metrics, None if out is None else Path(out))


def start(cfg: TrainConfig, run_dir: Path, *, data: data_mod.LoadedData, model: nn.Module | None,
          provenance: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prepare `run_dir` for `cfg` (rundir.prepare_out) and train, or continue, the run in it;
    a folder this call created is removed again if training fails before its first checkpoint.
    Returns the summary (that of the finished run the folder already held, if so)."""
    from crepe.dp import distributed

    world = distributed.current()
    state = world.first(lambda: rundir.prepare_out(cfg, run_dir, provenance))  # rank 0 writes the folder
    if state == "complete":
        (log or _stderr)(f"crepe train: {run_dir} already holds this run, complete")
        summary = rundir.read_summary(run_dir)
        assert summary is not None
        return summary
    try:
        return run(cfg, run_dir, data=data, model=model, log=log)
    except BaseException:
        if world.writes and state == "new" and not (run_dir / rundir.CHECKPOINT).exists():
            for name in (rundir.CONFIG, rundir.METRICS, rundir.PRETRAIN):  # nothing saved: no folder offers a resume
                (run_dir / name).unlink(missing_ok=True)
            try:
                run_dir.rmdir()
            except OSError:
                pass
        raise


def check_model(model: nn.Module, plan: Plan, ds: data_mod.LoadedData) -> None:
    """UsageError, before anything is written, for a model crepe cannot train on this data (module docstring)."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    if not any(p.requires_grad for p in params):
        raise UsageError(f"{type(model).__name__} has no trainable parameters")
    if any(p.device.type != "cpu" for p in params):
        raise UsageError("crepe trains on the CPU: pass the model on the CPU (model.cpu())")
    probe = ds.x_train[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as e:  # the model's own error, said with what it was given
        raise UsageError(f"{type(model).__name__} fails on train_data's examples of shape "
                         f"{tuple(probe.shape[1:])}: {type(e).__name__}: {e}") from None
    finally:
        model.train(was_training)
    labels = int(max(ds.y_train.max(), ds.y_test.max() if len(ds.y_test) else 0))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] <= labels:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UsageError(f"{type(model).__name__} must give logits (n, C) with C > the largest label {labels}, "
                         f"got {shape}")
    cfg = plan.cfg
    if cfg.dp and plan.method.trains_privately:
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise UsageError(f"Opacus cannot compute {type(model).__name__}'s per-example gradients: "
                             + "; ".join(str(e).split(". ")[0] for e in errors)  # Opacus' first sentences
                             + " (opacus.validators.ModuleValidator.fix(model) replaces BatchNorm by GroupNorm)")
    plan.method.check_own(cfg, model, probe)
    check_parameters(cfg.audit_canaries, sum(p.numel() for p in params if p.requires_grad))


def _given(values: dict[str, Any]) -> dict[str, Any]:
    known = options()
    for name in values:
        if name in OWN:
            raise UsageError(f"{name} chooses crepe's own data or model; crepe.train trains the model and data you give")
        if name not in known:
            close = difflib.get_close_matches(name, [k for k in known if k not in OWN], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"crepe.train got an unknown option {name!r} ({hint}the options are crepe train's, "
                             "by their names with underscores: crepe train --help)")
    return dict(values)


def _data(train_data: Any, test_data: Any) -> data_mod.LoadedData:
    x, y = data_mod.as_tensors(train_data, "train_data")
    xt, yt = data_mod.as_tensors(test_data, "test_data") if test_data is not None else (x[:0], y[:0])
    if xt.shape[1:] != x.shape[1:]:
        raise UsageError(f"test_data's examples are {tuple(xt.shape[1:])}, train_data's {tuple(x.shape[1:])}")
    return data_mod.LoadedData(x, y, xt, yt, split="standard", source="the data given to crepe.train",
                               fingerprint=data_mod.fingerprint(x, y, xt, yt))


def _check_same_class(run_dir: Path, name: str) -> None:
    """A run folder of crepe.train continues only with a model of the class it was trained with."""
    if (run_dir / rundir.CONFIG).is_file():
        before = rundir.read_json(run_dir / rundir.CONFIG).get("provenance", {}).get("model_class")
        if before is not None and before != name:
            raise UsageError(f"{run_dir} holds a run of a {before}, not of a {name}: choose another out")


@contextmanager
def _folder(out: str | Path | None) -> Iterator[Path]:
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="crepe-") as tmp:
        yield Path(tmp) / "run"


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)
