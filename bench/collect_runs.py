"""One CSV row per finished `crepe train` run folder (for the hand-made tables of docs/results.md).

    python bench/collect_runs.py runs/ablation runs/ablation_eps1 > docs/data/fmnist20k-ablation.csv
    python bench/collect_runs.py --mean runs/ablation runs/ablation_eps1   # mean, std over seeds per row

A row's name is its folder's name without a trailing `_seedN`; the columns are the settings that
differ between the runs given, then seed, test accuracy, epsilon (total / select / train), sigma
and the wall-time split. Runs without summary.json (unfinished) are skipped and counted on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

RESULTS = ("test_acc", "eps_total", "eps_select", "eps_train", "sigma", "select_time_s", "train_time_s",
           "eval_time_s", "total_time_s")
IGNORED = {"provenance", "seed", "data_dir", "threads", "eval_every", "sigma", "select_sigma"}


def runs(folders: list[Path]) -> list[tuple[str, dict, dict]]:
    found, skipped = [], 0
    for folder in folders:
        for cfg_path in sorted(folder.glob("*/config.json")):
            run = cfg_path.parent
            if not (run / "summary.json").is_file():
                skipped += 1
                continue
            name = re.sub(r"_seed\d+$", "", run.name)
            found.append((name, json.loads(cfg_path.read_text()), json.loads((run / "summary.json").read_text())))
    if skipped:
        print(f"collect_runs: {skipped} unfinished run(s) skipped", file=sys.stderr)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--mean", action="store_true", help="one row per name: mean and std over seeds")
    args = p.parse_args()
    rows = runs(args.folders)
    keys = sorted(set.intersection(*(set(c) for _, c, _ in rows)) - IGNORED)  # older runs lack newer options
    varying = [k for k in keys if len({json.dumps(c.get(k)) for _, c, _ in rows}) > 1]
    out = csv.writer(sys.stdout)
    if not args.mean:
        out.writerow(["row", *varying, "seed", *RESULTS])
        for name, c, s in rows:
            out.writerow([name, *(c.get(k) for k in varying), c["seed"], *(s.get(k) for k in RESULTS)])
        return
    out.writerow(["row", *varying, "seeds", "test_acc_mean", "test_acc_std", "eps_total_max", "total_time_s_mean"])
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for name, c, s in rows:
        groups.setdefault((name, *(json.dumps(c.get(k)) for k in varying)), []).append((c, s))
    for (name, *_), members in groups.items():
        acc = [s["test_acc"] for _, s in members]
        out.writerow([
            name, *(members[0][0].get(k) for k in varying), len(members), round(statistics.fmean(acc), 4),
            round(statistics.stdev(acc), 4) if len(acc) > 1 else "", max(s["eps_total"] for _, s in members),
            round(statistics.fmean(s["total_time_s"] for _, s in members), 1),
        ])


if __name__ == "__main__":
    main()
