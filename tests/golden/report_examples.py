"""Example-level sweeps whose `crepe report` outputs are frozen under tests/golden/report/ (written
by the code before user-level reports existed): a report of runs without users must stay
byte-identical (tests/test_report_users.py). Regenerate only for an intended change of those outputs:

    PYTHONPATH=src:tests python tests/golden/report_examples.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "report"
FILES = ("results.md", "results.csv", "verdict.md", "verdict.csv", "configs_at_eps.csv")


def write_sweeps(root: Path) -> dict[str, Path]:
    """name -> sweep folder: a σ sweep with non-DP rows (test_report's sweep_dir), a target-ε grid
    (test_report's write_grid) and the small-set study at equal ε (test_study_verdict's write_study)."""
    from test_report import write_grid, write_run
    from test_study_verdict import write_study

    sigma = root / "sigma"
    for seed, jitter in ((0, 0.0), (1, 0.02)):
        for s in (1.0, 3.0):
            write_run(sigma, f"full_s{s:g}_{seed}", method="full", sigma=s, seed=seed, test_acc=0.80 + jitter, total=20.0)
            write_run(sigma, f"craig_s{s:g}_{seed}", method="craig", sigma=s, seed=seed, test_acc=0.70 + jitter, total=5.0)
            write_run(sigma, f"random_s{s:g}_{seed}", method="random", sigma=s, seed=seed, test_acc=0.65 + jitter, total=4.0)
        write_run(sigma, f"craig_nodp_{seed}", method="craig", dp=False, seed=seed, test_acc=0.85 + jitter, total=3.0)
        write_run(sigma, f"full_nodp_{seed}", method="full", dp=False, seed=seed, test_acc=0.90 + jitter, total=12.0)
    return {"sigma": sigma, "eps": write_grid(root / "eps", 3, "eps"), "study": write_study(root / "study")}


def reports(root: Path) -> dict[str, dict[str, str]]:
    """name -> file name -> text of each sweep's report (no figures)."""
    from crepe.study import report

    out: dict[str, dict[str, str]] = {}
    for name, sweep in write_sweeps(root).items():
        paths = report.report(sweep, root / f"{name}-report", plots=False)
        out[name] = {p.name: p.read_text() for p in paths.values()}
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory() as tmp:
        for name, texts in reports(Path(tmp)).items():
            (GOLDEN / name).mkdir(parents=True, exist_ok=True)
            for file, text in texts.items():
                (GOLDEN / name / file).write_text(text)
                print(f"wrote {GOLDEN / name / file}")
