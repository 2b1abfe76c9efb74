"""Command line: crepe train | sweep | report | epsilon | export | audit.

Convention for all three commands: `main(argv)` returns an exit status and
never raises for bad input: 0 success; 2 bad input (`UsageError`: one line on
stderr, "crepe <command>: error: ...", nothing written or overwritten); 1 a
runtime failure with a message (e.g. data could not be downloaded); 130/143
interrupted by Ctrl-C / SIGTERM (one line saying how to resume: every epoch is
checkpointed atomically). torch and opacus are imported only when a run starts.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
import signal
import sys
from pathlib import Path
from typing import Any

from crepe._version import __version__
from crepe.config import PRESETS, USER, UsageError, options
from crepe.parser import Parser, add_option
from crepe.smallsets import methods
from crepe.training.plan import new_run_config, resolved_threads


DELEGATED = {"sweep": "crepe.study.sweep", "report": "crepe.study.report"}


def train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="crepe train",
        description=(
            "DP-SGD (Opacus) on a small training set -- a CRAIG coreset selected from privatised "
            "last-layer gradients, a random subset, or all data -- with one privacy ledger "
            "(zero-out adjacency; docs/privacy.md)."
        ),
        argument_default=argparse.SUPPRESS,  # only flags actually given reach the config
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets (--preset NAME; flags given override them):\n" + "\n".join(
            f"  {name}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items() if k != "by_dataset")
            + "".join(f"; with --dataset {d}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in dv.items())
                      for d, dv in values.get("by_dataset", {}).items())
            for name, values in PRESETS.items()),
    )
    where = p.add_mutually_exclusive_group()  # one of them is required unless --dry-run
    where.add_argument("--out", type=Path, help="new run folder (must be empty, absent, or hold this same run)")
    where.add_argument("--resume", type=Path, help="continue the run in this folder")
    where.add_argument(
        "--dry-run", action="store_true",
        help="print the plan (sigma solved for a target, the schedule, the planned epsilon and its parts) and exit: "
        "reads only the training labels, writes nothing",
    )
    group: Any = p
    for name, s in methods.declared().items():
        group = p.add_argument_group(s.section) if s.section else group
        readers = [m.name for m in methods.registry().values() if name in m.options]
        add_option(group, name, replace(s, help=f"{s.help} [--method {', '.join(readers)}]") if readers else s)
    return p


def cmd_train(argv: list[str]) -> int:
    from crepe.training import rundir

    ns = train_parser().parse_args(argv)
    names = set(options())
    given = {k: v for k, v in vars(ns).items() if k in names}
    if getattr(ns, "dry_run", False):
        return dry_run(given)
    if getattr(ns, "out", None) is None and getattr(ns, "resume", None) is None:
        raise UsageError("one of the arguments --out --resume --dry-run is required (see crepe train --help)")
    if getattr(ns, "resume", None) is not None:
        extra = sorted(k for k in given if not options()[k].machine)  # only machine flags may change
        if extra:
            flags = ", ".join(options()[k].flag for k in extra)
            raise UsageError(f"--resume continues a run as configured; it does not take {flags}")
        run_dir = Path(ns.resume)
        if not run_dir.is_dir():
            raise UsageError(f"--resume {run_dir}: no such directory")
        cfg = rundir.read_config(run_dir)
        if cfg.dataset == USER:
            raise UsageError(f"{run_dir} was trained by crepe.train in Python on a model and data of its own: "
                             "continue it there, calling crepe.train with the same model, data and out")
        if "data_dir" in given:
            given["data_dir"] = str(Path(given["data_dir"]).resolve())

        cfg = replace(cfg, **given)
        if rundir.is_complete(run_dir):
            print(f"crepe train: {run_dir} is already complete", file=sys.stderr)
            print(rundir.final_line(rundir.read_summary(run_dir) or {}))
            return 0
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
            raise UsageError(
                f"the data folder {cfg.data_dir} recorded in {run_dir / rundir.CONFIG} does not exist here; "
                "pass --data-dir to say where the data is now"
            )
        from crepe.training.loop import run

        summary = run(cfg, run_dir)  # changed machine flags reach config.json once the checkpoint is verified
    else:
        cfg = new_run_config(given)  # every flag checked before torch loads
        from crepe.training.api import start
        from crepe.training.inputs import load_data
        from crepe.training.plan import Plan

        data = load_data(cfg)  # once per run: the plan counts its labels, the loop trains on it
        cfg = resolved_threads(Plan.for_data(cfg, data).cfg)  # sigma solved under a target
        if cfg.audit_canaries is not None:  # each white-box canary needs a coordinate of its own
            from crepe.audit.rules import check_parameters
            from crepe.training.loop import new_model

            model = new_model(cfg, data)  # the run builds its own again from --seed
            check_parameters(cfg.audit_canaries, sum(p.numel() for p in model.parameters() if p.requires_grad))
        summary = start(cfg, Path(ns.out), data=data, model=None, provenance=rundir.provenance())
    if summary.get("rank", 0) != 0:  # torchrun: rank 0 prints
        return 0
    print(rundir.final_line(summary))
    if rundir.embedding_line(summary):
        print(rundir.embedding_line(summary))
    if rundir.audit_line(summary.get("audit")):
        print(rundir.audit_line(summary.get("audit")))
    if summary["labels_public"]:
        print(f"crepe train: note: {summary['caveat']}", file=sys.stderr)
    return 0


def dry_run(given: dict[str, Any]) -> int:
    """`crepe train --dry-run`: the run's plan from its training labels alone; nothing is written."""
    from crepe import data
    from crepe.privacy.accounting import epsilons
    from crepe.training.plan import Plan, class_counts
    from crepe.training.rundir import caveat_tail, eps_parts

    cfg = new_run_config(given)
    if cfg.users is not None or cfg.held_out_classes or cfg.dataset == "qmnist":  # its images are read
        from crepe.training.inputs import load_data

        plan, read = Plan.for_data(cfg, load_data(cfg)), "its users formed from the images"
    else:
        labels = data.train_labels(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset)
        plan, read = Plan.of(cfg, counts=class_counts(labels)), "labels only read"
    ledger = plan.ledger()
    eps = epsilons(ledger, delta=cfg.delta, accountant=cfg.accountant)
    tail = caveat_tail(labels_public=plan.labels_public, reproducible=cfg.noise == "reproducible")
    print(f"crepe train --dry-run: {cfg.dataset}, --method {cfg.method}, {plan.n} training examples ({read})")
    print(plan.line())
    print(f"crepe train: planned epsilon {eps_parts(eps, (r.kind for r in ledger))} per {ledger.unit} at delta "
          f"{cfg.delta:g} ({cfg.accountant} accountant), zero-out adjacency{tail}")
    if plan.max_per_user is not None and not plan.user_level:  # data with users: also per user, by group privacy
        from crepe.privacy.group import group_accountant, user_epsilon

        k, accountant = plan.max_per_user, group_accountant(cfg.accountant)
        e = user_epsilon(ledger, k=k, delta=cfg.delta, accountant=accountant)
        print(f"crepe train: planned epsilon {e:.3f} per user of at most {k} examples (group privacy, {accountant})")
    print("crepe train: nothing was written (--dry-run)")
    return 0


