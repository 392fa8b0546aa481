"""Shared pieces for the field tests (recovery, security, metrics, fuzz, systemd): real frames
replayed as a live camera, threads that run a capture or a monitor, polling with a deadline."""
from __future__ import annotations

import threading
import time

import numpy as np

from edgepipe.pipeline.frames import Frame, ReadStatus
from edgepipe.pipeline.sources import FrameShaper, VideoFileSource


def decode_frames(path, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The first n frames of a real clip, resized."""
    src = VideoFileSource(path, FrameShaper(size))
    frames = []
    while len(frames) < n:
        status, frame = src.read()
        if status is not ReadStatus.OK:
            break
        frames.append(frame.image)
    src.close()
    return frames


class PacedSource:
    """Real frames replayed forever as a live camera at `fps`. `freeze` makes read() hang like a
    stuck V4L2 driver; `produced` counts frames handed out."""

    live = True

    def __init__(self, frames: list[np.ndarray], fps: float, name: str = "paced-camera"):
        self.frames, self.fps, self.name = frames, fps, name
        self.produced = 0
        self.freeze = threading.Event()
        self.closed = threading.Event()
        self._next = time.monotonic()

    def read(self):
        while self.freeze.is_set() and not self.closed.is_set():
            time.sleep(0.01)
        self._next += 1.0 / self.fps
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.monotonic()  # behind: do not burst to catch up
        image = self.frames[self.produced % len(self.frames)]
        frame = Frame(image, self.produced, time.time())
        self.produced += 1
        return ReadStatus.OK, frame

    def close(self) -> None:
        self.closed.set()


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Running:
    """Runs `target(stop, **kwargs)` in a thread; `stop()` sets the event and joins."""

    def __init__(self, target, **kwargs):
        self.event = threading.Event()
        self.result = None
        self.error: BaseException | None = None

        def body():
            try:
                self.result = target(self.event, **kwargs)
            except BaseException as exc:  # surfaced by stop()
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 15.0):
        self.event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "did not stop in time"
        if self.error is not None:
            raise self.error
        return self.result
