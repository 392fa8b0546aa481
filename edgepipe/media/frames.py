"""What travels between the capture stages."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

# The stream clock of sources that have none of their own (folders, still images) when no --fps is
# given: kbit/s is measured on it, and --realtime paces at it.
DEFAULT_FPS = 25.0


class ReadStatus(Enum):
    """A source's answer to read(): end of stream and a slow camera are outcomes, not exceptions."""

    OK = "ok"
    TIMEOUT = "timeout"  # nothing yet (live source reconnecting or slow); ask again
    EOS = "eos"  # a file or folder has ended


@dataclass
class Frame:
    image: np.ndarray  # uint8 RGB (H, W, 3)
    index: int  # position in the source, from 0
    capture_time: float  # time.time() when read
    label: int = -1  # ImageNet index when the source knows it, else -1
    # seconds on the source's own clock (a video's timestamps) from its first frame; None: the source
    # has no clock of its own and the capture derives one (index / rate, or the capture clock if live)
    media_time: float | None = None
