"""Reference frames (issue 14 item 1): every Nth source frame, before the pre-transform, sent a second time as a
near-lossless JPEG still beside the stream, so a monitor can measure what the stream costs the recognizer
without labels.

JPEG at quality 95 (the codec registry's `jpeg`), not HEVC at a low intra QP: a still needs no encoder state, so
a reference never disturbs the stream's GOP or its encoder threads, every monitor already decodes JPEG without a
decoder per stream, and q95 is near-lossless for a recognizer at a fraction of the bytes of a lossless still.

The budget (`--reference-budget KBITS`) is a running rate on the stream clock: a reference is skipped (counted)
when the reference bytes so far plus its own, over the stream time sent so far, would exceed it.

The share (`--reference-share`, default 0.05): a reference is also skipped (counted, `over_share`) when the
reference bytes so far plus its own would pass that share of the stream's bytes so far, its coded frame
included. So references cost at most 5 % of what the stream sends, whatever N, the scene and the QP: on a
static scene at a coarse QP that means a reference every few hundred frames, and the agreement's interval
widens accordingly. `--reference-share 0` lifts the cap.

The view (`--reference-view`): by default the reference is what the monitor's recognizer looks at in its default
view, the frame's centre square at 224 (recognition.centre_crop), not the whole frame: the monitor's centre-crop
of a 224 square is the square itself, so the agreement is the same, and a 720p reference costs a 224 one's
bytes (a fifth of the whole frame at the shared clips' 768x432, a tenth at 720p: docs/monitor.md). `native`
sends the whole frame, for a monitor that views frames `native` or in `tiles`.
"""
from __future__ import annotations

import threading

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs import CODECS
from edgepipe.recognition import INPUT_SIDE, centre_crop

REFERENCE_CODEC = "jpeg"
REFERENCE_QUALITY = 95
REFERENCE_VIEWS = ("centre-crop", "native")  # what a reference shows: the recognizer's default view, or all


class ReferencePolicy:
    """Which frames get a reference, their source images until the send stage takes them, and the encoding."""

    def __init__(self, every: int, budget_kbit: float | None = None, view: str = "centre-crop",
                 share: float = 0.0):
        if view not in REFERENCE_VIEWS:
            raise EdgepipeError(f"--reference-view must be one of {', '.join(REFERENCE_VIEWS)}, got {view!r}")
        self.view = view
        if every < 0:
            raise EdgepipeError(f"--reference-every must be 0 (off) or a positive number of frames, got {every}")
        if budget_kbit is not None and not budget_kbit > 0:
            raise EdgepipeError(f"--reference-budget must be a positive kbit/s, got {budget_kbit}")
        if not 0 <= share <= 1:
            raise EdgepipeError(f"--reference-share must be a fraction from 0 (no cap) to 1, got {share}")
        self.every, self.budget_kbit, self.share = every, budget_kbit, share
        self.last_bytes = 0  # the last encoded reference's size: the estimate a due one is judged at first
        # id(frame) -> its source image, between the engine and the send stage (the frame lives that long)
        self._sources: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def keep(self, frame) -> None:
        """The source image of a frame about to be pre-transformed (no copy: the engine makes a new array)."""
        if self.enabled:
            with self._lock:
                self._sources[id(frame)] = frame.image

    def take(self, frame) -> np.ndarray | None:
        with self._lock:
            return self._sources.pop(id(frame), None)

    def due(self, seq: int) -> bool:
        return self.enabled and seq % self.every == 0

    def over_share(self, reference_bytes: int, nbytes: int, stream_bytes: int) -> bool:
        """Whether sending `nbytes` more would take the references past their share of the stream's bytes."""
        return self.share > 0 and reference_bytes + nbytes > self.share * stream_bytes

    def over_budget(self, reference_bytes: int, nbytes: int, stream_s: float) -> bool:
        """Whether sending `nbytes` more would take the reference rate over the budget."""
        if self.budget_kbit is None:
            return False
        return stream_s <= 0 or (reference_bytes + nbytes) * 8 / 1000 / stream_s > self.budget_kbit

    def picture(self, image: np.ndarray) -> np.ndarray:
        """What the reference shows of a source image: its centre square at 224, or the whole of it."""
        return centre_crop(image, INPUT_SIDE) if self.view == "centre-crop" else image

    @staticmethod
    def encode(image: np.ndarray) -> bytes:
        return CODECS[REFERENCE_CODEC].encode(image, REFERENCE_QUALITY, None)

    def clear(self) -> None:
        with self._lock:
            self._sources.clear()
