"""Static checks CI runs through `make test`: the import contract and the linter (pyproject.toml).

* `lint-imports` ([tool.importlinter]): imports run one way, down the layers. It reads the source (it imports
  nothing), so it takes well under a second. A failure names the import that goes the wrong way; move the code
  down (or the import up), never add an exception lightly.
* `ruff check` ([tool.ruff]): the code is linted, not reformatted.
Both tools are in the dev extra; where one is missing its test skips and says how to install it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """The console script next to this interpreter (the venv's), else on PATH."""
    script = Path(sys.executable).with_name(name)
    found = str(script) if script.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is in the dev extra: pip install -e '.[dev]'")
    return found


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_imports_follow_the_layers() -> None:
    result = _run(_tool("lint-imports"), "--no-cache", "--no-logo", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_ruff_check_passes() -> None:
    result = _run(_tool("ruff"), "check", "--no-cache", ".", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
