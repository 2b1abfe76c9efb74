"""A sweep's results: its complete runs, grouped into rows, with statistics over seeds.

find_runs reads every run directory under SWEEP_DIR (a folder with config.json;
finished runs have summary.json with status "complete" and metrics.jsonl), and
aggregate groups the runs that differ only in their seed into Rows: the mean,
sample std and t-based 95% interval of every summary field (Stat), and the
speed-up over the matching full-data row.

Rows come from the option declarations (crepe.config, via crepe.study.grid):
runs that agree on every grid option but the seed share a row (a method's
ignored options and a non-private run's DP-only options do not split rows). So
runs calibrated to different target epsilons are never averaged. A report
compares runs of one protocol: every other option (epochs, batch size, subsets,
...) must agree across the runs that use it, or check_consistent stops with an
error naming the setting and the runs. Below: how a row's settings read, in the
tables and the figures alike. torch-free (scipy only for an interval).

Runs on data with users (has_users: a user-level run, or an example-level one on users,
which reports its epsilon per user by group privacy) make a user-level report
(crepe.study.user_study; DESIGN.md section 11). Their rows are made the same way (privacy
unit, algorithm, K, local epochs, pretraining and U are grid options, so axes), with
three differences, none of which touches a report of runs without users:
- an option a run does not use by its users, unit, algorithm or pretraining
  (grid.user_unused: dp-fedemb's head step for a dp-sgd run, B for a user-level run)
  need not agree with the runs that use it;
- the step sizes (TUNED) may differ between configurations: the study tunes the server
  lr per algorithm. Where one varies it is part of every row's key (a column); runs of
  one configuration at two step sizes are two rows;
- each row also has the statistics of USER_FIELDS (user_values: the epsilon per user,
  the embedding metrics of held-out classes, rounds and training seconds per round), and
  results.csv their columns.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crepe.config import UsageError
from crepe.smallsets import methods
from crepe.study import grid as opts
from crepe.study.grid import REPLICATE
from crepe.training import rundir

# Always columns (the others when they vary across rows, or, for WHEN_SET, when any row sets them).
SHOWN = ("model", "method", "dp", "sigma")
WHEN_SET = ("target_epsilon",)
USER_WHEN_SET = ("pretrain",)  # a user-level report's too: its rows with and without public pretraining
TITLES = {"dp": "privacy", "sigma": "σ", "target_epsilon": "target ε"}  # column titles other than the option name
# Filled from a grid option by TrainConfig.resolve (select_sigma from sigma; sigma
# from a target epsilon): must agree within a row only.
PER_ROW = ("select_sigma", "sigma")
# The methods in the order of the rows, each with its colour and marker in the figures (a method
# not named here comes after them, in grey).
def method_rank(name: Any) -> int:
    """A method's place in tables and plots: the registry's order (unknown names last)."""
    names = methods.names()
    return names.index(name) if name in names else len(names)


# A user-level report: the step sizes that may differ between configurations (see above).
TUNED = ("lr", "momentum", "local_lr", "head_lr_scale")
# A user-level run's statistics beyond SUMMARY_FIELDS (user_values): epsilon per user, the embedding of
# held-out classes (summary.json's "embedding"), training rounds (steps: example level) and seconds per round.
USER_FIELDS = ("eps_user", "recall_at_far_1e-3", "recall_at_far_0.1", "nn1_accuracy", "rounds", "train_s_per_round")
EMBEDDING = ("recall_at_far_1e-3", "recall_at_far_0.1", "nn1_accuracy")


def axes() -> tuple[str, ...]:
    """Options that make rows (a column of the table when they vary across the sweep)."""
    return opts.report_axes()


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (two-sided 95%)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (std None for one seed)."""

    mean: float
    std: float | None
    n: int

    @property
    def half95(self) -> float | None:
        """Half-width of the t-based 95% interval of the mean (None for one seed or an infinite mean)."""
        if self.std is None or math.isinf(self.mean):
            return None
        return t975(self.n - 1) * self.std / math.sqrt(self.n)

    def interval95(self, low: float = -math.inf, high: float = math.inf) -> tuple[float, float] | None:
        """The t-based 95% interval of the mean, clipped to [low, high] (an accuracy: ACC_RANGE);
        None where half95 is None."""
        h = self.half95
        if h is None:
            return None
        return max(low, self.mean - h), min(high, self.mean + h)

    @staticmethod
    def of(values: Sequence[float | None]) -> Stat | None:
        xs = [float(v) for v in values if v is not None]
        if not xs:
            return None
        if any(math.isinf(x) for x in xs):
            return Stat(math.inf, None, len(xs))
        return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


