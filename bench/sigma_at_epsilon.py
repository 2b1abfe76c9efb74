"""The noise each training set must carry to end at the same epsilon (no training; seconds).

    python bench/sigma_at_epsilon.py [--n 20000] [--epochs 15] [--fraction 0.1] [--accountant pld] [--data-dir ../shared/data]

For each target epsilon and configuration: the solved sigma (and sigma_sel) of
`crepe train --target-epsilon`, and the noise std of one averaged step relative
to the clip norm, sigma / B, and over the whole run, sigma / (B sqrt(T)) (T
optimiser steps). The last column is the one that compares training sets at
equal compute: it is what the sum of T noisy averaged gradients carries. It
explains docs/results.md's equal-epsilon study before any model is trained.
Set sizes come from the labels of the first n Fashion-MNIST training images,
as `crepe train --train-subset n` computes them.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from crepe import data
from crepe.config import TrainConfig
from crepe.privacy.calibration import Unreachable
from crepe.training.plan import Plan, class_counts

CONFIGS = [  # (label, method, batch size, select_every, extra settings)
    ("full data", "full", 2048, 5, {}),
    ("random, Poisson, 3 draws", "random", 2048, 5, {}),
    ("random, Poisson, 1 draw", "random", 2048, 15, {}),
    ("random, Poisson, 3 draws, B 256", "random", 256, 5, {}),
    ("random, fixed-size, 3 draws", "random", 2048, 5, {"random_draw": "fixed"}),
    ("craig, 3 rounds, sigma_sel = sigma", "craig", 2048, 5, {}),
    ("craig, 1 round, sigma_sel = sigma", "craig", 2048, 15, {}),
    ("craig, 3 rounds, select share 0.1", "craig", 2048, 5, {"select_share": 0.1}),
    ("craig, 1 round, select share 0.1", "craig", 2048, 15, {"select_share": 0.1}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--targets", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    p.add_argument("--accountant", default="pld", choices=("pld", "rdp", "prv"))
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = p.parse_args()
    counts = class_counts(data.load("fashion-mnist", data_dir=args.data_dir, train_subset=args.n).y_train)
    print("| target ε | training set (equal steps) | σ | σ_sel | steps T | σ/B | σ/(B√T) |")
    print("|---|---|---|---|---|---|---|")
    for target in args.targets:
        for label, method, batch, every, extra in CONFIGS:
            cfg = TrainConfig(method=method, batch_size=batch, epochs=args.epochs, select_every=every,
                              fraction=args.fraction, target_epsilon=target, accountant=args.accountant,
                              compute="epochs" if method == "full" else "steps", **extra).resolve()
            try:
                plan = Plan.of(cfg, counts=counts)  # the public |S| from the class counts, sigma solved
            except Unreachable as e:
                print(f"| {target:g} | {label} | unreachable (smallest ε {e.floor:.3g}) | | | | |")
                continue
            c = plan.cfg
            steps = sum(r.steps for r in plan.ledger() if r.kind == "train")
            sel = f"{c.select_sigma:.2f}" if method == "craig" else "—"
            print(f"| {target:g} | {label} | {c.sigma:.2f} | {sel} | {steps} | {c.sigma / batch:.2e} | "
                  f"{c.sigma / (batch * math.sqrt(steps)):.2e} |")


if __name__ == "__main__":
    main()
