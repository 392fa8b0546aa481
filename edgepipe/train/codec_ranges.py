"""Codec ranges of the training loop, `hevc:31-47,jpeg:5-40,jpeg2000-db:23-33`: which codec and settings a batch
is coded at.
Apart from codec_loop.py so that the settings (config.py) can check them without torch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepipe.core.errors import EdgepipeError

# Settings a range may span, per codec, and whether a larger setting means more bits. jpeg2000-db's setting is
# the target PSNR in dB of its one quality layer (edgepipe/media/codecs/jpeg2000.py).
_LIMITS = {"hevc": (0, 51, False), "jpeg": (1, 100, True), "jpeg2000-db": (15, 50, True)}


@dataclass(frozen=True)
class CodecRange:
    codec: str
    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> "CodecRange":
        """`hevc:31-47`, `jpeg:5-40`, `jpeg2000-db:23-33` or a single setting `hevc:37`."""
        codec, _, span = text.strip().partition(":")
        codec = codec.lower()
        if codec not in _LIMITS:
            raise EdgepipeError(f"codec in the loop must be one of {', '.join(_LIMITS)}, got {text!r}")
        try:
            lo, _, hi = span.partition("-")
            low, high = int(lo), int(hi or lo)
        except ValueError:
            raise EdgepipeError(f"bad codec range {text!r}: use CODEC:LOW-HIGH, e.g. hevc:31-47") from None
        first, last, _ = _LIMITS[codec]
        if not first <= low <= high <= last:
            raise EdgepipeError(f"bad codec range {text!r}: {codec} settings lie in {first}..{last}, LOW <= HIGH")
        return cls(codec, low, high)

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def __str__(self) -> str:
        return f"{self.codec}:{self.low}-{self.high}"


def parse_ranges(text: str | None) -> list[CodecRange]:
    """A comma list of ranges (empty or None: no codec in the loop)."""
    if not text:
        return []
    return [CodecRange.parse(part) for part in text.split(",") if part.strip()]