@dataclass(frozen=True)
class Row:
    """One table row: the runs of one configuration, over seeds."""

    key: tuple[tuple[str, Any], ...]  # (axis, value) for every axis
    runs: tuple[Run, ...]
    stats: dict[str, Stat | None]
    speedup: float | None  # total time of the matching full-data run / this row's

    @property
    def k(self) -> dict[str, Any]:
        return dict(self.key)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r.config.get("seed", 0)) for r in self.runs)


SUMMARY_FIELDS = ("test_acc", "train_acc", "eps_total", "eps_select", "eps_train", "select_time_s", "train_time_s",
                  "eval_time_s", "total_time_s")
MIN_SEEDS = 3  # fewer seeds than this: the interval is wide (or missing) and marked FEW
FEW = "†"
ACC_RANGE = (0.0, 1.0)  # an accuracy (a fraction): its intervals are clipped to this range
FEW_NOTE = (f"{FEW} fewer than {MIN_SEEDS} seeds: the 95% interval from 2 seeds is very wide (the t quantile at 1 degree "
            "of freedom is 12.7, so the interval is ± 9 standard deviations), and one seed has none.")


def _eps(summary: dict[str, Any], key: str) -> float:
    """An epsilon of a summary as a float; `crepe train` writes an infinite one
    (non-private) as null with `<key>_infinite: true` (JSON has no inf)."""
    value = summary.get(key)
    if summary.get(f"{key}_infinite") or value is None:
        return math.inf
    return float(value)


# ---------------------------------------------------------------------------
# Loading.


def _run_dirs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} is not a directory")
    if (sweep_dir / rundir.CONFIG).is_file():
        return [sweep_dir]  # a single run directory reports as a one-run sweep
    dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / rundir.CONFIG).is_file())
    if not dirs:
        raise UsageError(
            f"no runs in {sweep_dir}: expected run directories (with config.json) written by "
            "`crepe sweep --out` or `crepe train --out`"
        )
    return dirs


def find_runs(sweep_dir: Path | Sequence[Path]) -> tuple[list[Run], list[str]]:
    """Complete runs under sweep_dir (or under each of several: a run is then named
    SWEEP/RUN, its sweep folder's name and its own; a run directory given itself is a
    one-run sweep), and a note per run directory left out."""
    sweeps = [sweep_dir] if isinstance(sweep_dir, Path) else list(sweep_dir)
    runs: list[Run] = []
    skipped: list[str] = []
    for sweep in sweeps:
        for d in _run_dirs(sweep):
            name = d.name if len(sweeps) == 1 else f"{d.parent.name}/{d.name}"
            try:
                config = rundir.read_config(d).to_dict()
                summary = rundir.read_summary(d) or {}
                metrics = rundir.read_metrics(d)
            except UsageError as e:
                skipped.append(f"{name}: {e}")
                continue
            if summary.get("status") != "complete":
                skipped.append(f"{name}: not complete")
                continue
            runs.append(Run(name, d, config, summary, tuple(metrics)))
    if not runs:
        where = " ".join(map(str, sweeps))
        raise UsageError(f"no complete runs in {where} ({len(skipped)} incomplete: {'; '.join(skipped[:5])})")
    return runs, skipped


# ---------------------------------------------------------------------------
# Users (DESIGN.md section 11).


def has_users(run: Run) -> bool:
    """A run on data with users: user-level, or example-level with an epsilon per user by group
    privacy (`crepe train` writes max_per_user into such a run's summary)."""
    return run.config.get("privacy_unit") == "user" or "max_per_user" in run.summary


def user_level(runs: Sequence[Run]) -> bool:
    """Is this a user-level report (some run on data with users)?"""
    return any(has_users(r) for r in runs)


def train_steps(summary: dict[str, Any]) -> int | None:
    """Training steps of a run (rounds of a user-level run): its ledger's training releases."""
    records = [r for r in summary.get("ledger") or () if r.get("kind") == "train"]
    return sum(int(r["steps"]) for r in records) if records else None


