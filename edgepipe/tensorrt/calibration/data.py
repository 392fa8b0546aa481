"""Calibration batches from real images, preprocessed exactly as the capture loop preprocesses frames.

The capture loop shapes each frame with the source's `FrameShaper(size, crop=True)` (centre-crop to the
aspect ratio, then INTER_AREA resize) and hands it to the engine, which converts it with
`to_model_input` (uint8 NHWC RGB -> float32 NCHW in [0, 1]). Calibration goes through the very same two
functions, so the activation ranges TensorRT measures are the ones it will see at run time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgepipe.core.datasets import IMAGE_SUFFIXES, read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.base import to_model_input

log = logging.getLogger(__name__)

DEFAULT_SIZE = (224, 224)  # width, height (as `capture --size`)
DEFAULT_BATCH = 8
DEFAULT_MAX_IMAGES = 512


def list_images(root: str | Path) -> list[Path]:
    """Every image under ROOT, sorted: an ImageNet-layout labelled folder or a flat one (any depth)."""
    root = Path(root)
    if not root.is_dir():
        raise EdgepipeError(f"calibration data folder not found: {root}")
    # rglob follows the folder tree but not symlinked folders; symlinked files (as in test fixtures) are fine.
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise EdgepipeError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def spread(paths: list[Path], limit: int | None) -> list[Path]:
    """At most `limit` paths, evenly spaced over the sorted list, so every class folder contributes."""
    if limit is None or limit >= len(paths):
        return list(paths)
    if limit < 1:
        raise EdgepipeError(f"the number of calibration images must be at least 1, got {limit}")
    index = np.linspace(0, len(paths) - 1, limit).round().astype(int)
    return [paths[i] for i in index]


def shaper(size: tuple[int, int]):
    """The capture loop's frame shaper for `size` (width, height) with centre-crop."""
    from edgepipe.media.sources import FrameShaper

    return FrameShaper(size, crop=True)


@dataclass
class CalibrationBatches:
    """Fixed-size float32 NCHW batches (TensorRT's calibrator needs every batch the same size).

    Images that cannot be decoded are skipped with a warning; a trailing partial batch is dropped.
    Iterating again starts over (the batches are made lazily, one at a time, to bound memory).
    """

    root: Path
    size: tuple[int, int] = DEFAULT_SIZE
    batch_size: int = DEFAULT_BATCH
    max_images: int | None = DEFAULT_MAX_IMAGES

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.batch_size < 1:
            raise EdgepipeError(f"calibration batch size must be at least 1, got {self.batch_size}")
        w, h = self.size
        if w % 2 or h % 2 or w < 16 or h < 16:
            # the capture loop's shaper makes sizes even; an odd size here would silently differ from it
            raise EdgepipeError(f"calibration size must be even and at least 16x16, got {w}x{h}")
        self.paths = spread(list_images(self.root), self.max_images)
        if len(self.paths) < self.batch_size:
            raise EdgepipeError(
                f"{len(self.paths)} image(s) in {self.root} is fewer than one calibration batch of {self.batch_size}"
            )
        self.skipped = 0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """NCHW shape of every batch."""
        w, h = self.size
        return self.batch_size, 3, h, w

    @property
    def max_batches(self) -> int:
        return len(self.paths) // self.batch_size

    def frames(self) -> Iterator[np.ndarray]:
        """uint8 (H, W, 3) RGB frames as the capture loop would hand them to the engine."""
        shape = shaper(self.size)
        for path in self.paths:
            image = read_rgb(path)
            if image is None:
                self.skipped += 1
                log.warning("skipped unreadable calibration image %s", path)
                continue
            yield shape(image)

    def __iter__(self) -> Iterator[np.ndarray]:
        self.skipped = 0
        n = self.batch_size
        w, h = self.size
        frames = np.empty((n, h, w, 3), np.uint8)
        filled = 0
        for frame in self.frames():
            frames[filled] = frame
            filled += 1
            if filled == n:
                yield to_model_input(frames)  # a fresh array per batch: callers may keep it
                filled = 0
        if filled:
            log.debug("dropped a partial calibration batch of %d image(s)", filled)

    def array(self) -> np.ndarray:
        """All batches stacked as one (B*N, 3, H, W) array (for ModelOpt, which wants the data up front)."""
        batches = list(self)
        if not batches:
            raise EdgepipeError(f"no readable calibration images in {self.root}")
        return np.concatenate(batches)

    def describe(self) -> dict:
        return {"data": str(self.root), "images": len(self.paths), "batch_size": self.batch_size,
                "shape_nchw": list(self.shape), "preprocessing": "FrameShaper(crop=True) + to_model_input"}
