"""The real codec on a batch of crops: encode and decode each, report their bytes (training and guidance).

Crops are coded in parallel, one single-threaded encoder per worker thread: PyAV and OpenCV release the
GIL while they code, and one x265 thread per crop avoids x265's per-row hand-offs on small pictures. Each
worker keeps one intra-only HEVC encoder per (size, QP): every frame is an IDR with its own parameter
sets, so its bytes equal a one-image encode without paying x265's start-up on every crop.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgepipe.core.errors import EdgepipeError


class CodecRoundTrip:
    """Encodes and decodes uint8 RGB crops (n, H, W, 3) with a real codec; returns (decoded, bytes)."""

    def __init__(self, workers: int | None = None, preset: str = "medium"):
        self.workers = max(1, workers or min(8, os.cpu_count() or 1))
        self.preset = preset
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="codec-loop")
        self._local = threading.local()

    def _hevc(self, frame: np.ndarray, qp: int) -> tuple[np.ndarray, int]:
        from edgepipe.media.codecs import HevcEncoder, decode_image

        h, w = frame.shape[:2]
        encoders = getattr(self._local, "encoders", None)
        if encoders is None:
            encoders = self._local.encoders = {}
        key = (w, h, qp)
        if key not in encoders:
            encoders[key] = HevcEncoder(w, h, qp=qp, gop=0, preset=self.preset, threads=1)
        data = b"".join(p.data for p in encoders[key].encode(np.ascontiguousarray(frame)))
        if not data:
            raise EdgepipeError("the intra-only HEVC encoder held a frame back (expected one packet per frame)")
        return decode_image("hevc", data, w, h), len(data)

    def _one(self, frame: np.ndarray, codec: str, setting: int) -> tuple[np.ndarray, int]:
        if codec == "hevc":
            return self._hevc(frame, setting)
        from edgepipe.media.codecs import decode_image, encode_image

        data = encode_image(codec, np.ascontiguousarray(frame), setting)
        return decode_image(codec, data), len(data)

    def __call__(self, frames: np.ndarray, codec: str, setting: int) -> tuple[np.ndarray, np.ndarray]:
        results = list(self._pool.map(lambda f: self._one(f, codec, setting), frames))
        decoded = np.stack([r[0] for r in results])
        sizes = np.asarray([r[1] for r in results], np.int64)
        return decoded, sizes

    def close(self) -> None:
        self._pool.shutdown(wait=True)
