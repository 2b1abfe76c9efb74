"""`crepe train --dry-run` wall time for every `crepe train` command in README.md (target < 5 s).

    OMP_WAIT_POLICY=PASSIVE python bench/bench_dry_run.py [--rounds 3] [--data-dir ../shared/data] \\
        [--against OTHER/src]

Each command is read from README.md's code blocks (continuation lines joined; `--out DIR` dropped,
`--dry-run` added; `--resume` and `--help` lines skipped; `../shared/data` replaced by --data-dir)
and run as `python -m crepe train ...` in a fresh process, `--rounds` times; the median wall
time is reported, with the load average. With `--against`, the same commands also run from
another checkout's `src` folder (e.g. `git worktree add /tmp/crepe-old <commit>`, with the
compiled `_core*.so` copied into its src/crepe), alternating with this one round by round so
that the machine's drift hits both alike; both must print the same plan (sigma, schedule,
planned epsilon) or the script fails. The last line is the outcome: target met, or MISSED
(exit status 1).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 5.0


def readme_commands(readme: Path, data_dir: str) -> list[list[str]]:
    """The distinct `crepe train` argument lists of README.md's code blocks, as dry runs."""
    blocks = readme.read_text().split("```")[1::2]  # inside the fences only
    text = re.sub(r"\\\n\s*", " ", "\n".join(blocks))  # join continuation lines
    out: list[list[str]] = []
    for line in text.splitlines():
        m = re.search(r"crepe train (--.*)", line)
        if not m or "--resume" in line or "--help" in line:
            continue
        args = shlex.split(m.group(1).split("#")[0], posix=True)
        args = [a for i, a in enumerate(args) if a != "--out" and (i == 0 or args[i - 1] != "--out")]
        args = ["--dry-run", *(data_dir if a == "../shared/data" else a for a in args if a != "--dry-run")]
        if args not in out:
            out.append(args)
    return out


def dry_run(src: Path, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "crepe", "train", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"crepe train {shlex.join(args)} from {src} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, proc.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--against", type=Path, help="another checkout's src folder, timed alternately")
    a = p.parse_args()
    builds = {"this": REPO / "src", **({"against": a.against.resolve()} if a.against else {})}
    commands = readme_commands(REPO / "README.md", a.data_dir)
    print(f"{len(commands)} README commands, {a.rounds} rounds, target < {TARGET_S:g} s, "
          f"load {os.getloadavg()[0]:.2f} at start")
    slowest = 0.0
    for args in commands:
        times: dict[str, list[float]] = {name: [] for name in builds}
        plans: dict[str, str] = {}
        for _ in range(a.rounds):
            for name, src in builds.items():
                wall, stdout = dry_run(src, args)
                times[name].append(wall)
                plans.setdefault(name, stdout)
        if len(set(plans.values())) > 1:
            raise SystemExit(f"the builds print different plans for {shlex.join(args)}:\n"
                             + "\n".join(f"[{n}]\n{o}" for n, o in plans.items()))
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        slowest = max(slowest, medians["this"])
        print(f"\ncrepe train {shlex.join(args)}")
        print("  " + plans["this"].splitlines()[1])
        for name, ts in times.items():
            ratio = f"  (this build is {medians[name] / medians['this']:.2f}x as fast)" if name != "this" else ""
            print(f"  {name:8s} median {medians[name]:.2f} s of {', '.join(f'{t:.2f}' for t in ts)}{ratio}")
    print(f"\nload {os.getloadavg()[0]:.2f} at end")
    if slowest < TARGET_S:
        print(f"OUTCOME: target met: every README dry run's median is under {TARGET_S:g} s (slowest {slowest:.2f} s)")
        return 0
    print(f"OUTCOME: MISSED: the slowest README dry run's median is {slowest:.2f} s, target < {TARGET_S:g} s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
