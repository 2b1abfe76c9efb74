"""Tables of issue 24's user-level study from its runs' config.json and summary.json (no training).

    python bench/collect_user_study.py RUN_DIR_OR_SWEEP [...] [--csv runs.csv] [--md table.md]
        [--baseline baseline.json]

`crepe report SWEEP ... --out DIR` writes the same tables and Welch lines (users.md,
crepe.study.user_study; its seed-0 table from the run folders of seed 0 given one by one). This
script also writes what crepe report does not: the noise columns (noise_over_signal needs the
model's parameter count, so torch; crepe report stays torch-free), the untrained-backbone line
and one CSV line per run. It reads every finished run (a folder holding summary.json with
status "complete") under the paths given and writes:
- one row per run (`--csv`): its settings, sigma, epsilon (the run's own, and the user-level one:
  the run's epsilon for a user-level run, the group-privacy epsilon for an example-level run),
  rounds, recall at FAR 1e-3 and 0.1 and 1-NN accuracy on the held-out classes, test accuracy,
  training seconds per round (step) and the whole run's wall time;
- a markdown table per target user-level epsilon (`--md`), one row per configuration: the mean
  over its seeds, with "± std" when it has 2 or more, and the number of seeds. No interval is
  given for 1 seed. Per target, for test accuracy and recall at FAR 1e-3: the configuration with
  the highest mean among those with 2+ seeds against each other such one, with the Welch 95%
  interval of the difference (`crepe.study.verdict.welch`, as `crepe report` computes it).
Example-level runs are matched to a target by their user-level epsilon (within 1% below it).
`--only-seed S` keeps the runs of seed S only (each starts from the backbone that seed initialises).
`--baseline` adds the row of an untrained backbone (bench/untrained_embedding.py's JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

FIELDS = ["run", "unit", "algorithm", "K", "local_epochs", "pretrain", "dp", "target_eps", "sigma", "seed",
          "eps", "eps_user", "max_per_user", "rounds", "recall_1e-3", "recall_0.1", "nn1", "test_acc",
          "train_s_per_round", "total_time_s", "units_per_round", "noise_std_per_coord", "noise_over_signal", "lr", "momentum", "batch_size"]


def dims(cfg: dict) -> int:
    """The number of coordinates that get noise: every parameter, or for dp-fedemb all but the head's."""
    import torch.nn as nn

    from crepe.models import build_model

    model = build_model(cfg["model"], activation=cfg["activation"])
    d = sum(p.numel() for p in model.parameters())
    if cfg["privacy_unit"] == "user" and cfg["algorithm"] == "dp-fedemb":
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # the layer the run keeps local
        d -= sum(p.numel() for p in head.parameters())
    return d


