"""A bounded window of latencies and its median (capture and monitor)."""
from __future__ import annotations

import numpy as np


class LatencyWindow:
    """The last `n` values (float32 ring, 4 bytes each) and their median, whatever the count."""

    def __init__(self, n: int = 1024):
        self._buf = np.zeros(n, np.float32)
        self._n = 0

    def append(self, value: float) -> None:
        self._buf[self._n % len(self._buf)] = value
        self._n += 1

    def __len__(self) -> int:
        return min(self._n, len(self._buf))

    def values(self) -> np.ndarray:
        return self._buf[:len(self)].copy()

    def median(self) -> float:
        return float(np.median(self._buf[:len(self)]))
