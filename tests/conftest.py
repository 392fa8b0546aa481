"""Shared fixtures: real data from ../shared/data (or $EDGEPIPE_SHARED_DATA).

tests/ is on sys.path while the suite runs (rootdir conftest, no __init__.py files), so no folder here may
be named like an importable package: a tests/tensorrt/ would make `import tensorrt` succeed as a namespace
package and every "TensorRT is not installed" test would skip. The tests of edgepipe/tensorrt/ live in
tests/tensorrt_tools/ for that reason.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def keep_signal_handlers():
    """capture, monitor and the other commands install SIGINT/SIGTERM handlers; give pytest its own back.
    Use with `pytestmark = pytest.mark.usefixtures("keep_signal_handlers")`."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"shared data not found at {path} (set EDGEPIPE_SHARED_DATA)"
        if os.environ.get("CI"):  # CI lays ../shared beside the clone: missing data there is a failure
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def imagenette_val() -> Path:
    return _require(SHARED_DATA / "imagenette" / "val")


@pytest.fixture(scope="session")
def imagenette_train() -> Path:
    return _require(SHARED_DATA / "imagenette" / "train")


@pytest.fixture(scope="session")
def video_clip() -> Path:
    return _require(SHARED_DATA / "video" / "car-detection.mp4")


@pytest.fixture(scope="session")
def small_val_folder(tmp_path_factory, imagenette_val) -> Path:
    """A labelled folder of 4 real images from each of 3 classes (symlinks, no copies)."""
    root = tmp_path_factory.mktemp("small_val")
    for synset in sorted(os.listdir(imagenette_val))[:3]:
        (root / synset).mkdir()
        for name in sorted(os.listdir(imagenette_val / synset))[:4]:
            (root / synset / name).symlink_to(imagenette_val / synset / name)
    return root
