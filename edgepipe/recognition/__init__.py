"""Recognizers: frozen ImageNet-1k classifiers used by the monitor, training and evaluation.

Every recognizer is a torch module taking RGB in [0, 1] (NCHW, any size the net accepts) and
returning 1000 logits; it does its own normalisation. `Classifier` wraps one for inference on
uint8 frames, on ONNX Runtime when installed (about 6x faster than eager PyTorch on CPU for
EfficientNet-Lite0's depthwise convolutions), else on PyTorch.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_path
from edgepipe.recognition.registry import RECOGNIZER_REGISTRY, build_recognizer  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

RECOGNIZERS = RECOGNIZER_REGISTRY.names()  # every command's --recognizer choices (registry.py lists them)
DEFAULT_RECOGNIZER = "efficientnet-lite0"
INPUT_SIDE = 224  # both recognizers were trained on 224x224 centre crops
# How a frame becomes the recognizer's input: the centre square at 224 (as in the recognizers' training,
# and cheap: a 720p frame costs what a 224 one does; the monitor's default), the frame as it is (eval's
# default: its datasets are prepared at 224 already, where all views agree), or square tiles across a wide
# scene whose class probabilities are averaged.
VIEWS = ("centre-crop", "native", "tiles")


def _cache_dir() -> Path:
    root = os.environ.get("EDGEPIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgepipe"
    )
    return Path(root)


@dataclass(frozen=True)
class TopK:
    """The k most probable ImageNet classes of each frame of a batch, most probable first."""

    classes: np.ndarray  # (N, k) int64 class indices
    probs: np.ndarray | None  # (N, k) float32 softmax probabilities; None from a recognizer that gives none

    @property
    def top1(self) -> np.ndarray:
        return self.classes[:, 0]

    def __len__(self) -> int:
        return len(self.classes)


def top_k(logits: np.ndarray, k: int = 5) -> TopK:
    """TopK from logits (N, C). Ties go to the lower index, as argmax's do, so top1 == logits.argmax(1)."""
    k = min(k, logits.shape[1])
    classes = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return TopK(classes.astype(np.int64), np.take_along_axis(p, classes, axis=1).astype(np.float32))


class Classifier:
    """ImageNet predictions (top-1, top-k with probabilities) for batches of uint8 RGB frames (N, H, W, 3)."""

    def __init__(self, name: str = DEFAULT_RECOGNIZER, weights: str | None = None,
                 backend: str = "auto", threads: int | None = None, batch_size: int = 32,
                 view: str = "native"):
        if view not in VIEWS:
            raise EdgepipeError(f"unknown recognizer view {view!r}; choose one of {', '.join(VIEWS)}")
        self.name = name
        self.batch_size = batch_size
        self.view = view
        self._model = build_recognizer(name, weights)
        self.backend = self._choose_backend(backend)
        self._threads = threads
        self._session = self._onnx_session(weights) if self.backend == "onnxruntime" else None

    @staticmethod
    def _choose_backend(backend: str) -> str:
        if backend not in ("auto", "onnxruntime", "torch"):
            raise EdgepipeError(f"unknown recognizer backend {backend!r}")
        if backend == "torch":
            return "torch"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            if backend == "onnxruntime":
                raise EdgepipeError("onnxruntime is not installed") from None
            return "torch"
        return "onnxruntime"

    def _onnx_session(self, weights: str | None):
        """Export once to a cache keyed by the weights' content, then run on ONNX Runtime."""
        import onnxruntime as ort
        import torch

        digest = hashlib.sha256()
        for key, value in self._model.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().numpy().tobytes()[:4096])
        path = _cache_dir() / f"{self.name}-{digest.hexdigest()[:16]}.onnx"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, torch.no_grad():  # a concurrent run never sees half a file
                torch.onnx.export(
                    self._model, torch.zeros(1, 3, 224, 224), str(tmp),
                    input_names=["image"], output_names=["logits"],
                    dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}}, dynamo=False,
                )
        options = ort.SessionOptions()
        if self._threads:
            options.intra_op_num_threads = self._threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Logits (N, 1000) for uint8 RGB frames (N, H, W, 3), in batches, seen through `view`."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) RGB frames, got shape {frames.shape}")
        if self.view == "native" or frames.shape[1:3] == (INPUT_SIDE, INPUT_SIDE):
            return self._logits(frames)
        if self.view == "centre-crop":
            return self._logits(np.stack([centre_crop(f, INPUT_SIDE) for f in frames]))
        tiles = [square_tiles(f, INPUT_SIDE) for f in frames]
        flat = self._logits(np.concatenate(tiles))
        out, start = [], 0
        for t in tiles:  # average the tiles' probabilities; return their log, so argmax/softmax still work
            z = flat[start:start + len(t)]
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out.append(np.log(p.mean(axis=0) + 1e-12))
            start += len(t)
        return np.stack(out).astype(np.float32)

    def _logits(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(frames), self.batch_size):
            batch = frames[start:start + self.batch_size]
            x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
            if self._session is not None:
                out.append(self._session.run(None, {"image": x})[0])
            else:
                import torch

                with torch.no_grad():
                    out.append(self._model(torch.from_numpy(x)).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1000), np.float32)

    def top1(self, frames: np.ndarray) -> np.ndarray:
        return self.logits(frames).argmax(axis=1)

    def topk(self, frames: np.ndarray, k: int = 5) -> TopK:
        """The k most probable classes of each frame and their probabilities, in one batched call."""
        return top_k(self.logits(frames), k)

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """The part of the view that depends on one frame alone: its centre square at 224 for centre-crop, the
        frame itself otherwise. `logits` of prepared frames equals `logits` of the frames, and prepared frames
        of different sizes can share a batch when the view makes them one size (the monitor relies on both)."""
        if self.view == "centre-crop" and frame.shape[:2] != (INPUT_SIDE, INPUT_SIDE):
            return centre_crop(frame, INPUT_SIDE)
        return frame


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    shrink = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def centre_crop(frame: np.ndarray, side: int) -> np.ndarray:
    """The shorter side scaled to `side` (area filter when shrinking), then the centre side x side square."""
    h, w = frame.shape[:2]
    scale = side / min(h, w)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    resized = frame if (nh, nw) == (h, w) else _resize(frame, nw, nh)
    top, left = (nh - side) // 2, (nw - side) // 2
    return np.ascontiguousarray(resized[top:top + side, left:left + side])


def square_tiles(frame: np.ndarray, side: int) -> np.ndarray:
    """Squares of the shorter side, evenly spread across the longer one (overlapping as needed), at side x side."""
    h, w = frame.shape[:2]
    short, long_ = min(h, w), max(h, w)
    n = max(1, round(long_ / short))
    offsets = np.linspace(0, long_ - short, n).round().astype(int) if n > 1 else [(long_ - short) // 2]
    squares = [frame[:, o:o + short] if w >= h else frame[o:o + short, :] for o in offsets]
    return np.stack([_resize(np.ascontiguousarray(sq), side, side) if short != side else sq for sq in squares])
