"""ZeroMQ transport: a versioned two-part message, [header, payload] (docs/wire.md).

Header layout (little-endian), protocol versions 1, 2 and 3:

    magic  b"EP"     2 bytes
    version u8       1: frames without a stream clock; 2: the end-of-stream message; 3: frames with one
    flags   u8       bit 0: keyframe; bit 1 (version 2 and later): end of stream
    codec   u8       1 hevc, 2 jpeg, 3 jpeg2000
    qp      i8       -1 when the encoder ran on CRF
    width   u16
    height  u16
    label   i32      ImageNet index, -1 when unknown
    epoch   u32      changes when capture restarts: the monitor starts a new accounting period
    seq     u64      per (stream, epoch), from 0; gaps are lost frames
    capture_time f64 unix seconds when the frame was read; finite, in [0, 2**32), else `bad_time`
  version 3 only, here:
    media_time f64   seconds on the stream's own clock since the epoch's first frame; finite, in [0, 2**32)
    duration   f64   stream-clock seconds since the previous frame sent (the first: one nominal
                     interval); finite, in [0, 3600]; else `bad_time`
    clock      u8    where the stream clock comes from: 0 a live source's capture clock, 1 the video's
                     timestamps, 2 the --fps rate, 3 the default rate (folders and images)
    stream_id, model_id: u8 length + UTF-8 bytes each

A message carries the lowest version that can express it: frames that carry a stream clock are
version 3 (every frame this capture sends), the end-of-stream message is version 2, and version 1
is what earlier captures sent. This monitor accepts all three and rejects others (`bad_version`);
for version 1 frames it can only measure kbit/s on the capture clock, and says so.

End of stream (version 2, flag bit 1, empty payload): the capture's last message of an epoch;
`seq` is the number of frames it numbered in that epoch, so the monitor counts the frames missing
at the tail as lost; the other fields repeat the last frame's (1x1 when there was none).
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAGIC = b"EP"
PROTOCOL_VERSION = 1  # of frames without a stream clock (what captures before version 3 sent)
END_OF_STREAM_VERSION = 2  # of the end-of-stream message
CLOCK_VERSION = 3  # of frames with a stream clock: every frame this capture sends
SUPPORTED_VERSIONS = (1, 2, 3)
FLAG_KEYFRAME, FLAG_END_OF_STREAM = 1, 2
_FIXED = struct.Struct("<2sBBBbHHiIQd")
_CLOCK = struct.Struct("<ddB")  # version 3: media_time, duration, clock
# Where a frame's stream clock comes from (wire value = index). "live": a camera's capture clock;
# "timestamps": the video file's own; "fps": the rate given to the capture (--fps); "default-fps":
# the default rate of folders and images (frames.DEFAULT_FPS).
CLOCKS = ("live", "timestamps", "fps", "default-fps")
MAX_FRAME_DURATION = 3600.0  # seconds of stream clock one frame may stand for
# The wire's codec numbers: a contract with every monitor already deployed, so they are written out here, with
# the format, and never renumbered. Each codec module (edgepipe/media/codecs/) registers its own as `wire_id`;
# transport may not import media, so tests/media/test_codec_registry.py holds the two equal.
CODEC_IDS = {"hevc": 1, "jpeg": 2, "jpeg2000": 3}
CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}
MAX_PAYLOAD = 64 * 1024 * 1024  # larger parts are rejected unread
MAX_DIMENSION = 16384  # wider or taller frames are not ours: reject before any decoder allocates
MAX_CAPTURE_TIME = 2.0**32  # unix seconds (year 2106); a capture time must be finite and in [0, this)


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
    end_of_stream: bool = False
    # the stream clock (version 3); None: a frame without one (version 1, or an end of stream)
    media_time: float | None = None
    duration: float | None = None
    clock: str | None = None

    @property
    def version(self) -> int:
        if self.end_of_stream:
            return END_OF_STREAM_VERSION
        return CLOCK_VERSION if self.media_time is not None else PROTOCOL_VERSION

    def pack(self) -> bytes:
        sid, mid = self.stream_id.encode(), self.model_id.encode()
        if len(sid) > 255 or len(mid) > 255:
            raise ValueError("stream_id and model_id must each fit in 255 UTF-8 bytes")
        version = self.version
        flags = (FLAG_KEYFRAME if self.keyframe else 0) | (FLAG_END_OF_STREAM if self.end_of_stream else 0)
        fixed = _FIXED.pack(MAGIC, version, flags, CODEC_IDS[self.codec], self.qp,
                            self.width, self.height, self.label, self.epoch, self.seq, self.capture_time)
        if version == CLOCK_VERSION:
            fixed += _CLOCK.pack(self.media_time, self.duration if self.duration is not None else 0.0,
                                 CLOCKS.index(self.clock or "live"))
        return b"".join((fixed, bytes((len(sid),)), sid, bytes((len(mid),)), mid))

    @classmethod
    def unpack(cls, data: bytes) -> FrameHeader:
        if len(data) < _FIXED.size + 2:
            raise ProtocolError("bad_header", f"header of {len(data)} bytes is too short")
        magic, version, flags, codec, qp, width, height, label, epoch, seq, ctime = _FIXED.unpack_from(data)
        if magic != MAGIC:
            raise ProtocolError("bad_header", "not an edgepipe message (bad magic)")
        if version not in SUPPORTED_VERSIONS:
            raise ProtocolError("bad_version", f"protocol version {version}, this monitor speaks "
                                               f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
        if flags & FLAG_END_OF_STREAM and version < END_OF_STREAM_VERSION:
            raise ProtocolError("bad_header", f"end-of-stream flag in a version {version} header")
        if codec not in CODEC_NAMES:
            raise ProtocolError("bad_header", f"unknown codec id {codec}")
        if width == 0 or height == 0 or width > MAX_DIMENSION or height > MAX_DIMENSION:
            raise ProtocolError("bad_header", f"frame size {width}x{height}")
        if not 0.0 <= ctime < MAX_CAPTURE_TIME:  # also false for NaN; +-inf are out of range
            raise ProtocolError("bad_time", f"capture time {ctime!r} is not a plausible unix time")
        pos = _FIXED.size
        media_time = duration = clock = None
        if version == CLOCK_VERSION:
            if len(data) < pos + _CLOCK.size + 2:
                raise ProtocolError("bad_header", f"version 3 header of {len(data)} bytes is too short")
            media_time, duration, clock_id = _CLOCK.unpack_from(data, pos)
            pos += _CLOCK.size
            if not 0.0 <= media_time < MAX_CAPTURE_TIME:
                raise ProtocolError("bad_time", f"media time {media_time!r} is not a stream time")
            if not 0.0 <= duration <= MAX_FRAME_DURATION:
                raise ProtocolError("bad_time", f"frame duration {duration!r} s is not plausible")
            if clock_id >= len(CLOCKS):
                raise ProtocolError("bad_header", f"unknown stream clock {clock_id}")
            clock = CLOCKS[clock_id]
            if flags & FLAG_END_OF_STREAM:  # the end of stream has no time of its own: read as version 2
                media_time = duration = clock = None
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
        return cls(strings[0], seq, ctime, CODEC_NAMES[codec], width, height, qp, bool(flags & FLAG_KEYFRAME),
                   label, strings[1], epoch, bool(flags & FLAG_END_OF_STREAM), media_time, duration, clock)


def parse_message(parts: list[bytes]) -> tuple[FrameHeader, bytes]:
    """Validate a received multipart message; raises ProtocolError with a counter name."""
    if len(parts) != 2:
        raise ProtocolError("bad_framing", f"{len(parts)} message parts, expected 2")
    header = FrameHeader.unpack(parts[0])
    if header.end_of_stream:
        if parts[1]:
            raise ProtocolError("bad_header", "an end-of-stream message has an empty payload")
        return header, parts[1]
    if not parts[1]:
        raise ProtocolError("empty_payload", "payload is empty")
    # No codec of ours spends 4 bytes a pixel; a bigger payload is garbage or an attack on the decoder.
    limit = 4 * header.width * header.height + 65536
    if len(parts[1]) > limit:
        raise ProtocolError("oversized", f"payload of {len(parts[1])} bytes for a {header.width}x{header.height} frame")
    return header, parts[1]
