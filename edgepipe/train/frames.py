"""Camera footage for a label-free term (`edgepipe train --frames CLIP.mp4,... --lambda-frames W`).

Labelled photos teach the ED to change what the recognizer says where that makes it right; on a camera's own
scenes, which often hold no ImageNet object, the same change only moves an arbitrary answer, and the label-free
check on the clips (coded frame against the source frame, bench/clip_agreement.py) counts that as a loss
before any bits are spent. This term asks the recognizer's answer on the decoded ED output of camera frames to
stay what it is on the frames themselves (a divergence at temperature 1, through the labelled batch's codec
round trip, or through `--frames-codec`'s ranges), so the ED learns to leave such scenes alone.

`--frames-view monitor` shows the recognizer each crop at the scale the monitor shows it the whole frame: its
centre-crop view shrinks a 768x432 frame by 224/432, so the crop is cut that much larger from the native frame,
goes through the ED and the codec at native scale (as the camera's frames do), and is shrunk (area filter, as
the monitor's) before the recognizer reads it. `native` (the default, and every model trained before it) shows
the recognizer native pixels, a scale it never meets in the pipeline.

Only the first (1 - TAIL) of each clip trains; the last TAIL is left for judging
(`bench/clip_agreement.py --start 0.7`). Crops are a pure function of (seed, step), so `--resume` continues
with the same pixels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)

TAIL = 0.3  # the share of each clip, at its end, never trained on


def read_clip(path: str, every: int) -> np.ndarray:
    """Every `every`-th frame of a video file, uint8 RGB (n, h, w, 3); one line when it is not a video."""
    from edgepipe.media.frames import ReadStatus
    from edgepipe.media.sources import FrameShaper, VideoFileSource

    if not Path(path).is_file():
        raise EdgepipeError(f"--frames {path}: no such video file")
    try:
        source = VideoFileSource(path, FrameShaper(None))
    except EdgepipeError as exc:  # says what is wrong with the file; say which flag named it
        raise EdgepipeError(f"--frames: {exc}") from None
    frames = []
    try:
        while True:
            status, frame = source.read()
            if status is not ReadStatus.OK:
                break
            if frame.index % every == 0:
                frames.append(frame.image)
    finally:
        source.close()
    if not frames:
        raise EdgepipeError(f"--frames {path}: no frames decoded")
    return np.stack(frames)


@dataclass
class FramePool:
    """Random crops (and flips) of the training part of some camera clips.

    `rescale_min` < 1 zooms out: each crop is cut from a square of side / s native pixels, s drawn in
    [rescale_min, 1], and area-filtered down to the crop's side, as if the camera saw the scene from farther
    away. Two fixed cameras are few scenes to learn from; the same scenes at other scales are more of them."""

    paths: tuple[str, ...]
    crop: int = 128
    batch_size: int = 16
    seed: int = 0
    every: int = 5
    view: str = "native"
    rescale_min: float = 1.0
    frames: list[np.ndarray] = field(init=False, repr=False)
    side: int = field(init=False)  # the crop's side in native pixels; the recognizer sees it at `crop`

    def __post_init__(self) -> None:
        if not 0.1 <= self.rescale_min <= 1.0:
            raise EdgepipeError(f"--frames-rescale-min must be in 0.1..1, got {self.rescale_min}")
        self.frames = []
        sides = {}
        for path in self.paths:
            clip = read_clip(path, self.every)
            keep = int(len(clip) * (1 - TAIL))
            sides[path] = native_side(self.crop, clip.shape[1:3], self.view)
            if keep < 1 or min(clip.shape[1:3]) < sides[path]:
                raise EdgepipeError(f"--frames {path}: {len(clip)} frames of {clip.shape[2]}x{clip.shape[1]} leave "
                                    f"nothing to crop {sides[path]}x{sides[path]} from")
            self.frames.extend(clip[:keep])
            log.info("--frames %s: %d of %d sampled frames train (the last %d%% are left for judging)", path, keep,
                     len(clip), round(100 * TAIL))
        if len(set(sides.values())) > 1:  # one batch, one crop size: the ED and the codec take them together
            raise EdgepipeError(f"--frames-view {self.view}: the clips need crops of different sizes "
                                f"({', '.join(f'{Path(p).name}: {s}' for p, s in sides.items())}); give clips "
                                "of one frame height")
        self.side = next(iter(sides.values()))

    def batch(self, step: int) -> np.ndarray:
        """uint8 crops (batch_size, side, side, 3) of native pixels, the same for the same (seed, step)."""
        import cv2

        rng = np.random.default_rng([self.seed, step, 13])
        crops = []
        for i in rng.integers(0, len(self.frames), self.batch_size):
            image = self.frames[int(i)]
            h, w = image.shape[:2]
            # No draw without zoom, so the crops of runs trained before the option stay what they were.
            scale = 1.0 if self.rescale_min >= 1.0 else float(rng.uniform(self.rescale_min, 1.0))
            cut = min(h, w, round(self.side / scale))
            top, left = int(rng.integers(0, h - cut + 1)), int(rng.integers(0, w - cut + 1))
            crop = image[top:top + cut, left:left + cut]
            if cut != self.side:
                crop = cv2.resize(crop, (self.side, self.side), interpolation=cv2.INTER_AREA)
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
        return np.ascontiguousarray(np.stack(crops))


def native_side(crop: int, frame_hw: tuple[int, int], view: str) -> int:
    """Native pixels a crop covers so that the recognizer sees it at `crop` pixels: `crop` itself in the native
    view; in the monitor's, `crop` over the centre-crop view's scale (INPUT_SIDE / the frame's shorter side),
    rounded to a multiple of 8 (the codec's blocks, and 4:2:0 chroma)."""
    if view == "native":
        return crop
    from edgepipe.recognition import INPUT_SIDE

    return max(8, 8 * round(crop * min(frame_hw) / INPUT_SIDE / 8))


def frames_divergence(model, recognizer, pool: FramePool, codec, step: int, device: str):
    """The term: KL(recognizer(frames) || recognizer(decoded ED(frames))) at temperature 1 on one batch of the
    pool. `codec` is the loop's CodecLoop for the frames (None without --codec): the labelled batch's, or one
    with --frames-codec's ranges; the batch goes through its round trip (`CodecLoop.coded`) and gradient model.
    The ED and the codec see the native crops; the recognizer sees both sides at the pool's view (`shrink`)."""
    import torch

    from edgepipe.engines.base import to_model_input
    from edgepipe.train.losses import distillation

    x = torch.from_numpy(to_model_input(pool.batch(step))).to(device)
    y = model(x)
    with torch.no_grad():
        teacher = recognizer(shrink(x, pool.crop))
    if codec is not None:
        y, _ = codec.coded(y, step, device)
    return distillation(recognizer(shrink(y, pool.crop)), teacher, 1.0)


def shrink(x, side: int):
    """NCHW square images at side x side, as the monitor's view resizes a frame (recognition.centre_crop): an area
    filter when shrinking (each output pixel the mean of its footprint, fractional edges weighted by their
    overlap, as cv2.INTER_AREA computes it), bilinear when enlarging; differentiable."""
    import torch
    import torch.nn.functional as F

    n = x.shape[-1]
    if n == side:
        return x
    if n < side:
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    weights = torch.from_numpy(area_weights(n, side)).to(x)
    return torch.einsum("ih,nchw,jw->ncij", weights, x, weights)


def area_weights(n: int, side: int) -> np.ndarray:
    """(side, n): row i averages input pixels over [i * n / side, (i + 1) * n / side)."""
    scale = n / side
    edges = np.arange(side + 1) * scale
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    return (overlap / scale).astype(np.float32)
