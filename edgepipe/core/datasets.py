"""Labelled image folders in ImageNet layout (ROOT/<synset>/*.JPEG), shared by the folder source,
training and evaluation."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.labels import synset_to_index

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIEW_MARK = "@"  # <stem>@<view>.png: one of several views of one source image (edgepipe holdout --washed A,B)


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int  # ImageNet-1k index


def list_labelled_images(root: str | Path) -> list[LabelledImage]:
    """Every image under ROOT/<synset>/, sorted, with its ImageNet index. Clear errors for a missing,
    empty or unlabelled folder; folders that are not synsets are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise EdgepipeError(f"data folder not found: {root}")
    index = synset_to_index()
    items: list[LabelledImage] = []
    unknown = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name not in index:
            unknown.append(sub.name)
            continue
        items += [LabelledImage(f, index[sub.name]) for f in sorted(sub.iterdir())
                  if f.suffix.lower() in IMAGE_SUFFIXES]
    if unknown:
        log.warning("skipped %d folder(s) not named by an ImageNet synset: %s", len(unknown), ", ".join(unknown[:5]))
    if not items:
        raise EdgepipeError(
            f"no labelled images in {root}: expected ImageNet layout ROOT/<synset, e.g. n01440764>/*.JPEG"
        )
    return items


def source_of(path: str | Path) -> str:
    """`<synset>/<stem>` of the image a file shows: views written as `<stem>@<size>.<ext>` share their source's,
    so a bootstrap over images can draw a source with all its views (they are not independent samples). Only a
    number after the mark makes a view: a user's `photo@home.jpg` is its own photo."""
    path = Path(path)
    stem, mark, view = path.stem.rpartition(VIEW_MARK)
    return f"{path.parent.name}/{stem if mark and stem and view.isdigit() else path.stem}"


def read_rgb(path: str | Path) -> np.ndarray | None:
    """uint8 RGB (H, W, 3), greyscale and RGBA converted; None when the file cannot be decoded."""
    import cv2

    data = np.fromfile(str(path), np.uint8) if Path(path).is_file() else None
    if data is None or data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # IMREAD_COLOR makes greyscale 3-channel
    if image is None:
        return None
    return np.ascontiguousarray(image[..., ::-1])
