"""`ruff check` passes with the configuration in pyproject.toml ([tool.ruff]); the code is not reformatted."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> str:
    script = Path(sys.executable).with_name("ruff")
    found = str(script) if script.exists() else shutil.which("ruff")
    if not found:
        pytest.skip("ruff is in the dev extra: pip install -e '.[dev]'")
    return found


def test_ruff_check_passes() -> None:
    result = subprocess.run([_ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
