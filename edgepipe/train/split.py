"""A validation split carved out of *train*, so the images that report results never choose a model.

Membership is a pure function of the image's `<synset>/<file name>` (a SHA-1 hash below `fraction`), not
of the file list: adding or losing images elsewhere never moves an image between the two sides, and the
training loop and `edgepipe holdout` agree without sharing any state.

`write_holdout` materialises the split as a labelled folder that `edgepipe eval` reads:
- as symbolic links to the originals (the same q~75 JPEGs as val), or
- `washed=SIZE`: area-downscaled to SIZE x SIZE and saved as PNG, which washes the JPEG block grid out,
  the second validation set the training must also win on (a gain there is not "undoing q75").
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from edgepipe.core.datasets import LabelledImage, list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)


def _key(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def is_holdout(path: Path, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.sha1(_key(path).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def training_items(items: list[LabelledImage], fraction: float) -> list[LabelledImage]:
    return [i for i in items if not is_holdout(i.path, fraction)]


def holdout_items(items: list[LabelledImage], fraction: float) -> list[LabelledImage]:
    return [i for i in items if is_holdout(i.path, fraction)]


def write_holdout(root: str | Path, out: str | Path, fraction: float, washed: int | None = None) -> int:
    """Write the hold-out of ROOT as OUT/<synset>/...; returns how many images were written."""
    import cv2

    from edgepipe.train.data import center_view

    if not 0 < fraction < 1:
        raise EdgepipeError(f"--fraction must be between 0 and 1, got {fraction}")
    if washed is not None and washed < 8:
        raise EdgepipeError(f"--washed must be a side of at least 8 pixels, got {washed}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgepipeError(f"{out} exists and is a file or not empty: choose a new folder")
    chosen = holdout_items(list_labelled_images(root), fraction)
    if not chosen:
        raise EdgepipeError(f"the {fraction:.1%} hold-out of {root} is empty: raise --fraction")
    written = 0
    for item in chosen:
        folder = out / item.path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        if washed is None:
            os.symlink(item.path.resolve(), folder / item.path.name)
            written += 1
            continue
        image = read_rgb(item.path)
        if image is None:
            log.warning("skipping unreadable image %s", item.path)
            continue
        small = center_view(image, washed) if min(image.shape[:2]) > washed else image
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(small[..., ::-1]))
        if not ok:
            raise EdgepipeError(f"could not write PNG for {item.path}")
        (folder / (item.path.stem + ".png")).write_bytes(buf.tobytes())
        written += 1
    return written
