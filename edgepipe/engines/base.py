"""The one interface every pre-transform engine implements.

An engine takes a batch of uint8 RGB frames (N, H, W, 3) and returns frames of the same shape and
dtype. Inside, models see float32 NCHW in [0, 1] (the layout exported ONNX models and TensorRT
plans use); the two helpers below are the only place that conversion is written.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

import cv2
import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.registry import EngineKind, EngineThreads, register_engine


class Engine(Protocol):
    model_id: str  # travels in the stream header, so the server knows what made the frames

    def run(self, frames: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def weights_id(tensors: Iterable[tuple[str, np.ndarray]]) -> str:
    """8 hex digits naming a model by its float weights (name, shape, float32 values), not by its file.

    An ED checkpoint (.pt, which also holds the optimiser) and its ONNX export carry the same tensors under
    the same names, so both run as the same model id in the stream header and on the monitor's report.
    """
    h = hashlib.sha256()
    for name, array in sorted(tensors, key=lambda t: t[0]):
        if array.dtype.kind != "f":  # shape constants and indices are graph plumbing, not weights
            continue
        values = np.ascontiguousarray(array, dtype="<f4")
        h.update(f"{name}{values.shape}".encode())
        h.update(values.tobytes())
    return h.hexdigest()[:8]


def to_model_input(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW in [0, 1]; writes into `out` when given (no allocation)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) RGB frames, got {frames.dtype} {frames.shape}")
    if out is None:
        out = np.empty((frames.shape[0], 3, frames.shape[1], frames.shape[2]), np.float32)
    np.multiply(frames.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=out)
    return out


def from_model_output(x: np.ndarray) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC RGB, rounded (half to even) and clamped to valid pixels; NaN -> 0.

    OpenCV scales, rounds and saturates each plane in one pass (in double precision, so exactly
    rint(x * 255)), then interleaves the planes into the contiguous frame the encoder takes: 2.1 ms for a
    720p frame where numpy's strided casting copy took 7.3 (bench/engine_io_speed.py).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    out = np.empty((n, h, w, c), np.uint8)
    for i in range(n):
        planes = [cv2.multiply(x[i, k], 255.0, dtype=cv2.CV_8U) for k in range(c)]
        if c == 1:
            out[i, :, :, 0] = planes[0]
        else:
            cv2.merge(planes, dst=out[i])
    return out


class IdentityEngine:
    """`--engine none`: no pre-transform; frames pass through untouched."""

    model_id = "none"

    def run(self, frames: np.ndarray) -> np.ndarray:
        return frames

    def close(self) -> None:
        pass


def _load_identity(argument: str | None, threads: EngineThreads) -> IdentityEngine:
    if argument is not None:
        raise EdgepipeError(f"engine none takes no parameters, got 'none:{argument}'")
    return IdentityEngine()


def _no_cpu_work() -> bool:
    return False


register_engine(EngineKind("none", _load_identity, computes_on_cpu=_no_cpu_work, concurrent_runs=True))
