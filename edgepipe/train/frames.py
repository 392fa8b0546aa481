"""Camera footage for a label-free term (`edgepipe train --frames CLIP.mp4,... --lambda-frames W`).

Labelled photos teach the ED to change what the recognizer says where that makes it right; on a camera's own
scenes, which often hold no ImageNet object, the same change only moves an arbitrary answer, and the label-free
check on the clips (coded frame against the source frame, bench/clip_agreement.py) counts that as a loss
before any bits are spent. This term asks the recognizer's answer on the decoded ED output of camera frames to
stay what it is on the frames themselves (a divergence at temperature 1, through the labelled batch's codec
round trip, or through `--frames-codec`'s ranges), so the ED learns to leave such scenes alone.

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
    """Random crops (and flips) of the training part of some camera clips."""

    paths: tuple[str, ...]
    crop: int = 128
    batch_size: int = 16
    seed: int = 0
    every: int = 5
    frames: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.frames = []
        for path in self.paths:
            clip = read_clip(path, self.every)
            keep = int(len(clip) * (1 - TAIL))
            if keep < 1 or min(clip.shape[1:3]) < self.crop:
                raise EdgepipeError(f"--frames {path}: {len(clip)} frames of {clip.shape[2]}x{clip.shape[1]} leave "
                                    f"nothing to crop {self.crop}x{self.crop} from")
            self.frames.extend(clip[:keep])
            log.info("--frames %s: %d of %d sampled frames train (the last %d%% are left for judging)", path, keep,
                     len(clip), round(100 * TAIL))

    def batch(self, step: int) -> np.ndarray:
        """uint8 crops (batch_size, crop, crop, 3), the same for the same (seed, step)."""
        rng = np.random.default_rng([self.seed, step, 13])
        crops = []
        for i in rng.integers(0, len(self.frames), self.batch_size):
            image = self.frames[int(i)]
            h, w = image.shape[:2]
            top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
            crop = image[top:top + self.crop, left:left + self.crop]
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
        return np.ascontiguousarray(np.stack(crops))


def frames_divergence(model, recognizer, pool: FramePool, codec, step: int, device: str):
    """The term: KL(recognizer(frames) || recognizer(decoded ED(frames))) at temperature 1 on one batch of the
    pool. `codec` is the loop's CodecLoop for the frames (None without --codec): the labelled batch's, or one
    with --frames-codec's ranges; the batch goes through its round trip (`CodecLoop.coded`) and gradient model."""
    import torch

    from edgepipe.engines.base import to_model_input
    from edgepipe.train.losses import distillation

    x = torch.from_numpy(to_model_input(pool.batch(step))).to(device)
    y = model(x)
    with torch.no_grad():
        teacher = recognizer(x)
    if codec is not None:
        y, _ = codec.coded(y, step, device)
    return distillation(recognizer(y), teacher, 1.0)
