"""The import contract of pyproject.toml ([tool.importlinter]) holds: imports run one way, down the layers.

`lint-imports` reads the source (it imports nothing), so this runs in well under a second. A failure names
the import that goes the wrong way; move the code down (or the import up), never add an exception lightly.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("importlinter") is None,
                                reason="import-linter is in the dev extra: pip install -e '.[dev]'")


def _lint_imports() -> str:
    script = Path(sys.executable).with_name("lint-imports")
    found = str(script) if script.exists() else shutil.which("lint-imports")
    if not found:
        pytest.skip("import-linter is installed but its lint-imports command is not on PATH")
    return found


def test_imports_follow_the_layers() -> None:
    result = subprocess.run([_lint_imports(), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
