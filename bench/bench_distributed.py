"""DP-SGD steps per second with 1 and 2 torch.distributed ranks on this machine (issue 25), same run:

    OMP_WAIT_POLICY=PASSIVE python bench/bench_distributed.py [--pairs 3] [--out bench-distributed.json]

One `crepe train` configuration (Fashion-MNIST, 20,000 training examples, the CNN, B = 512, sigma 1,
one epoch of 39 steps, reproducible noise) run three ways, in turn, `--pairs` times (so that the
machine's drift falls on all three alike):
  1 rank x 2 threads   python -m crepe train --threads 2
  2 ranks x 1 thread   torchrun --nproc-per-node 2 -m crepe train   (OMP_NUM_THREADS=1)
  1 rank x 1 thread    python -m crepe train --threads 1
Each figure is the epoch's training time from metrics.jsonl (train_time_s: the steps only, not
start-up, data loading or evaluation); steps/s = 39 / train_time_s. The runs are the same run (their
ledgers are compared: equal), so the figures compare the mechanics, not different work. The machine
load (os.getloadavg) is recorded before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(os.environ.get("CREPE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ARGS = ["train", "--dataset", "fashion-mnist", "--data-dir", str(DATA), "--train-subset", "20000", "--test-subset",
        "100", "--model", "cnn", "--method", "full", "--batch-size", "512", "--sigma", "1", "--lr", "1",
        "--epochs", "1", "--noise", "reproducible"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
            "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0", "-m", "crepe"]
WAYS = {
    "1 rank x 2 threads": ([sys.executable, "-m", "crepe"], ["--threads", "2"], {}),
    "2 ranks x 1 thread": (TORCHRUN, [], {"OMP_NUM_THREADS": "1"}),
    "1 rank x 1 thread": ([sys.executable, "-m", "crepe"], ["--threads", "1"], {}),
}


def once(way: str, out: Path) -> dict:
    launcher, extra, env = WAYS[way]
    load = os.getloadavg()[0]
    cmd = [*launcher, *ARGS, "--out", str(out), *extra]
    done = subprocess.run(cmd, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GLOO_SOCKET_IFNAME": "lo", **env},
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{way} failed:\n{done.stderr[-3000:]}")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    ledger = json.loads((out / "summary.json").read_text())["ledger"]
    return {"way": way, "steps": row["steps"], "train_time_s": row["train_time_s"],
            "steps_per_s": row["steps"] / row["train_time_s"], "load": load, "ledger": ledger}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-distributed.json"))
    ns = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ns.pairs):
            for way in WAYS:
                rows.append(once(way, Path(tmp) / f"{i}-{way.replace(' ', '')}"))
                print(f"{way}: {rows[-1]['steps_per_s']:.2f} steps/s (load {rows[-1]['load']:.1f})", flush=True)
    assert all(r["ledger"] == rows[0]["ledger"] for r in rows), "the three ways ran different releases"
    summary = {way: statistics.median(r["steps_per_s"] for r in rows if r["way"] == way) for way in WAYS}
    base = summary["1 rank x 2 threads"]
    for way, v in summary.items():
        print(f"median {way}: {v:.2f} steps/s ({v / base:.2f}x 1 rank x 2 threads)")
    ns.out.write_text(json.dumps({"rows": [{k: v for k, v in r.items() if k != "ledger"} for r in rows],
                                  "median_steps_per_s": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
