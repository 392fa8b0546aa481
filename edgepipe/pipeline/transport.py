"""ZeroMQ transport: a versioned two-part message, [header, payload].

Header layout (little-endian), protocol version 1:

    magic  b"EP"     2 bytes
    version u8       1
    flags   u8       bit 0: keyframe
    codec   u8       1 hevc, 2 jpeg, 3 jpeg2000
    qp      i8       -1 when the encoder ran on CRF
    width   u16
    height  u16
    label   i32      ImageNet index, -1 when unknown
    epoch   u32      changes when capture restarts: the monitor starts a new accounting period
    seq     u64      per (stream, epoch), from 0; gaps are lost frames
    capture_time f64 unix seconds when the frame was read
    stream_id, model_id: u8 length + UTF-8 bytes each

The capture side binds a PUB-like socket (XPUB, so it can tell when a subscriber has joined) and
never blocks: at the high-water mark ZeroMQ drops, and the monitor sees the gap in `seq`.
"""
from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass

from edgepipe.errors import EdgepipeError

log = logging.getLogger(__name__)

MAGIC = b"EP"
PROTOCOL_VERSION = 1
_FIXED = struct.Struct("<2sBBBbHHiIQd")
CODEC_IDS = {"hevc": 1, "jpeg": 2, "jpeg2000": 3}
CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}
MAX_PAYLOAD = 64 * 1024 * 1024  # larger parts are rejected unread


class ProtocolError(ValueError):
    """A message the monitor rejects; `cause` is the counter it goes under."""

    def __init__(self, cause: str, detail: str):
        super().__init__(f"{cause}: {detail}")
        self.cause = cause


@dataclass
class FrameHeader:
    stream_id: str
    seq: int
    capture_time: float
    codec: str
    width: int
    height: int
    qp: int
    keyframe: bool
    label: int = -1
    model_id: str = "none"
    epoch: int = 0

    def pack(self) -> bytes:
        sid, mid = self.stream_id.encode(), self.model_id.encode()
        if len(sid) > 255 or len(mid) > 255:
            raise ValueError("stream_id and model_id must each fit in 255 UTF-8 bytes")
        fixed = _FIXED.pack(MAGIC, PROTOCOL_VERSION, int(self.keyframe), CODEC_IDS[self.codec], self.qp,
                            self.width, self.height, self.label, self.epoch, self.seq, self.capture_time)
        return b"".join((fixed, bytes((len(sid),)), sid, bytes((len(mid),)), mid))

    @classmethod
    def unpack(cls, data: bytes) -> FrameHeader:
        if len(data) < _FIXED.size + 2:
            raise ProtocolError("bad_header", f"header of {len(data)} bytes is too short")
        magic, version, flags, codec, qp, width, height, label, epoch, seq, ctime = _FIXED.unpack_from(data)
        if magic != MAGIC:
            raise ProtocolError("bad_header", "not an edgepipe message (bad magic)")
        if version != PROTOCOL_VERSION:
            raise ProtocolError("bad_version", f"protocol version {version}, this monitor speaks {PROTOCOL_VERSION}")
        if codec not in CODEC_NAMES:
            raise ProtocolError("bad_header", f"unknown codec id {codec}")
        if width == 0 or height == 0:
            raise ProtocolError("bad_header", f"frame size {width}x{height}")
        pos = _FIXED.size
        strings = []
        for _ in range(2):
            if pos >= len(data):
                raise ProtocolError("bad_header", "truncated header")
            n = data[pos]
            raw = data[pos + 1:pos + 1 + n]
            if len(raw) != n:
                raise ProtocolError("bad_header", "truncated header")
            try:
                strings.append(raw.decode())
            except UnicodeDecodeError:
                raise ProtocolError("bad_header", "stream or model id is not UTF-8") from None
            pos += 1 + n
        if pos != len(data):
            raise ProtocolError("bad_header", f"{len(data) - pos} trailing bytes after header")
        return cls(strings[0], seq, ctime, CODEC_NAMES[codec], width, height, qp, bool(flags & 1),
                   label, strings[1], epoch)


def parse_message(parts: list[bytes]) -> tuple[FrameHeader, bytes]:
    """Validate a received multipart message; raises ProtocolError with a counter name."""
    if len(parts) != 2:
        raise ProtocolError("bad_framing", f"{len(parts)} message parts, expected 2")
    header = FrameHeader.unpack(parts[0])
    if not parts[1]:
        raise ProtocolError("empty_payload", "payload is empty")
    return header, parts[1]


@dataclass(frozen=True)
class SocketDefaults:
    """Socket settings in one place. The send HWM bounds memory on the device; LINGER bounds how long
    close() may wait for unsent frames on shutdown."""

    send_hwm: int = 200
    recv_hwm: int = 2000
    linger_ms: int = 500
    poll_ms: int = 100


DEFAULTS = SocketDefaults()


def _bind(sock, endpoint: str) -> None:
    import zmq

    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        if exc.errno == zmq.EADDRINUSE:
            raise EdgepipeError(f"endpoint {endpoint} is already in use") from None
        raise EdgepipeError(f"cannot bind {endpoint}: {exc}") from None


def _connect(sock, endpoint: str) -> None:
    import zmq

    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise EdgepipeError(f"cannot connect to {endpoint}: {exc}") from None


class Publisher:
    """Capture side. Binds an XPUB socket; send() never blocks."""

    def __init__(self, endpoint: str, defaults: SocketDefaults = DEFAULTS, context=None):
        import zmq

        self._zmq = zmq
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, defaults.send_hwm)
        self.sock.setsockopt(zmq.LINGER, defaults.linger_ms)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every (re)subscription, e.g. a restarted monitor
        self.endpoint = endpoint
        _bind(self.sock, endpoint)
        self.subscribers_seen = 0
        self.dropped = 0

    def wait_for_subscriber(self, timeout: float) -> bool:
        """True once a subscriber has joined (for demos and tests; the service never waits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll_subscriptions(timeout_ms=50)
            if self.subscribers_seen:
                return True
        return False

    def poll_subscriptions(self, timeout_ms: int = 0) -> None:
        zmq = self._zmq
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            msg = self.sock.recv()
            if msg[:1] == b"\x01":
                self.subscribers_seen += 1
            timeout_ms = 0

    def send(self, header: FrameHeader, payload: bytes) -> bool:
        """False when ZeroMQ would have blocked (the frame is counted as dropped)."""
        zmq = self._zmq
        try:
            self.sock.send_multipart((header.pack(), payload), flags=zmq.NOBLOCK, copy=len(payload) < 16384)
            return True
        except zmq.Again:
            self.dropped += 1
            return False

    def close(self) -> None:
        self.sock.close()


class Subscriber:
    """Monitor side. Connects a SUB socket subscribed to everything."""

    def __init__(self, endpoint: str, defaults: SocketDefaults = DEFAULTS, context=None):
        import zmq

        self._zmq = zmq
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, defaults.recv_hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_PAYLOAD)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.poll_ms = defaults.poll_ms
        _connect(self.sock, endpoint)

    def recv(self, timeout_ms: int | None = None) -> list[bytes] | None:
        """The next multipart message, or None after the timeout."""
        if not self.sock.poll(self.poll_ms if timeout_ms is None else timeout_ms, self._zmq.POLLIN):
            return None
        return self.sock.recv_multipart(copy=True)

    def close(self) -> None:
        self.sock.close()
