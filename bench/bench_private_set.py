"""Private set generation timings (issue 12). Run:

    OMP_WAIT_POLICY=PASSIVE python -m pytest bench/bench_private_set.py -s -p no:randomly \
        --benchmark-json=bench-private-set.json [--quick]

Throughput of generation, in noisy real gradients (releases) per second, at
spc = 1, 10, 20 on 2 threads, full Fashion-MNIST (n = 60,000; q = B/n), B = 256,
ConvNet width 32 / depth 3 (the CPU default; the paper's is 128), one
iteration of 10 outer loops x 1 batch loop with 10 inner steps. A release's
work is the per-example gradients of ~B real examples plus the synthetic
set's gradient and its double backward, so it grows with spc; the inner steps
are counted in the time too (they are part of generating). Ratios are
against spc = 1 measured in the same session. Each benchmark first checks the
release count against Schedule.releases. --quick: n = 6,000, width 8, 2 outer loops.

One short real run (generation, then classifiers trained on the synthetic
set, test accuracy on the 10k test set), sigma calibrated to epsilon = 10 at
delta = 1e-5 with Opacus' RDP accountant, one thread:

    OMP_WAIT_POLICY=PASSIVE python bench/bench_private_set.py --real-run OUT_DIR [--lr-images 0.1]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

DATA = Path(os.environ.get("CREPE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
THREADS = 2
RESULTS: dict[str, dict] = {}


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def fmnist(quick: bool):
    from crepe import data

    return data.load("fashion-mnist", data_dir=str(DATA / "fashion-mnist"), train_subset=6000 if quick else None)


@pytest.mark.parametrize("spc", [1, 10, 20])
def test_generation_throughput(benchmark, quick: bool, fmnist, spc: int) -> None:
    import torch

    from crepe.smallsets.private_set import Schedule, generate

    torch.set_num_threads(THREADS)
    sched = Schedule(
        spc=spc, iterations=1, outer_loops=2 if quick else 10, batch_size=256, inner_steps=2 if quick else 10,
        width=8 if quick else 32,
    )
    n = len(fmnist.y_train)
    steps, q = sched.releases(n)
    calls: list[tuple[float, float]] = []

    def go() -> None:
        calls.clear()
        generate(
            fmnist.x_train, fmnist.y_train, schedule=sched, sigma=1.0, noise_gen=_gen(1), sample_gen=_gen(2),
            init_gen=_gen(3), on_release=lambda s, r: calls.append((s, r)),
        )

    go()  # warm-up, and the check: one release per noisy gradient, at q = B / n
    assert calls == [(1.0, q)] * steps
    load_before = [round(x, 2) for x in os.getloadavg()]
    benchmark.pedantic(go, rounds=1 if not quick else 2, iterations=1)
    seconds = benchmark.stats.stats.min
    out = {
        "spc": spc, "n": n, "releases": steps, "seconds": seconds, "releases_per_s": steps / seconds,
        "threads": THREADS, "width": sched.width, "inner_steps": sched.inner_steps,
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    if 1 in RESULTS:
        out["throughput_over_spc1"] = out["releases_per_s"] / RESULTS[1]["releases_per_s"]
    RESULTS[spc] = out
    benchmark.extra_info.update(out)
    print("\n" + json.dumps(out))


def real_run(out_dir: Path, *, lr_images: float = 0.1) -> dict:
    """Full Fashion-MNIST, spc 10, a CPU schedule (~10 min on one thread), epsilon = 10."""
    import numpy as np
    import torch
    from opacus.accountants.utils import get_noise_multiplier

    from crepe import data
    from crepe.models import ConvNet, build_model
    from crepe.privacy.accounting import epsilon
    from crepe.privacy.ledger import Ledger, Release
    from crepe.smallsets.private_set import Schedule, generate, save_synthetic, train_on_synthetic

    torch.set_num_threads(1)
    d = data.load("fashion-mnist", data_dir=str(DATA / "fashion-mnist"))
    sched = Schedule(spc=10, iterations=30, outer_loops=10, batch_size=256, inner_steps=10, width=32, depth=3, lr_images=lr_images)
    n = len(d.y_train)
    steps, q = sched.releases(n)
    sigma = float(get_noise_multiplier(target_epsilon=10, target_delta=1e-5, sample_rate=q, steps=steps, accountant="rdp"))
    ledger = Ledger()

    def on_release(s: float, r: float) -> None:  # generate reports (sigma, q); the ledger merges identical ones
        ledger.record(Release("generate", s, r))

    t0 = time.perf_counter()
    images, labels = generate(
        d.x_train, d.y_train, schedule=sched, sigma=sigma, noise_gen=_gen(11), sample_gen=_gen(12), init_gen=_gen(13),
        on_release=on_release,
    )
    gen_s = time.perf_counter() - t0
    eps = epsilon(ledger, delta=1e-5, kinds=("generate",))
    mean, std = data.NORMALISATION["fashion-mnist"]
    save_synthetic(out_dir, images, labels, mean=mean, std=std)

    def test_acc(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xb).argmax(1) for xb in d.x_test.split(1000)])
        return float((pred == d.y_test).float().mean())

    accs: dict[str, list[float]] = {"cnn": [], "convnet": []}
    t1 = time.perf_counter()
    for seed in range(3):
        torch.manual_seed(seed)
        cnn = train_on_synthetic(build_model("cnn"), images, labels, epochs=300, lr=0.01, generator=_gen(100 + seed))
        accs["cnn"].append(test_acc(cnn))
        conv = ConvNet(sched.width, sched.depth, 10, generator=_gen(200 + seed))
        accs["convnet"].append(test_acc(train_on_synthetic(conv, images, labels, epochs=300, lr=0.01, generator=_gen(300 + seed))))
    train_s = time.perf_counter() - t1
    out = {
        "schedule": {k: getattr(sched, k) for k in sched.__dataclass_fields__}, "n": n, "releases": steps, "q": q,
        "sigma": sigma, "eps_rdp": eps, "delta": 1e-5, "ledger": ledger.to_list(), "threads": 1,
        "generation_s": gen_s, "classifier_training_s": train_s,
        "test_acc": {k: {"each": v, "mean": float(np.mean(v))} for k, v in accs.items()},
        "classifier_recipe": "300 epochs, SGD lr 0.01 momentum 0.9 wd 5e-4, lr x0.1 after epoch 151, batch 256",
    }
    (Path(out_dir) / "real_run.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (3, 5) or sys.argv[1] != "--real-run" or (len(sys.argv) == 5 and sys.argv[3] != "--lr-images"):
        sys.exit("usage: python bench/bench_private_set.py --real-run OUT_DIR [--lr-images X (default 0.1)]")
    print(json.dumps(real_run(Path(sys.argv[2]), lr_images=float(sys.argv[4]) if len(sys.argv) == 5 else 0.1), indent=1))
