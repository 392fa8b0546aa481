"""A validation split carved out of *train*, so the images that report results never choose a model.

Membership is a pure function of the image's `<synset>/<file name>` (a SHA-1 hash below `fraction`), not
of the file list: adding or losing images elsewhere never moves an image between the two sides, and the
training loop and `edgepipe holdout` agree without sharing any state.

`write_holdout` materialises the split as a labelled folder that `edgepipe eval` reads:
- as symbolic links to the originals (the same q~75 JPEGs as val), or
- `washed=SIZE`: area-downscaled to SIZE x SIZE and saved as PNG, which washes the JPEG block grid out,
  the second validation set the training must also win on (a gain there is not "undoing q75").
- `washed=(SIZE, SIZE, ...)`: every image at each size, as `<stem>@<SIZE>.png`. The views of one photo meet the
  codec's quantiser and the recognizer's decision boundary at different pixels, so two pre-transforms that differ
  by a point of top-1 are told apart with fewer photos; `edgepipe eval` draws its bootstrap over the photos, each
  with all its views (core.datasets.source_of), so its intervals do not count the views as new photos.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from edgepipe.core.datasets import VIEW_MARK, LabelledImage, list_labelled_images, read_rgb
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


def write_holdout(root: str | Path, out: str | Path, fraction: float,
                  washed: int | tuple[int, ...] | None = None) -> int:
    """Write the hold-out of ROOT as OUT/<synset>/...; returns how many files were written (views count)."""
    import cv2

    from edgepipe.train.data import center_view

    if not 0 < fraction < 1:
        raise EdgepipeError(f"--fraction must be between 0 and 1, got {fraction}")
    sizes = (washed,) if isinstance(washed, int) else tuple(washed or ())
    if any(s < 8 for s in sizes):
        raise EdgepipeError(f"--washed must be sides of at least 8 pixels, got {','.join(map(str, sizes))}")
    if len(set(sizes)) != len(sizes):
        raise EdgepipeError(f"--washed lists a size twice: {','.join(map(str, sizes))}")
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
        if not sizes:
            os.symlink(item.path.resolve(), folder / item.path.name)
            written += 1
            continue
        image = read_rgb(item.path)
        if image is None:
            log.warning("skipping unreadable image %s", item.path)
            continue
        for size in sizes:
            small = center_view(image, size) if min(image.shape[:2]) > size else image
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(small[..., ::-1]))
            if not ok:
                raise EdgepipeError(f"could not write PNG for {item.path}")
            name = item.path.stem + (f"{VIEW_MARK}{size}" if len(sizes) > 1 else "") + ".png"
            (folder / name).write_bytes(buf.tobytes())
            written += 1
    return written
