"""`crepe report` on user-level runs (crepe.study.users; DESIGN.md section 11, issue 24): the
configurations at equal user-level ε per population, the ε per user of example-level runs matched to
a target, means and std over seeds, the verdict on recall and on test accuracy, and that a report of
runs without users is byte-identical to what it was before (tests/golden/report/).

Synthetic run folders, written here in `crepe train`'s format (tests/test_report.py's write_run);
the expected Welch intervals are computed with scipy.stats, independently of the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from golden.report_examples import FILES, GOLDEN, reports


def test_reports_of_runs_without_users_are_unchanged(tmp_path: Path) -> None:
    texts = reports(tmp_path)
    for name, files in texts.items():
        assert sorted(files) == sorted(f.name for f in (GOLDEN / name).iterdir()), name
        for file, text in files.items():
            assert file in FILES
            assert text == (GOLDEN / name / file).read_text(), (
                f"{name}/{file} differs from tests/golden/report/{name}/{file}; if the change is intended, "
                "regenerate: PYTHONPATH=src:tests python tests/golden/report_examples.py")
