"""Shared pieces for the field tests (recovery, security, metrics, fuzz, systemd): real frames
replayed as a live camera, threads that run a capture or a monitor, polling with a deadline."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgepipe.media.frames import Frame, ReadStatus
from edgepipe.media.sources import FrameShaper, VideoFileSource


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


class AskingSource:
    """Noise frames (64x64); reading frame `at` calls `ask(loop)` once two frames went out of the loop set as
    `.loop`: a monitor's request in the middle of a run."""

    live = False
    fps = None
    name = "asking"

    def __init__(self, n: int, at: int, ask, seed: int = 4):
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]
        self.at, self.ask, self.i, self.loop = at, ask, 0, None

    def read(self):
        if self.i >= len(self.images):
            return ReadStatus.EOS, None
        if self.i == self.at:
            deadline = time.monotonic() + 20
            while self.loop.stats.frames_sent < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.ask(self.loop)
        frame = Frame(self.images[self.i], self.i, 0.0)
        self.i += 1
        return ReadStatus.OK, frame

    def close(self):
        pass


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


def hevc_messages(frames: list[np.ndarray], stream: str, epoch: int, gop: int = 10, qp: int = 30,
                  model: str = "none", capture_time: float | None = None) -> list[list[bytes]]:
    """Real frames as HEVC wire messages of one (stream, epoch), seq from 0."""
    from edgepipe.media.codecs import HevcEncoder
    from edgepipe.transport.protocol import FrameHeader

    h, w = frames[0].shape[:2]
    enc = HevcEncoder(w, h, qp=qp, gop=gop)
    msgs = []
    for seq, image in enumerate(frames):
        (packet,) = enc.encode(image)
        t = time.time() if capture_time is None else capture_time + seq / 30
        header = FrameHeader(stream, seq, t, "hevc", w, h, qp, packet.keyframe, -1, model, epoch)
        msgs.append([header.pack(), packet.data])
    return msgs


class Feeder:
    """A raw XPUB on loopback that a monitor subscribes to: sends real and hostile messages on the
    same connection, in the order given, never dropping (NODROP: it waits for the monitor)."""

    def __init__(self, endpoint: str | None = None, hwm: int = 1000):
        import zmq

        from edgepipe.transport.sockets import free_tcp_endpoint

        self.zmq = zmq
        self.endpoint = endpoint or free_tcp_endpoint()
        self.sock = zmq.Context.instance().socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)

    def wait_subscriber(self, timeout: float = 5.0) -> None:
        assert self.sock.poll(int(timeout * 1000)), "no subscriber joined"
        self.sock.recv()

    def send(self, parts, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.send_multipart(parts, flags=self.zmq.NOBLOCK)
                return
            except self.zmq.Again:
                assert time.monotonic() < deadline, "the monitor stopped reading"
                time.sleep(0.001)

    def close(self) -> None:
        self.sock.close(0)


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects every message."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str = "") -> list[str]:
        return [m for _, m in self.messages if m.startswith(prefix)]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def capture_messages(loop, endpoint: str, before_close=None) -> list[list[bytes]]:
    """Run a CaptureLoop to its end of stream with a raw SUB socket on `endpoint`: every message it sent, in
    order. `before_close(loop)`, if given, runs after the loop has ended and before it is closed (its metrics)."""
    import zmq

    from edgepipe.transport.protocol import parse_message

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 20_000)
    try:
        sub.connect(endpoint)
        runner = threading.Thread(target=loop.run)
        runner.start()
        messages = []
        while not messages or not parse_message(messages[-1])[0].end_of_stream:
            messages.append(sub.recv_multipart())
        runner.join(60)
        if before_close is not None:
            before_close(loop)
    finally:
        loop.close()
        sub.close(0)
        ctx.term()
    return messages


EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]


def run_monitor_and_capture(monitor_args: list[str], capture_args: list[str], timeout: float = 240):
    """A real `edgepipe monitor` started first, then a real `edgepipe capture` run to its end: (the capture's
    CompletedProcess, the monitor's stdout, its stderr), both exited 0 without a traceback."""
    monitor = subprocess.Popen(EDGEPIPE + monitor_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cap = subprocess.run(EDGEPIPE + capture_args, capture_output=True, text=True, timeout=timeout)
        assert cap.returncode == 0, cap.stderr
        out, err = monitor.communicate(timeout=timeout)
    finally:
        monitor.kill()
    assert monitor.returncode == 0, err
    assert "Traceback" not in cap.stderr + err
    return cap, out, err
