"""One CSV row per finished run folder trained with --audit-canaries (docs/results.md section 8).

    python bench/collect_audit.py runs/audit-study > docs/data/audit-study/runs.csv
    python bench/collect_audit.py --mean runs/audit-study > docs/data/audit-study/cells.csv

A row's cell is its folder's name without a trailing `_seedN`. Columns: the run's settings (method,
compute, target epsilon, seed, canaries M, guesses r), its ledger (steps, sample rate q, sigma),
epsilon (total, and the train part the canaries went through: eps_upper), mu_upper (the mu whose
mu-GDP has eps_upper at the run's delta: for q = 1 exactly sqrt(T)/sigma), the audit (right guesses,
eps_lb and its ceiling, mu_lb, eps_lb_fdp and its ceiling), correct_sim(_std): the right guesses an
ideal audit of the same mechanism makes (mean and std over 200 simulated runs: C times Binomial(T, q)
draws plus Gaussian noise, the same guessing rule), and the test accuracy. An audit.json
older than the f-DP conversion gets it from its counts (crepe.audit.canaries.with_fdp).
--mean: one row per cell, mean and std over seeds of correct, eps_lb, eps_lb_fdp and accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

from crepe.audit import fdp
from crepe.audit.canaries import with_fdp

COLUMNS = ("cell", "method", "compute", "target_epsilon", "seed", "canaries", "guesses", "steps", "sample_rate",
           "sigma", "eps_total", "eps_upper", "mu_upper", "correct", "correct_sim", "correct_sim_std", "eps_lb", "ceiling", "mu_lb", "eps_lb_fdp",
           "ceiling_fdp", "test_acc", "total_time_s")
MEANS = ("correct", "eps_lb", "mu_lb", "eps_lb_fdp", "test_acc")


def mu_of_epsilon(eps: float, delta: float) -> float:
    """The mu whose mu-GDP has this epsilon at delta (gaussian_epsilon grows with mu)."""
    lo, hi = 0.0, 1.0
    while fdp.gaussian_epsilon(hi, delta) < eps:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fdp.gaussian_epsilon(mid, delta) < eps else (lo, mid)
    return hi


def simulated_correct(*, m: int, r: int, steps: int, q: float, sigma: float, trials: int = 200) -> tuple[float, float]:
    """Mean and std of the right guesses an ideal white-box audit of this mechanism makes: canary i's score is
    C (its draws, Binomial(T, q) if included, else 0) plus N(0, T sigma^2 C^2) noise, in units of C; the same
    guessing rule (crepe.audit.bound.guess) over `trials` simulated runs, seeded."""
    from crepe.audit.bound import guess

    rng = np.random.default_rng(0)
    counts = []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        scores = rng.binomial(steps, q, size=m) * included + rng.normal(0.0, sigma * np.sqrt(steps), size=m)
        t = guess(scores, r)
        counts.append(int((t == np.where(included, 1, -1))[t != 0].sum()))
    return float(np.mean(counts)), float(np.std(counts))


def row(run: Path) -> dict | None:
    if not (run / "summary.json").is_file() or not (run / "audit.json").is_file():
        return None
    cfg = json.loads((run / "config.json").read_text())
    s = json.loads((run / "summary.json").read_text())
    a = with_fdp(json.loads((run / "audit.json").read_text()))
    train = [r for r in s["ledger"] if r["kind"] == "train"]
    rates = {r["sample_rate"] for r in train}
    q = rates.pop() if len(rates) == 1 else None
    sim = None if q is None else simulated_correct(m=a["canaries"], r=a["guesses"], steps=a["steps"], q=q,
                                                   sigma=s["sigma"])
    return {
        "cell": re.sub(r"_seed\d+$", "", run.name), "method": cfg["method"],
        "compute": cfg["compute"] if cfg["method"] != "full" else "", "target_epsilon": cfg["target_epsilon"],
        "seed": cfg["seed"], "canaries": a["canaries"], "guesses": a["guesses"], "steps": a["steps"],
        "sample_rate": round(q, 4) if q is not None else "varies", "sigma": round(s["sigma"], 4),
        "eps_total": round(s["eps_total"], 4), "eps_upper": round(a["eps_upper"], 4),
        "mu_upper": round(mu_of_epsilon(a["eps_upper"], a["delta"]), 4), "correct": a["correct"],
        "correct_sim": "" if sim is None else round(sim[0], 1), "correct_sim_std": "" if sim is None else round(sim[1], 1),
        "eps_lb": round(a["eps_lb"], 4), "ceiling": round(a["ceiling"], 4), "mu_lb": round(a["mu_lb"], 4),
        "eps_lb_fdp": round(a["eps_lb_fdp"], 4), "ceiling_fdp": round(a["ceiling_fdp"], 4),
        "test_acc": s["test_acc"], "total_time_s": round(s["total_time_s"], 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--mean", action="store_true", help="one row per cell: mean and std over seeds")
    args = p.parse_args()
    rows = [r for f in args.folders for run in sorted(f.glob("*/config.json")) if (r := row(run.parent))]
    out = csv.writer(sys.stdout)
    if not args.mean:
        out.writerow(COLUMNS)
        out.writerows([r[c] for c in COLUMNS] for r in rows)
        return
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r)
    fixed = [c for c in COLUMNS[1:13] if c != "seed"]
    out.writerow(["cell", *fixed, "seeds", *(f"{k}_{s}" for k in MEANS for s in ("mean", "std"))])
    for cell, members in cells.items():
        stats = []
        for k in MEANS:
            xs = [m[k] for m in members]
            stats += [round(statistics.fmean(xs), 4), round(statistics.stdev(xs), 4) if len(xs) > 1 else ""]
        out.writerow([cell, *(members[0][c] for c in fixed), len(members), *stats])


if __name__ == "__main__":
    main()
