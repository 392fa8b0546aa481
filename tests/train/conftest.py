"""Fixtures for the training tests: real images and one frozen recognizer per session."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb


@pytest.fixture(scope="session")
def real_frames(small_val_folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """12 real Imagenette val images (uint8 NHWC, 224 x 224) and their ImageNet labels."""
    items = list_labelled_images(small_val_folder)
    return np.stack([read_rgb(i.path) for i in items]), np.array([i.label for i in items])


@pytest.fixture(scope="session")
def recognizer():
    from edgepipe.recognition import build_recognizer

    return build_recognizer("efficientnet-lite0")