def rows_of(paths: list[Path]) -> list[dict]:
    rows = []
    for root in paths:
        for s in sorted(root.rglob("summary.json")):
            summary = json.loads(s.read_text())
            if summary.get("status") != "complete":
                continue
            cfg = json.loads((s.parent / "config.json").read_text())
            emb = summary.get("embedding") or {}
            user = cfg["privacy_unit"] == "user"
            rounds = sum(r["steps"] for r in summary["ledger"] if r["kind"] == "train")
            eps = None if summary.get("eps_total_infinite") else summary["eps_total"]
            eps_user = eps if user else (None if summary.get("eps_user_infinite") else summary.get("eps_user"))
            k_vc = cfg["virtual_client_size"] if user and cfg["algorithm"] == "dp-fedemb" else 1
            # the public denominator of the server's step: expected units per round (user level), B (example level)
            units = cfg["users_per_round"] / k_vc if user else cfg["batch_size"]
            rows.append({
                "run": str(s.parent),
                "unit": cfg["privacy_unit"],
                "algorithm": cfg["algorithm"] if user else "example-level dp-sgd",
                "K": cfg["virtual_client_size"] if user and cfg["algorithm"] == "dp-fedemb" else 1,
                "local_epochs": cfg["local_epochs"] if user and cfg["algorithm"] != "dp-sgd" else "",
                "pretrain": cfg.get("pretrain") or "",
                "dp": cfg["dp"],
                "target_eps": cfg.get("target_epsilon"),
                "sigma": summary["sigma"],
                "seed": cfg["seed"],
                "eps": eps,
                "eps_user": eps_user,
                "max_per_user": summary.get("max_per_user"),
                "rounds": rounds,
                "recall_1e-3": emb.get("recall_at_far_1e-3"),
                "recall_0.1": emb.get("recall_at_far_0.1"),
                "nn1": emb.get("nn1_accuracy"),
                "test_acc": summary.get("test_acc"),
                "train_s_per_round": summary["train_time_s"] / rounds if rounds else None,
                "total_time_s": summary["total_time_s"],
                "units_per_round": units,
                # std of the noise in one coordinate of the averaged update the server steps with: sigma C / units
                "noise_std_per_coord": summary["sigma"] * cfg["max_grad_norm"] / units,
                # the noise's norm over the largest norm of the averaged clipped signal (C): sigma sqrt(d) / units
                "noise_over_signal": summary["sigma"] * math.sqrt(dims(cfg)) / units,
                "lr": cfg["lr"], "momentum": cfg["momentum"], "batch_size": cfg["batch_size"],
            })
    return rows


def target_of(row: dict, targets: list[float]) -> float | None:
    """The target user-level epsilon a row was run at: its --target-epsilon (user-level runs), or the
    target its group-privacy epsilon lies within 1% below (example-level runs at a bisected sigma)."""
    if not row["dp"]:
        return None
    if row["unit"] == "user":
        return row["target_eps"]
    for t in targets:
        if row["eps_user"] is not None and 0.99 * t <= row["eps_user"] <= t * (1 + 1e-9):
            return t
    return math.nan


