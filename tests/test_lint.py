"""The code base stays ruff clean and mypy clean (the rules of both live in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_ruff_reports_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_reports_nothing() -> None:
    # From the repository, so that [tool.mypy] (files = publisher) applies; mypy's cache in
    # .mypy_cache/ there keeps a second run to seconds.
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
