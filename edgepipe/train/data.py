"""Training and validation batches from labelled image folders (ImageNet layout).

Batches are a pure function of (seed, epoch, batch index): the epoch's order is a permutation seeded by
(seed, epoch) and each batch's crops and flips by (seed, epoch, batch). So `--resume` continues exactly
where a run stopped, and two runs with the same seed see the same pixels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe.core.datasets import LabelledImage, list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)


def _fit_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Upscale so the short side is at least `size` (only images smaller than a crop need it)."""
    import cv2

    h, w = image.shape[:2]
    if min(h, w) >= size:
        return image
    scale = size / min(h, w)
    return cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                      interpolation=cv2.INTER_LINEAR)


def center_view(image: np.ndarray, size: int) -> np.ndarray:
    """Short side resized to `size` (when it differs), then the central size x size square."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    if min(h, w) != size:
        scale = size / min(h, w)
        image = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def area_rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Downscale by `scale` (< 1) with an area filter: it averages whole source pixels, so the 8x8 block
    grid and ringing of an earlier JPEG are washed out instead of being kept at a new pitch."""
    import cv2

    if scale >= 1.0:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


@dataclass
class CropBatches:
    """Random crops (native pixel scale: the ED runs at native scale in the pipeline) + horizontal flips.

    `rescale_min` < 1 draws a scale in [rescale_min, rescale_max] per crop and area-downscales the image
    first: every Imagenette image is a q~75 JPEG, and without this an ED can learn to undo that one codec's
    artefacts, a gain that vanishes on any other source. A `rescale_max` under 1 leaves no crop at the
    JPEG's own grid. `holdout` > 0 leaves out the images that
    `edgepipe.train.split` reserves for choosing models."""

    root: str | Path
    crop: int = 128
    batch_size: int = 16
    seed: int = 0
    rescale_min: float = 1.0
    holdout: float = 0.0
    rescale_max: float = 1.0
    items: list[LabelledImage] = field(init=False)
    unreadable: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        if self.crop < 8 or self.batch_size < 1:
            raise EdgepipeError(f"crop must be >= 8 and batch size >= 1 (got {self.crop}, {self.batch_size})")
        if not 0.1 <= self.rescale_min <= 1.0:
            raise EdgepipeError(f"--rescale-min must be in 0.1..1, got {self.rescale_min}")
        if not self.rescale_min <= self.rescale_max <= 1.0:
            raise EdgepipeError(f"--rescale-max must be in --rescale-min..1 ({self.rescale_min}..1), "
                                f"got {self.rescale_max}")
        from edgepipe.train.split import training_items

        self.items = training_items(list_labelled_images(self.root), self.holdout)
        if not self.items:
            raise EdgepipeError(f"no training images left in {self.root} after the {self.holdout:.0%} hold-out")

    def __len__(self) -> int:
        """Batches per epoch (the last, partial batch is dropped so every step has the same size)."""
        return max(1, len(self.items) // self.batch_size)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 crops (n, crop, crop, 3), int64 labels (n,)); n < batch_size only when images were unreadable."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
        rng = np.random.default_rng([self.seed, epoch, index])
        chosen = order[index * self.batch_size:(index + 1) * self.batch_size]
        crops, labels = [], []
        for i in chosen:
            item = self.items[int(i)]
            # rng draws happen even for unreadable files, so the other crops do not shift
            dy, dx, flip = rng.random(), rng.random(), rng.random() < 0.5
            scale = 1.0 if self.rescale_min >= 1.0 else float(rng.uniform(self.rescale_min, self.rescale_max))
            image = read_rgb(item.path)
            if image is None:
                if str(item.path) not in self.unreadable:
                    log.warning("skipping unreadable image %s", item.path)
                self.unreadable.add(str(item.path))
                continue
            image = _fit_short_side(area_rescale(image, scale), self.crop)
            h, w = image.shape[:2]
            top, left = int(dy * (h - self.crop + 1)), int(dx * (w - self.crop + 1))
            c = image[top:top + self.crop, left:left + self.crop]
            crops.append(c[:, ::-1] if flip else c)
            labels.append(item.label)
        if not crops:
            return np.zeros((0, self.crop, self.crop, 3), np.uint8), np.zeros((0,), np.int64)
        return np.ascontiguousarray(np.stack(crops)), np.asarray(labels, np.int64)


def validation_set(root: str | Path, limit: int, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """A fixed, class-balanced-in-expectation subset: (uint8 frames (n, size, size, 3), labels, unreadable count).

    The subset is a seeded draw from the sorted file list, so every run (and every model) is judged on the
    same images."""
    items = list_labelled_images(root)
    if limit and limit < len(items):
        pick = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
        items = [items[int(i)] for i in pick]
    frames, labels, bad = [], [], 0
    for item in items:
        image = read_rgb(item.path)
        if image is None:
            log.warning("skipping unreadable validation image %s", item.path)
            bad += 1
            continue
        frames.append(center_view(image, size))
        labels.append(item.label)
    if not frames:
        raise EdgepipeError(f"no readable validation images in {root}")
    return np.stack(frames), np.asarray(labels, np.int64), bad