def user_values(run: Run) -> dict[str, float | None]:
    """USER_FIELDS of a run on data with users (all None for one without). eps_user: the run's
    epsilon_total if it is user-level, its group-privacy epsilon per user (eps_user) if it is
    example-level; infinite for a non-private run."""
    s = run.summary
    if not has_users(run):
        return dict.fromkeys(USER_FIELDS)
    emb = s.get("embedding") or {}
    steps = train_steps(s)
    seconds = s.get("train_time_s")
    return {
        "eps_user": _eps(s, "eps_total" if run.config.get("privacy_unit") == "user" else "eps_user"),
        **{k: emb.get(k) for k in EMBEDDING},
        "rounds": steps,
        "train_s_per_round": seconds / steps if steps and seconds is not None else None,
    }


def user_count(run: Run) -> int | None:
    """U, the run's number of users: --user-count (synthetic writers); QMNIST's writers (as its
    data_source names them); otherwise users per round / q of a user-level run's ledger (user ids from
    the API); None where none of these says."""
    c = run.config
    if c.get("users") == "synthetic":
        return int(c["user_count"])
    found = re.search(r"of (\d+) NIST writers", str(run.summary.get("data_source") or ""))
    if found:
        return int(found.group(1))
    rates = {r.get("sample_rate") for r in run.summary.get("ledger") or () if r.get("unit") == "user"}
    if c.get("privacy_unit") == "user" and len(rates) == 1 and (q := rates.pop()):
        return round(int(c["users_per_round"]) / float(q))
    return None


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _uses(c: dict[str, Any], name: str) -> bool:
    """Does a run with config c depend on option `name`?"""
    if name == "sigma" and c.get("target_epsilon") is not None:
        return False  # solved from the target: the target is the setting
    return not opts.unused(name, method=c.get("method"), dp=c.get("dp"))


def _applies(c: dict[str, Any], name: str, users: bool) -> bool:
    """_uses, and in a user-level report (`users`) also not user_unused."""
    return _uses(c, name) and not (users and opts.user_unused(name, c))


def _axis_key(run: Run) -> tuple[tuple[str, Any], ...]:
    c = run.config
    return tuple((axis, _norm(c.get(axis)) if _uses(c, axis) else None) for axis in axes())


def tuned(runs: Sequence[Run]) -> tuple[str, ...]:
    """The step sizes (TUNED) that make rows: in a user-level report, those that vary across the runs
    that use them; none otherwise."""
    if not user_level(runs):
        return ()
    return tuple(k for k in TUNED if len(_by([r for r in runs if _applies(r.config, k, True)], k)) > 1)


