"""Validation of an ED on a fixed subset: does it keep top-1, and does it save bits?

Reports, for the untransformed input and for the ED output (rounded to uint8, exactly what an encoder
would receive): recognizer top-1 (on ONNX Runtime), mean bits per pixel after HEVC intra at a fixed QP
(libx265, real encoded sizes), and mean per-pixel TV. Input figures are computed once and cached.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from edgepipe.core.fidelity import psnr
from edgepipe.engines.base import from_model_output, to_model_input
from edgepipe.media.codecs import HevcEncoder, bits_per_pixel
from edgepipe.train.losses import total_variation

log = logging.getLogger(__name__)


def run_ed(model: torch.nn.Module, frames: np.ndarray, batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """uint8 NHWC frames through the ED -> uint8 NHWC frames (same rounding as the pipeline engines)."""
    out = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(frames), batch_size):
            x = torch.from_numpy(to_model_input(frames[start:start + batch_size])).to(device)
            out.append(from_model_output(model(x).float().cpu().numpy()))
    model.train(was_training)
    return np.concatenate(out)


def mean_bpp(frames: np.ndarray, qp: int) -> float:
    """Mean bits per pixel of HEVC intra at a fixed QP (libx265, preset medium: what encode_image uses).

    One intra-only encoder for all frames: every frame is an IDR with its own parameter sets, so each
    frame's bytes equal a single-image encode (checked in the tests), without x265's start-up per frame."""
    n, h, w = frames.shape[:3]
    encoder = HevcEncoder(w, h, qp=qp, gop=0, preset="medium")
    total = sum(p.size for f in frames for p in encoder.encode(np.ascontiguousarray(f)))
    total += sum(p.size for p in encoder.flush())
    return bits_per_pixel(total, w, h) / n


def mean_tv(frames: np.ndarray) -> float:
    x = torch.from_numpy(to_model_input(frames))
    return float(total_variation(x))


@dataclass
class Validator:
    frames: np.ndarray           # uint8 (n, H, W, 3)
    labels: np.ndarray           # int64 (n,)
    classifier: object           # edgepipe.recognition.Classifier
    qp: int = 32
    bpp_limit: int = 48          # HEVC is the slow part: bits are measured on the first bpp_limit frames
    device: str = "cpu"
    _input: dict[str, float] = field(default_factory=dict, init=False)

    def _metrics(self, frames: np.ndarray, prefix: str) -> dict[str, float]:
        top1 = float(np.mean(self.classifier.top1(frames) == self.labels))
        bpp_frames = frames[: self.bpp_limit] if self.bpp_limit else frames
        return {f"top1_{prefix}": top1, f"bpp_{prefix}": mean_bpp(bpp_frames, self.qp), f"tv_{prefix}": mean_tv(frames)}

    def input_metrics(self) -> dict[str, float]:
        if not self._input:
            self._input = self._metrics(self.frames, "input")
        return self._input

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        started = time.perf_counter()
        result = dict(self.input_metrics())
        out = run_ed(model, self.frames, device=self.device)
        result.update(self._metrics(out, "ed"))
        result["psnr_ed"] = psnr(self.frames, out)
        result["bpp_saving"] = 1.0 - result["bpp_ed"] / result["bpp_input"]
        result["val_images"] = float(len(self.frames))
        result["bpp_images"] = float(min(len(self.frames), self.bpp_limit or len(self.frames)))
        log.info("validation took %.1f s", time.perf_counter() - started)
        return result