def cmd_epsilon(argv: list[str]) -> int:
    """`crepe epsilon RUN --delta D`: epsilon of a finished run's ledger at another delta."""
    from crepe.privacy.accounting import epsilons
    from crepe.privacy.ledger import Ledger
    from crepe.training import rundir

    p = Parser(prog="crepe epsilon", description="epsilon of a finished run's privacy ledger at another delta")
    p.add_argument("run", type=Path, help="a run folder with summary.json")
    p.add_argument("--delta", type=float, required=True, help="delta of the epsilon, in (0, 0.5]")
    p.add_argument("--accountant", choices=options()["accountant"].choices, help="default: the run's own")
    ns = p.parse_args(argv)
    options()["delta"].check("--delta", ns.delta)
    summary = rundir.read_summary(ns.run) if rundir.is_complete(ns.run) else None
    if summary is None:
        raise UsageError(f"{ns.run} holds no complete run (summary.json with status complete)")
    try:
        ledger = Ledger.from_list(summary["ledger"])
    except (KeyError, ValueError) as e:
        raise UsageError(f"{ns.run}/summary.json: its ledger cannot be read ({e})") from None
    accountant = ns.accountant or summary.get("accountant", "rdp")
    eps = epsilons(ledger, delta=ns.delta, accountant=accountant)
    print(f"crepe epsilon: {rundir.eps_parts(eps, (r.kind for r in ledger))} per {ledger.unit} at delta {ns.delta:g} "
          f"({accountant} accountant)")
    return 0


