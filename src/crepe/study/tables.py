"""The tables of a report: results.md and results.csv, and the cells they share with the verdict's.

    results.md   Markdown table: mean +- std and 95% interval over seeds; the cells a
                 sweep never ran because their target epsilon is unreachable
    results.csv  the same numbers, machine-readable

A row of each is a Row of crepe.study.results (the runs of one configuration,
over seeds); its columns are the axes that vary (varying_axes).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crepe.study import grid as opts
from crepe.study.grid import REPLICATE
from crepe.study.results import (ACC_RANGE, FEW, FEW_NOTE, MIN_SEEDS, SUMMARY_FIELDS, USER_FIELDS, Row, Run, Stat,
                                 axis_cell, column_title, key_names, protocol, user_level, varying_axes)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n noun`, the noun in the plural unless n is 1 ("1 complete run", "2 complete runs")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def pm(s: Stat | None, *, scale: float = 1.0, digits: int = 2) -> str:
    if s is None:
        return "n/a"
    if math.isinf(s.mean):
        return "∞"
    text = f"{s.mean * scale:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std * scale:.{digits}f}"
    return text


def eps_cell(r: Row) -> str:
    t, sel, tr = r.stats["eps_total"], r.stats["eps_select"], r.stats["eps_train"]
    if t is None:
        return "n/a"
    if math.isinf(t.mean):
        if not r.k["dp"]:
            return "∞ (non-private)"
        return "∞ (non-private selection)" if sel is not None and math.isinf(sel.mean) else "∞"
    return f"{t.mean:.3g} ({_num(sel)} / {_num(tr)})"


def _num(s: Stat | None) -> str:
    return "n/a" if s is None else ("∞" if math.isinf(s.mean) else f"{s.mean:.3g}")


def _solved_sigma(r: Row) -> float | None:
    """The sigma of a row's runs (solved from the target epsilon when there is one)."""
    sigmas = {r2.config.get("sigma") for r2 in r.runs}
    return sigmas.pop() if len(sigmas) == 1 and r.k["dp"] else None


def _cell(r: Row, a: str) -> str:
    if a == "sigma" and r.k[a] is None and _solved_sigma(r) is not None:
        return f"{_solved_sigma(r):.3g} (solved)"
    return axis_cell(a, r.k[a])


def ci_cell(s: Stat | None, *, scale: float = 100.0, bounds: tuple[float, float] = ACC_RANGE) -> str:
    """The 95% interval of a mean (an accuracy) as [low, high], clipped to `bounds` (0-100 %), marked FEW
    below MIN_SEEDS seeds."""
    if s is None:
        return "n/a"
    ci = s.interval95(*bounds)
    text = "n/a" if ci is None else f"[{ci[0] * scale:.2f}, {ci[1] * scale:.2f}]"
    return text + (f" {FEW}" if s.n < MIN_SEEDS else "")


def speedup_cell(r: Row) -> str:
    return "n/a" if r.speedup is None else f"{r.speedup:.2f}×"


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + [
        "| " + " | ".join(cells) + " |" for cells in body]


# The training-set accuracy is computed on the private data outside the ledger (DESIGN.md section 9).
TRAIN_ACC_TITLE = "train acc (%, not covered by ε)"
TRAIN_ACC_NOTE = ("Train acc is the final model's accuracy on the training split: computed on the private data "
                  "outside the ledger, it is not covered by ε.")
CI_NOTE = ("95% CI: t-based interval of the mean over seeds, clipped to [0, 100] (an accuracy cannot leave it); "
           + FEW_NOTE)