def fmt(values: list[float], digits: int, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "—"
    m = statistics.mean(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def config_name(row: dict) -> str:
    if row["unit"] == "example":
        name = "example-level DP-SGD (ε per user by group privacy, k = %s)" % row["max_per_user"]
    elif row["algorithm"] == "dp-fedemb":
        name = f"DP-FedEmb K = {row['K']}"
    else:
        name = {"dp-sgd": "user-level DP-SGD", "dp-fedavg": "DP-FedAvg"}[row["algorithm"]]
    if row["pretrain"]:
        name += f", pretrained on public {row['pretrain']}"
    return name


def multi_lr(rows: list[dict], r: dict) -> bool:
    """True when runs of r's configuration were made at more than one server lr (then rows split by lr)."""
    return len({x["lr"] for x in rows if config_name(x) == config_name(r)}) > 1


def table(rows: list[dict], title: str) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(config_name(r) + (f" (lr {r['lr']:g})" if multi_lr(rows, r) else ""), []).append(r)
    out = [f"**{title}**", "",
           "| configuration | server lr | seeds | σ | noise std / coord. | ‖noise‖ / C | ε per user | recall @ FAR 1e-3 (%) | recall @ FAR 0.1 (%) | 1-NN (%) "
           "| test acc (%) | s / round |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(groups.items(), key=lambda kv: -statistics.mean(r["recall_1e-3"] or 0 for r in kv[1]))
    for name, rs in order:
        sigmas = sorted({round(r["sigma"], 3) for r in rs})
        lrs = "/".join(sorted({f"{r['lr']:g}" for r in rs}))
        eps = [r["eps_user"] for r in rs if r["eps_user"] is not None]
        out.append(
            f"| {name} | {lrs} | {len(rs)} | {'/'.join(f'{s:g}' for s in sigmas)} | "
            f"{fmt([r['noise_std_per_coord'] for r in rs], 4)} | {fmt([r['noise_over_signal'] for r in rs], 2)} | "
            f"{(f'{max(eps):.3f}' if eps else '∞')} | {fmt([r['recall_1e-3'] for r in rs], 2, 100)} | "
            f"{fmt([r['recall_0.1'] for r in rs], 2, 100)} | {fmt([r['nn1'] for r in rs], 2, 100)} | "
            f"{fmt([r['test_acc'] for r in rs], 2, 100)} | {fmt([r['train_s_per_round'] for r in rs], 3)} |")
    return out + [""]


def welch_lines(rows: list[dict], metric: str, scale: float = 100.0) -> list[str]:
    """Per target: the two configurations with 2+ seeds and the highest mean of `metric`, their
    difference with the Welch 95% interval (crepe.study.verdict.welch, as `crepe report` computes it)."""
    from crepe.study.results import Stat
    from crepe.study.verdict import welch

    groups: dict[str, list[float]] = {}
    for r in rows:
        if r[metric] is not None:
            groups.setdefault(config_name(r), []).append(r[metric] * scale)
    stats = {k: Stat.of(v) for k, v in groups.items() if len(v) >= 2}
    if len(stats) < 2:
        return []
    ranked = sorted(stats.items(), key=lambda kv: -kv[1].mean)
    (a, sa), out = ranked[0], []
    for b, sb in ranked[1:]:  # the best against every other configuration with 2+ seeds
        d = welch(sa, sb)
        verdict = "exceeds the seed noise" if d.exceeds_noise else "within the seed noise"
        out.append(f"{metric}: {a} ({sa.n} seeds) − {b} ({sb.n} seeds) = {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] "
                   f"(Welch 95%): {verdict}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--csv", type=Path)
    p.add_argument("--md", type=Path)
    p.add_argument("--targets", type=float, nargs="+", default=[3.0, 8.0])
    p.add_argument("--only-seed", type=int, help="tabulate only the runs of this seed (paired with its initial backbone)")
    p.add_argument("--baseline", type=Path, help="JSON of an untrained backbone's embedding metrics")
    a = p.parse_args()
    rows = rows_of(a.paths)
    if a.only_seed is not None:
        rows = [r for r in rows if r["seed"] == a.only_seed]
    for r in rows:
        r["target_user_eps"] = target_of(r, a.targets)
    if a.csv:
        with a.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS + ["target_user_eps"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    lines = []
    for t in a.targets:
        lines += table([r for r in rows if r["target_user_eps"] == t], f"user-level ε = {t:g} (δ = 1e-5)")
    for t in a.targets:
        at = [r for r in rows if r["target_user_eps"] == t]
        for metric in ("test_acc", "recall_1e-3"):
            lines += [f"ε = {t:g}, {w}" + "\n" for w in welch_lines(at, metric)]
    unmatched = [r for r in rows if r["dp"] and r["target_user_eps"] not in a.targets]
    if unmatched:
        lines += table(unmatched, "DP runs at no target of this table")
    nodp = [r for r in rows if not r["dp"]]
    if nodp:
        lines += table(nodp, "non-private (ε = ∞): the ceiling")
    if a.baseline:
        b = json.loads(a.baseline.read_text())
        if a.only_seed is not None:
            i = b["seeds"].index(a.only_seed)
            b = {"seeds": [a.only_seed], **{m: [b[m][i]] for m in ("recall_1e-3", "recall_0.1", "nn1")}}
        lines += [f"Untrained backbone (seed{'s' if len(b['seeds']) > 1 else ''} {', '.join(map(str, b['seeds']))}): "
                  f"recall @ FAR 1e-3 {fmt(b['recall_1e-3'], 2, 100)}%, @ FAR 0.1 {fmt(b['recall_0.1'], 2, 100)}%, "
                  f"1-NN {fmt(b['nn1'], 2, 100)}%.", ""]
    text = "\n".join(lines)
    if a.md:
        a.md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
