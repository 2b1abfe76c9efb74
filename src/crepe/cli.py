"""Command line: crepe train | sweep | report.

Convention: `main(argv)` returns an exit status and never raises for bad
input: 0 success, 2 bad input or usage (one message on stderr, prefixed
"crepe <command>: error:"; nothing is written or overwritten), 1 a runtime
failure with a message (e.g. data could not be downloaded). torch and opacus
are imported only when a run starts, so `crepe --help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from crepe.config import (
    ACCOUNTANTS,
    DATASETS,
    METHODS,
    MODELS,
    OPTIMIZERS,
    PROXIES,
    SCOPES,
    WEIGHTINGS,
    TrainConfig,
)

DELEGATED = {"sweep": "crepe.sweep", "report": "crepe.report"}
RESUME_FLAGS = {"data_dir", "threads"}  # flags that may accompany --resume


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}\n{self.format_usage().strip()}")


def _names(valid: tuple[str, ...]) -> str:
    return "|".join(valid)


def train_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = _Parser(
        prog="crepe train",
        description=(
            "DP-SGD (Opacus) on CRAIG coresets selected from privatised last-layer gradients, "
            "with privacy accounting under zero-out adjacency (see docs/privacy.md)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only flags actually given reach the config
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="new run folder (must be empty, absent, or hold this same run)")
    where.add_argument("--resume", type=Path, help="continue the run in this folder")
    a = p.add_argument
    a("--dataset", help=f"{_names(DATASETS)} (default {d.dataset})")
    a("--data-dir", help="folder of the original IDX .gz files (or with a <dataset>/ subfolder); default: torchvision download into ~/.cache/crepe")
    a("--train-subset", type=int, help="use the first N training examples")
    a("--test-subset", type=int, help="use the first N test examples")
    a("--model", help=f"{_names(MODELS)} (default {d.model})")
    a("--proxy", help=f"{_names(PROXIES)} (default {d.proxy}); last-layer is d=330 for the CNN, ~50x slower selection")
    a("--select-clip", type=float, help=f"L2 clip of each proxy before noise (default {d.select_clip})")
    a("--select-sigma", type=float, help="proxy noise multiplier (default: --sigma; 0 under --no-dp; 0 = non-private selection, epsilon infinite)")
    a("--method", help=f"{_names(METHODS)} (default {d.method})")
    a("--fraction", type=float, help=f"coreset share of each class, in (0, 1] (default {d.fraction})")
    a("--select-every", type=int, help=f"re-select every N epochs (default {d.select_every})")
    a("--epochs", type=int, help=f"(default {d.epochs})")
    a("--no-dp", dest="dp", action="store_false", help="plain SGD, no noise or clipping (epsilon infinite)")
    a("--sigma", type=float, help=f"DP-SGD noise multiplier (default {d.sigma})")
    a("--max-grad-norm", type=float, help=f"per-example clip norm C (default {d.max_grad_norm})")
    a("--batch-size", type=int, help=f"expected Poisson batch size B; q = B/|S| (default {d.batch_size})")
    a("--lr", type=float, help="learning rate (default 0.1 for sgd, 1e-3 for adam)")
    a("--optimizer", help=f"{_names(OPTIMIZERS)} (default {d.optimizer})")
    a("--weights", help=f"{_names(WEIGHTINGS)} (default {d.weights})")
    a("--accountant", help=f"{_names(ACCOUNTANTS)} (default {d.accountant})")
    a("--delta", type=float, help=f"(default {d.delta:g})")
    a("--selection-scope", help=f"{_names(SCOPES)} (default {d.selection_scope}; per-class treats labels as public)")
    a("--seed", type=int, help=f"(default {d.seed})")
    a("--threads", type=int, help="torch and selection threads (default: torch's)")
    return p


def _config_kwargs(ns: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(ns).items() if k in names}


def cmd_train(argv: list[str]) -> int:
    from crepe import data, train

    ns = train_parser().parse_args(argv)
    kwargs = _config_kwargs(ns)
    if getattr(ns, "resume", None) is not None:
        extra = sorted(set(kwargs) - RESUME_FLAGS)
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") if k != "dp" else "--no-dp" for k in extra)
            raise ValueError(f"--resume continues a run as configured; it does not take {flags}")
        run_dir = Path(ns.resume)
        cfg = train.open_run(run_dir, **kwargs)
        if train.is_complete(run_dir):
            print(f"crepe train: {run_dir} is already complete", file=sys.stderr)
            import json

            print(train.final_line(json.loads((run_dir / train.SUMMARY).read_text())))
            return 0
        created = False
    else:
        run_dir = Path(ns.out)
        cfg = TrainConfig(**kwargs).resolve()
        data.resolve_source(cfg.dataset, cfg.data_dir)  # fail before creating anything
        state = train.prepare_out(cfg, run_dir)
        if state == "complete":
            import json

            print(f"crepe train: {run_dir} already holds this run, complete", file=sys.stderr)
            print(train.final_line(json.loads((run_dir / train.SUMMARY).read_text())))
            return 0
        created = state == "new"
    try:
        summary = train.run(cfg, run_dir)
    except BaseException:
        if created and not (run_dir / train.CHECKPOINT).exists():
            _remove_new_run(run_dir)
        raise
    print(train.final_line(summary))
    if summary["labels_public"]:
        print(f"crepe train: note: {summary['caveat']}", file=sys.stderr)
    return 0


def _remove_new_run(run_dir: Path) -> None:
    """Undo a run folder this call created, if it failed before its first checkpoint."""
    from crepe import train

    for name in (train.CONFIG, train.METRICS):
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def top_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="crepe", description="CRAIG coresets for differentially private training.")
    sub = p.add_subparsers(dest="command", metavar="{train,sweep,report}")
    sub.add_parser("train", help="DP-SGD on a CRAIG coreset (crepe train --help)", add_help=False)
    sub.add_parser("sweep", help="grids of crepe train runs (crepe sweep --help)", add_help=False)
    sub.add_parser("report", help="tables and plots from run folders (crepe report --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command in DELEGATED:
            import importlib

            try:
                mod = importlib.import_module(DELEGATED[command])
            except ModuleNotFoundError as e:
                if e.name != DELEGATED[command]:
                    raise
                print(f"crepe {command}: error: {DELEGATED[command]} is not available in this installation", file=sys.stderr)
                return 2
            return int(mod.main(argv[1:]) or 0)
        if command == "train":
            return cmd_train(argv[1:])
        top_parser().parse_args(argv)  # --help, or an unknown command
        top_parser().print_help(sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (UsageError, ValueError) as e:
        if type(e) not in (UsageError, ValueError):  # e.g. io.UnsupportedOperation: a bug, not bad input
            raise
        print(f"crepe {command or ''}: error: {e}".replace("crepe : ", "crepe: "), file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"crepe {command}: error: {e}", file=sys.stderr)
        return 1