def markdown(rows: Sequence[Row], runs: Sequence[Run], skipped: Sequence[str], unreachable: Sequence[str] = ()) -> str:
    """results.md; `unreachable`: the lines of unreachable_section (cells a sweep never ran)."""
    axes = varying_axes(rows)
    cfg = runs[0].config
    protocol_bits = protocol(runs, axes)
    head = [column_title(a) for a in axes] + [
        "seeds", "test acc (%)", "95% CI (%)", TRAIN_ACC_TITLE, "ε_total (ε_select / ε_train)", "select (s)", "train (s)",
        "eval (s)", "total (s)", "speed-up vs full"]
    lines = [
        "# crepe sweep report",
        "",
        f"{count(len(runs), 'complete run')}; mean ± sample std over seeds. Protocol: {', '.join(protocol_bits)}.",
        "Times are wall-clock seconds per run as `crepe train` measures them: selection rounds, training epochs, and "
        "the whole run (selection + training + evaluation; process start-up and data loading excluded). "
        "Speed-up = total time of the full-data run with the same model, dataset and σ or target ε (or non-DP) / this row's. "
        "Runs calibrated to different target ε are never averaged: each target is its own row. " + CI_NOTE,
        f"ε per {' or '.join(sorted({r.summary.get('unit', 'example') for r in runs}))} at δ = {cfg.get('delta', 1e-5):g}, "
        "zero-out adjacency: ε_total composes the selection rounds and the "
        "DP-SGD steps in one accountant; ε_select and ε_train are each part alone (their sum overstates ε_total). "
        "Per-class selection reads the true labels: its ε holds with labels treated as public. " + TRAIN_ACC_NOTE,
        "",
    ]
    lines += md_table(head, [[_cell(r, a) for a in axes] + [
        str(len(r.runs)),
        pm(r.stats["test_acc"], scale=100),
        ci_cell(r.stats["test_acc"]),
        pm(r.stats["train_acc"], scale=100),
        eps_cell(r),
        *(pm(r.stats[f], digits=1) for f in ("select_time_s", "train_time_s", "eval_time_s", "total_time_s")),
        speedup_cell(r),
    ] for r in rows])
    lines += unreachable
    if skipped:
        lines += ["", f"Left out ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("n_seeds", "seeds") + tuple(
    f"{f}_{s}" for f in SUMMARY_FIELDS for s in ("mean", "std")) + ("speedup_vs_full", "test_acc_ci95_low", "test_acc_ci95_high")


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """results.csv: a row's key (the axes; the step sizes of a user-level report), then CSV_FIELDS,
    then (a user-level report only) the mean and std of USER_FIELDS."""
    names = key_names(rows)
    extra = USER_FIELDS if user_level([run for r in rows for run in r.runs]) else ()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(names) + list(CSV_FIELDS) + [f"{f}_{s}" for f in extra for s in ("mean", "std")])
        for r in rows:
            vals: list[Any] = ["" if r.k[a] is None else r.k[a] for a in names]
            vals += [len(r.runs), " ".join(map(str, r.seeds))]
            for f in SUMMARY_FIELDS:
                vals += mean_std(r.stats[f])
            vals.append("" if r.speedup is None else f"{r.speedup:.4g}")
            vals += ci_bounds(r.stats["test_acc"])
            for f in extra:
                vals += mean_std(r.stats[f])
            w.writerow(vals)


def mean_std(s: Stat | None) -> list[str]:
    """A statistic as two CSV cells (empty where absent; an infinite mean as inf)."""
    return ["" if s is None else ("inf" if math.isinf(s.mean) else f"{s.mean:.6g}"),
            "" if s is None or s.std is None else f"{s.std:.6g}"]


def ci_bounds(s: Stat | None, bounds: tuple[float, float] = ACC_RANGE) -> list[str]:
    """The 95% interval of a mean (an accuracy) as two CSV cells, clipped to `bounds` (empty below two seeds)."""
    ci = None if s is None else s.interval95(*bounds)
    return ["", ""] if ci is None else [f"{ci[0]:.6g}", f"{ci[1]:.6g}"]


def unreachable_section(manifest: dict[str, Any] | None, where: str | None = None) -> list[str]:
    """Markdown lines listing the cells `crepe sweep` never ran because their target epsilon is
    unreachable (from a sweep's manifest, sweep.json; none without one). A cell: its runs but the seed.
    `where`: the sweep's name, in the heading (a report of several sweeps)."""
    records = [r for r in (manifest or {}).get("runs", {}).values() if r.get("status") == "unreachable"]
    if manifest is None or not records:
        return []
    key = {st.name: k for k, st in opts.axes().items()}
    shown = [key["method"]] + [k for k, v in manifest["grid"].items()
                               if len(v) > 1 and k not in (key["method"], key[REPLICATE], key["target_epsilon"])]
    cells: dict[tuple[str, float, float], list[str]] = {}
    for r in records:
        settings = " ".join(f"{k}={opts.fmt(r['settings'][k])}" for k in shown if k in r["settings"])
        seed = r["settings"].get(key[REPLICATE], opts.default(REPLICATE))
        cells.setdefault((settings, r["target_epsilon"], r["smallest_epsilon"]), []).append(str(seed))
    return ["", "## Unreachable cells (not run)" + ("" if where is None else f" in {where}"), "",
            "Their schedule cannot bring ε_total down to the target ε even at the largest noise `crepe train` "
            "allows: `crepe sweep` did not start them.", ""] + md_table(
        ["settings", "target ε", "smallest reachable ε", "seeds"],
        [[settings, f"{target:g}", f"{floor:.4g}", " ".join(seeds)] for (settings, target, floor), seeds in cells.items()])