def cmd_export(argv: list[str]) -> int:
    """`crepe export RUN`: model.pt and model.json of a finished run (runs before they were written)."""
    from crepe.training.export import export

    p = Parser(prog="crepe export", description="write model.pt (state_dict) and model.json of a finished run")
    p.add_argument("run", type=Path, help="a complete run folder")
    path = export(p.parse_args(argv).run)
    print(f"crepe export: wrote {path.resolve()} and {path.with_name('model.json').resolve()}")
    return 0


def cmd_audit(argv: list[str]) -> int:
    """`crepe audit RUN`: the one-run audit of a run trained with --audit-canaries (audit.json)."""
    p = Parser(prog="crepe audit", description=(
        "the one-run audit (Steinke, Nasr & Jagielski 2023) of a run trained with --audit-canaries: a 95% lower "
        "bound eps_lb on epsilon, and its f-DP conversion eps_lb_fdp (Mahloujifar, Melis & Chaudhuri 2024; "
        "tighter, if the tradeoff curve is Gaussian). A finished run wrote audit.json itself before its secrets were removed; an "
        "unfinished one is audited from its checkpoint, after the epochs done, and audit.json is (re)written"))
    p.add_argument("run", type=Path, help="a run folder trained with --audit-canaries")
    run_dir = p.parse_args(argv).run
    from crepe.training import rundir
    from crepe.training.audit import audit_folder

    result, how = audit_folder(run_dir)
    print(rundir.audit_line(result))
    partial = "" if result.get("complete") else f" (unfinished run: after {result['epochs_done']} epochs)"
    print(f"crepe audit: {how} {(run_dir / rundir.AUDIT).resolve()}{partial}", file=sys.stderr)
    return 0


COMMANDS = {"train": cmd_train, "epsilon": cmd_epsilon, "export": cmd_export, "audit": cmd_audit}


def top_parser() -> argparse.ArgumentParser:
    p = Parser(prog="crepe", description="CRAIG coresets for differentially private training.")
    p.add_argument("--version", action="version", version=f"crepe {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,sweep,report,epsilon,export,audit}")
    sub.add_parser("train", help="DP-SGD on a small private training set (crepe train --help)", add_help=False)
    sub.add_parser("sweep", help="grids of crepe train runs (crepe sweep --help)", add_help=False)
    sub.add_parser("report", help="tables and plots from run folders (crepe report --help)", add_help=False)
    sub.add_parser("epsilon", help="epsilon of a finished run at another delta (crepe epsilon --help)", add_help=False)
    sub.add_parser("export", help="model.pt and model.json of a finished run (crepe export --help)", add_help=False)
    sub.add_parser("audit", help="the one-run audit of a run trained with --audit-canaries (crepe audit --help)",
                   add_help=False)
    return p


_terminated = False


def _sigterm(signum: int, frame: Any) -> None:
    global _terminated
    _terminated = True
    raise KeyboardInterrupt  # the same tidy exit as Ctrl-C, with status 143


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: SIGTERM ends like Ctrl-C
        signal.signal(signal.SIGTERM, _sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    prog = f"crepe {command}" if command in (*COMMANDS, *DELEGATED) else "crepe"
    try:
        if command in DELEGATED:
            import importlib

            try:
                mod = importlib.import_module(DELEGATED[command])
            except ModuleNotFoundError as e:
                if e.name != DELEGATED[command]:
                    raise
                raise UsageError(f"{DELEGATED[command]} is not available in this installation") from None
            return int(mod.main(argv[1:]) or 0)
        if command in COMMANDS:
            return COMMANDS[command](argv[1:])
        top_parser().parse_args(argv)  # --help, --version, or an unknown command
        top_parser().print_help(sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{_where(command, argv)}", file=sys.stderr)
        return 143 if _terminated else 130
    except BrokenPipeError:  # output piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except RuntimeError as e:
        from crepe.dp.distributed import RankFailed

        print(f"{prog}: error: {e}{_where(command, argv) if isinstance(e, RankFailed) else ''}", file=sys.stderr)
        return 1


def _where(command: str | None, argv: list[str]) -> str:
    """What an interrupted `crepe train` left: its resume command, or that nothing was saved."""
    if command != "train":
        return ""
    target = _flag_value(argv, "--out") or _flag_value(argv, "--resume")
    if target and Path(target, "checkpoint.pt").is_file():
        return f"; every finished epoch is saved: resume with `crepe train --resume {Path(target).resolve()}`"
    if target and not Path(target).exists():
        return "; nothing was saved yet (the run folder was removed)"
    return ""


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None
