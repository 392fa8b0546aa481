"""What a codec registers (`Codec`), the registry itself, and the calls that dispatch through it.

Every codec module describes itself once: its wire id, what its one quality number means and accepts,
whether it codes single images, how it encodes and decodes one RGB image, and what evaluation needs (the
settings its operating points are chosen from, its report title). Nothing else in edgepipe keeps a table of
codec names; the CLI choices, the wire ids, evaluation's points and titles are all read from `CODECS`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.registry import Registry


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    keyframe: bool
    pts: int

    @property
    def size(self) -> int:
        return len(self.data)


class StreamEncoder(Protocol):
    """A video encoder the capture loop feeds frame by frame (inter coding, a GOP, keyframes on demand)."""

    width: int
    height: int

    def encode(self, frame: np.ndarray, force_keyframe: bool = False) -> list[EncodedFrame]: ...

    def flush(self) -> list[EncodedFrame]: ...


@dataclass(frozen=True)
class QualitySetting:
    """A codec's one number (`--qp` on the command line): what it means and the values it accepts."""

    meaning: str      # in errors and help: "QP", "quality", "compression x1000", "target dB"
    low: int
    high: int
    report_name: str  # in evaluation reports, beside the operating points: "QP", "rate x1000", ...

    def check(self, codec: str, value: float) -> None:
        """One line naming the accepted range when `value` is out of it."""
        if not self.low <= value <= self.high:
            raise EdgepipeError(f"{codec} {self.meaning} must be {self.low}..{self.high}, got {value:g}")


def _always_available() -> None:
    """OpenCV's codecs ship with every edgepipe install: nothing to check."""


@dataclass(frozen=True)
class Codec:
    name: str
    title: str                        # reports and plots: "JPEG 2000 (rate)"
    setting: QualitySetting
    caption: str                      # one setting in a preview panel, "{}" for the value: "JPEG q{}"
    default_setting: int              # a useful mid-range value: preview's default, the availability probe's
    encode: Callable[[np.ndarray, float, int | None], bytes]  # (RGB image, setting, threads hint) -> bytes
    decode: Callable[[bytes, int | None, int | None], np.ndarray]  # (bytes, width, height) -> RGB image
    wire_id: int | None = None        # its number in the frame header; None: not sent by `capture`
    still: bool = True                # codes single images (intra): `eval` and `preview` can use it
    # A video codec's frame-by-frame encoder (inter coding with a GOP), called as
    # (width, height, qp=, crf=, gop=, preset=, encoder=, fps=); None: the capture codes each frame as a still.
    stream_encoder: Callable[..., StreamEncoder] | None = None
    crf_range: tuple[int, int] | None = None  # a constant rate factor instead of the setting (`--crf`)
    # Evaluation: the settings its operating points are chosen from, lowest rate first (evaluation/points.py).
    candidates: tuple[int, ...] = ()
    check_available: Callable[[], None] = _always_available  # one-line error when this build cannot run it


CODECS: Registry[Codec] = Registry("codec")


def register_codec(codec: Codec) -> Codec:
    """Make `codec` known by its name (a second codec of one name is refused)."""
    return CODECS.register(codec.name, codec)


def still_codecs() -> tuple[str, ...]:
    return tuple(c.name for c in CODECS.values() if c.still)


def stream_codecs() -> tuple[str, ...]:
    """The codecs a capture can send, in wire-id order."""
    return tuple(c.name for c in sorted((c for c in CODECS.values() if c.wire_id is not None),
                                        key=lambda c: c.wire_id))


def check_setting(codec: str, value: float) -> None:
    """One line naming the accepted range when a QP / quality / compression is out of it."""
    CODECS[codec].setting.check(codec, value)


def encode_image(codec: str, image: np.ndarray, quality: float, threads: int | None = None) -> bytes:
    """Encode one RGB image (H, W, 3) at the codec's setting (`CODECS[codec].setting` says what it means)."""
    return CODECS[codec].encode(image, quality, threads)


def decode_image(codec: str, data: bytes, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Decode one image to RGB; ValueError for a payload the codec cannot read."""
    return CODECS[codec].decode(data, width, height)


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """bpp = encoded bytes x 8 / pixels of the coded image."""
    return num_bytes * 8.0 / (width * height)