def _row_key(run: Run, steps: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """A row's key: the axes, then the step sizes `steps` (tuned) where the run uses them."""
    c = run.config
    return _axis_key(run) + tuple((k, _norm(c.get(k)) if _applies(c, k, True) else None) for k in steps)


def _by(runs: Sequence[Run], key: str) -> dict[Any, list[str]]:
    out: dict[Any, list[str]] = {}
    for r in runs:
        out.setdefault(_norm(r.config.get(key)), []).append(r.name)
    return out


def _mismatch(key: str, runs: Sequence[Run], where: str) -> UsageError:
    parts = [f"{v!r} in {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for v, names in _by(runs, key).items()]
    return UsageError(
        f"runs with mismatched settings {where}: {key} is " + "; ".join(parts)
        + ". A report compares runs of one protocol: report them from separate sweep directories"
    )


def check_consistent(runs: Sequence[Run]) -> None:
    """Settings that are not table columns must agree among the runs that use them; UsageError naming them."""
    keys = sorted(set().union(*(r.config.keys() for r in runs)))
    with_users, steps = user_level(runs), tuned(runs)
    ignored = (REPLICATE, *opts.machine(), *axes(), *PER_ROW, *steps)
    for k in (k for k in keys if k not in ignored):
        users = [r for r in runs if _applies(r.config, k, with_users)]
        if len(_by(users, k)) > 1:
            raise _mismatch(k, users, "across the sweep")
    groups: dict[Any, list[Run]] = {}
    for r in runs:
        groups.setdefault(_row_key(r, steps), []).append(r)
    for group in groups.values():
        for k in PER_ROW:
            users = [r for r in group if not opts.unused(k, method=r.config.get("method"), dp=r.config.get("dp"))]
            if len(_by(users, k)) > 1:
                raise _mismatch(k, group, f"within one row ({row_label(dict(_axis_key(group[0])))})")
        seeds = _by(group, "seed")
        dup = [names for names in seeds.values() if len(names) > 1]
        if dup:
            raise UsageError(f"runs {', '.join(dup[0])} have the same settings and the same seed: remove one")


# ---------------------------------------------------------------------------
# Aggregation.


def _sort_key(row_key: tuple[tuple[str, Any], ...]) -> tuple[Any, ...]:
    k = dict(row_key)
    return (
        str(k.get("dataset")),
        str(k.get("model")),
        0 if k.get("dp") else 1,
        k.get("target_epsilon") or 0.0,
        k.get("sigma") or 0.0,
        method_rank(k.get("method")),
        tuple(str(k.get(a)) for a in axes() if a not in ("dataset", "model", "dp", "target_epsilon", "sigma", "method")),
        tuple(str(v) for a, v in row_key if a not in axes()),  # the step sizes of a user-level report
    )


def aggregate(runs: Sequence[Run]) -> list[Row]:
    check_consistent(runs)
    steps = tuned(runs)
    groups: dict[tuple[tuple[str, Any], ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(_row_key(r, steps), []).append(r)
    stats: dict[tuple[tuple[str, Any], ...], dict[str, Stat | None]] = {}
    for key, group in groups.items():
        s: dict[str, Stat | None] = {}
        for f in SUMMARY_FIELDS:
            vals = [(_eps(r.summary, f) if f.startswith("eps") else r.summary.get(f)) for r in group]
            s[f] = Stat.of(vals)
        per_run = [user_values(r) for r in group]
        for f in USER_FIELDS:
            s[f] = Stat.of([v[f] for v in per_run])
        stats[key] = s
    rows = []
    for key in sorted(groups, key=_sort_key):
        # the full-data row at the same settings: the options full-data runs ignore are None in its key
        ref_key = tuple((a, "full" if a == "method" else None if opts.unused(a, method="full", dp=True) else v) for a, v in key)
        speedup = None
        ref, mine = stats.get(ref_key, {}).get("total_time_s"), stats[key].get("total_time_s")
        if ref is not None and mine is not None and mine.mean > 0:
            speedup = ref.mean / mine.mean
        rows.append(Row(key, tuple(sorted(groups[key], key=lambda r: int(r.config.get("seed", 0)))), stats[key], speedup))
    return rows


def key_names(rows: Sequence[Row]) -> tuple[str, ...]:
    """The names in the rows' keys: the axes, then (a user-level report) the step sizes that make rows."""
    return tuple(a for a, _ in rows[0].key) if rows else axes()


def varying_axes(rows: Sequence[Row]) -> list[str]:
    """Axes shown as columns: the always-shown ones plus any that vary across rows."""
    out = []
    when_set = WHEN_SET + (USER_WHEN_SET if user_level([run for r in rows for run in r.runs]) else ())
    for a in key_names(rows):
        values = {r.k[a] for r in rows if r.k[a] is not None}
        if a in SHOWN or len(values) > 1 or (a in when_set and values):
            out.append(a)
    return out


def protocol(runs: Sequence[Run], columns: Sequence[str]) -> list[str]:
    """`name=value` of every option that is not a column, where the runs that use it agree."""
    bits = []
    skip = (REPLICATE, *opts.machine(), *columns)
    with_users = user_level(runs)
    for k in (k for k in runs[0].config if k not in skip):
        values = _by([r for r in runs if _applies(r.config, k, with_users)], k)
        if len(values) == 1 and next(iter(values)) is not None:
            bits.append(f"{k}={next(iter(values))}")
    return bits


# ---------------------------------------------------------------------------
# How settings read (table cells, figure labels).


def privacy_label(k: dict[str, Any]) -> str:
    """The privacy level of a row: DP at a target epsilon or a sigma, or non-DP."""
    if not k.get("dp"):
        return "non-DP"
    if k.get("target_epsilon") is not None:
        return f"DP ε={k['target_epsilon']:g} (target)"
    return "DP" if k.get("sigma") is None else f"DP σ={k['sigma']:g}"


def row_label(k: dict[str, Any]) -> str:
    """A row's model, method and privacy level."""
    return f"{k.get('model')} {k.get('method')} {privacy_label(k)}"


def axis_cell(a: str, v: Any) -> str:
    if a == "dp":
        return "DP" if v else "non-DP"
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def column_title(a: str) -> str:
    return TITLES.get(a, a.replace("_", " "))


# Axes that pick a plot's panel or line style rather than a line of their own.
PLOT_AXES = ("dataset", "model", "method", "dp", "sigma", "target_epsilon")


def extra_label(r: Row, axes: Sequence[str]) -> str:
    bits = [f"{column_title(a)}={axis_cell(a, r.k[a])}" for a in axes if a not in PLOT_AXES and r.k[a] is not None]
    return (" " + " ".join(bits)) if bits else ""
