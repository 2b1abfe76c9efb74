"""The sigma of an EXAMPLE-level DP-SGD run whose group-privacy epsilon per USER hits a target.

    python bench/sigma_user_eps.py --targets 3 8 --batch-size 4096 --epochs 20 \
        [--user-count 1000] [--held-out-classes 3] [--data-dir ../shared/data]

`crepe train --target-epsilon` calibrates an example-level run to its
example-level epsilon. To compare it with user-level runs at equal *user-level*
epsilon (issue 24's study), sigma must instead be solved against the
group-privacy epsilon of its ledger for a user of at most k examples
(`crepe.privacy.group.user_epsilon`, docs/privacy.md section 10, PLD of the
k-fold Binomial mixture). crepe has no option for that, so this script does the
calibration OUTSIDE crepe: it loads the same training split as `crepe train`
(classes held out, synthetic writers formed: n and the public k = 2 ceil(n/U)),
builds the run's own ledger through `crepe.training.plan.Plan` for a given
sigma, and bisects sigma until the user-level epsilon is in [0.99 E, E]. The
printed sigma is then passed to `crepe train --sigma`; the run itself prints
the same user-level epsilon ("per user of at most k examples") as a check.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from crepe.config import TrainConfig
from crepe.privacy.accounting import epsilon
from crepe.privacy.group import user_epsilon
from crepe.training.inputs import load_data
from crepe.training.plan import Plan, class_counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=float, nargs="+", default=[3.0, 8.0])
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--user-count", type=int, default=1000)
    p.add_argument("--held-out-classes", type=int, default=3)
    p.add_argument("--start", type=float, default=16.0, help="first sigma tried (bisection bracket [start/2, start])")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", default="pld", choices=("pld", "rdp"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    a = p.parse_args()

    base = dict(dataset=a.dataset, data_dir=a.data_dir, method="full", users="synthetic", user_count=a.user_count,
                held_out_classes=a.held_out_classes, batch_size=a.batch_size, epochs=a.epochs, delta=a.delta,
                accountant=a.accountant)
    ds = load_data(TrainConfig(**base, sigma=1.0).resolve())  # type: ignore[arg-type]
    counts, k = class_counts(ds.y_train), int(ds.max_per_user)
    print(f"n = {sum(counts)} training examples, U = {a.user_count}, public k = {k} examples per user, "
          f"B = {a.batch_size}, {a.epochs} epochs, delta {a.delta}, {a.accountant}")

    def eps_at(sigma: float) -> tuple[float, float, int, float]:
        plan = Plan.of(TrainConfig(**base, sigma=sigma).resolve(), counts=counts)  # type: ignore[arg-type]
        ledger = plan.ledger()
        steps = sum(r.steps for r in ledger)
        return (user_epsilon(ledger, k=k, delta=a.delta, accountant=a.accountant),
                epsilon(ledger, delta=a.delta, accountant=a.accountant), steps, plan.sample_rate)

    print("| target user ε | σ (example-level DP-SGD) | user ε (k) | example ε | steps T | q | solve s |")
    print("|---|---|---|---|---|---|---|")
    for target in a.targets:
        t0 = time.perf_counter()
        lo, hi = a.start / 2, a.start  # a small sigma makes the k-fold mixture's PLD grid huge: start high
        while eps_at(lo)[0] < target:
            lo, hi = lo / 2, lo
        while eps_at(hi)[0] > target:  # grow until the user-level epsilon is below the target
            lo, hi = hi, hi * 2
        while True:  # bisection on log sigma; stop inside [0.99 E, E]
            mid = math.sqrt(lo * hi)
            e = eps_at(mid)[0]
            if 0.99 * target <= e <= target:
                hi = mid
                break
            if e > target:
                lo = mid
            else:
                hi = mid
        sigma = round(hi, 4)
        while eps_at(sigma)[0] > target:  # rounding must not cross the target
            sigma = round(sigma + 1e-4, 4)
        eu, ee, steps, q = eps_at(sigma)
        print(f"| {target:g} | {sigma:.4f} | {eu:.3f} (k = {k}) | {ee:.4f} | {steps} | {q:.5f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
