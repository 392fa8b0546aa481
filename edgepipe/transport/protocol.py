"""ZeroMQ transport: a versioned two-part message, [header, payload] (docs/wire.md).

Header layout (little-endian), protocol versions 1, 2 and 3 (versions 4 and 5 are the same fields with the
stream's topic first: see TOPIC_VERSION below; version 5, what this capture sends, widens qp to an i32):

    magic  b"EP"     2 bytes
    version u8       1: frames without a stream clock; 2: the end-of-stream message; 3: frames with one
    flags   u8       bit 0: keyframe; bit 1 (version 2 and later): end of stream; bits 2 and 3 (version 4
                     and later): a reference message, a frame whose reference follows (see FLAG_REFERENCE)
    codec   u8       1 hevc, 2 jpeg, 3 jpeg2000
    qp      i8       the codec's quality setting (HEVC QP, JPEG quality, JPEG 2000 rate x1000); -1 when the
                     encoder ran on CRF. Versions 1-4: an i8, so a capture before version 5 sent 127 for any
                     setting above it; version 5: an i32 (QUALITY_LIMITS)
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

`pack()` writes the lowest of versions 1-3 that can express a header (frames with a stream clock:
version 3; the end of stream: version 2; version 1 is what the oldest captures sent). `pack(WIRE_VERSION)`
writes version 5, every message this release's capture sends (`pack(TOPIC_VERSION)`, version 4, what the
captures of issue 15 sent): the stream's topic (bucket, stream id) comes first, so ZeroMQ can route it by
prefix (a monitor takes a shard, or some streams: transport/topics.py, which subscribes to the topics of both
versions). This monitor accepts all five and rejects others (`bad_version`); for version 1 frames it can only
measure kbit/s on the capture clock, and says so.

Versions 4 and 5 layout:

    magic  b"EP", version u8 = 4 or 5, bucket u8 = sha256(stream_id)[0], stream_id (u8 length + UTF-8)
        -- the stream's topic ends here: b"EP" + version + bucket is its shard's prefix --
    flags, codec, qp, width, height, label, epoch, seq, capture_time, media_time, duration, clock
        (as above, qp an i8 in version 4 and an i32 in version 5; clock 255: the frame carries no stream
        clock, media_time and duration are 0)
    model_id (u8 length + UTF-8)

A bucket that is not its stream id's is rejected (`bad_topic`): a sharded monitor must never get a
stream it did not subscribe to under another stream's name.

End of stream (version 2, flag bit 1, empty payload): the capture's last message of an epoch;
`seq` is the number of frames it numbered in that epoch, so the monitor counts the frames missing
at the tail as lost; the other fields repeat the last frame's (1x1 when there was none).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAGIC = b"EP"
PROTOCOL_VERSION = 1  # of frames without a stream clock (what captures before version 3 sent)
END_OF_STREAM_VERSION = 2  # of the end-of-stream message
CLOCK_VERSION = 3  # of frames with a stream clock (what captures of issue 12 to 14 sent)
TOPIC_VERSION = 4  # the topic first, qp an i8 (what captures of issue 15 sent)
QUALITY_VERSION = 5  # version 4 with qp an i32 (issue 10): a JPEG 2000 rate x1000 of 200 is sent as 200, not 127
WIRE_VERSION = QUALITY_VERSION  # every message this capture sends, frames and the end of stream
TOPIC_VERSIONS = (TOPIC_VERSION, QUALITY_VERSION)  # the versions whose header starts with the stream's topic
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5)
FLAG_KEYFRAME, FLAG_END_OF_STREAM = 1, 2
# Versions 4 and later (issue 14): a reference message, the source frame near-lossless beside the stream (same
# stream, epoch and seq as its coded frame, sent right after it; never a stream frame), and the coded frame's
# mark that its reference follows. Monitors before them ignore unknown bits: a reference reaches them as a
# second message with an already-seen seq and is rejected `out_of_order`, never counted as a frame.
FLAG_REFERENCE, FLAG_HAS_REFERENCE = 4, 8
_FIXED = struct.Struct("<2sBBBbHHiIQd")
_CLOCK = struct.Struct("<ddB")  # version 3: media_time, duration, clock
# versions 4 and 5: after the topic, every field but the stream id, in the order of versions 1-3
_TOPIC_HEAD = struct.Struct("<2sBBB")  # magic, version, bucket, stream id length
_TOPIC_BODY = {TOPIC_VERSION: struct.Struct("<BBbHHiIQdddB"),  # qp an i8
               QUALITY_VERSION: struct.Struct("<BBiHHiIQdddB")}  # qp an i32
# The qp values each version's field holds. Version 5's holds every registered codec's setting (the widest,
# JPEG 2000's rate x1000, is 1..1000: tests/media/test_codec_registry.py holds them inside it).
QUALITY_LIMITS = {1: (-128, 127), 2: (-128, 127), 3: (-128, 127), TOPIC_VERSION: (-128, 127),
                  QUALITY_VERSION: (-2**31, 2**31 - 1)}
NO_CLOCK = 255  # the clock byte of versions 4 and 5 for a header without a stream clock (an end of stream)
BUCKETS = 256  # topic buckets: a stream's is the first byte of sha256(stream id)
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


def stream_bucket(stream_id: str | bytes) -> int:
    """The stream's topic bucket, 0..255: the first byte of SHA-256 of its UTF-8 bytes, the same on every
    machine. (Not crc32: CRC is linear, so ids that differ in one character, cam00..cam03, shared a shard.)"""
    return _bucket(stream_id.encode() if isinstance(stream_id, str) else stream_id)


@functools.lru_cache(maxsize=4096)  # every message is checked; a site has a few hundred stream ids
def _bucket(raw: bytes) -> int:
    return hashlib.sha256(raw).digest()[0]


def stream_topic(stream_id: str, version: int = WIRE_VERSION) -> bytes:
    """The prefix every message of this stream in `version` (4 or 5) starts with (and no other stream's: the
    length byte ends it, so cam1's topic is no prefix of cam10's)."""
    raw = stream_id.encode()
    return MAGIC + bytes((_topic_version(version), stream_bucket(raw), len(raw))) + raw


def bucket_topic(bucket: int, version: int = WIRE_VERSION) -> bytes:
    """The prefix of every message in `version` (4 or 5) of the streams in `bucket`."""
    return MAGIC + bytes((_topic_version(version), bucket))


def _topic_version(version: int) -> int:
    if version not in TOPIC_VERSIONS:
        raise ValueError(f"only versions {', '.join(map(str, TOPIC_VERSIONS))} start with the stream's topic")
    return version


def peek(first: bytes) -> tuple[str, bool] | None:
    """(stream id, end of stream) of a message's first part, reading nothing else (the relay counts per
    stream with it); None when that part is not a header of a known version, or too short to tell.
    Nothing else is checked: the monitor does that."""
    if first[:2] != MAGIC or len(first) < 5:
        return None
    version = first[2]
    if version in TOPIC_VERSIONS:
        pos = 4
        flags_at = pos + 1 + first[pos]
    elif version in (1, 2, CLOCK_VERSION):
        pos = _FIXED.size + (_CLOCK.size if version == CLOCK_VERSION else 0)
        flags_at = 3
    else:
        return None
    if flags_at >= len(first) or pos >= len(first):
        return None
    raw = first[pos + 1:pos + 1 + first[pos]]
    return raw.decode(errors="replace"), bool(first[flags_at] & FLAG_END_OF_STREAM)


def peek_reference(first: bytes) -> bool:
    """Whether a version 4 or 5 header has the reference bit (the relay counts references apart from frames);
    False for anything else, checking nothing."""
    if first[:2] != MAGIC or len(first) < 5 or first[2] not in TOPIC_VERSIONS:
        return False
    flags_at = 5 + first[4]
    return flags_at < len(first) and bool(first[flags_at] & FLAG_REFERENCE)


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
    reference: bool = False  # a reference message (version 4 and later): not part of the stream
    has_reference: bool = False  # a coded frame whose reference message follows it (version 4 and later)

    @property
    def version(self) -> int:
        if self.end_of_stream:
            return END_OF_STREAM_VERSION
        return CLOCK_VERSION if self.media_time is not None else PROTOCOL_VERSION

    def pack(self, version: int | None = None) -> bytes:
        """Versions 1-3: the lowest that can express this header (None); TOPIC_VERSION or QUALITY_VERSION
        (WIRE_VERSION, what the capture sends): the topic first. A qp the version's field cannot hold is a
        ValueError, never clamped."""
        sid, mid = self.stream_id.encode(), self.model_id.encode()
        if len(sid) > 255 or len(mid) > 255:
            raise ValueError("stream_id and model_id must each fit in 255 UTF-8 bytes")
        flags = (FLAG_KEYFRAME if self.keyframe else 0) | (FLAG_END_OF_STREAM if self.end_of_stream else 0)
        if version in TOPIC_VERSIONS:
            self._check_qp(version)
            flags |= (FLAG_REFERENCE if self.reference else 0) | (FLAG_HAS_REFERENCE if self.has_reference else 0)
            return self._pack_topic_first(version, sid, mid, flags)
        if self.reference or self.has_reference:
            raise ValueError(f"only version {TOPIC_VERSION} and later carry references")
        if version is not None:
            raise ValueError(f"pack() writes the lowest of versions 1-3, or version "
                             f"{' or '.join(map(str, TOPIC_VERSIONS))}")
        version = self.version
        self._check_qp(version)
        fixed = _FIXED.pack(MAGIC, version, flags, CODEC_IDS[self.codec], self.qp,
                            self.width, self.height, self.label, self.epoch, self.seq, self.capture_time)
        if version == CLOCK_VERSION:
            fixed += _CLOCK.pack(self.media_time, self.duration if self.duration is not None else 0.0,
                                 CLOCKS.index(self.clock or "live"))
        return b"".join((fixed, bytes((len(sid),)), sid, bytes((len(mid),)), mid))

    def _check_qp(self, version: int) -> None:
        low, high = QUALITY_LIMITS[version]
        if not low <= self.qp <= high:
            raise ValueError(f"qp {self.qp} does not fit version {version}'s field ({low}..{high})"
                             + (f": send version {QUALITY_VERSION}" if version < QUALITY_VERSION else ""))

    def _pack_topic_first(self, version: int, sid: bytes, mid: bytes, flags: int) -> bytes:
        timed = self.media_time is not None and not self.end_of_stream
        body = _TOPIC_BODY[version].pack(flags, CODEC_IDS[self.codec], self.qp, self.width, self.height, self.label,
                                self.epoch, self.seq, self.capture_time, self.media_time if timed else 0.0,
                                (self.duration or 0.0) if timed else 0.0,
                                CLOCKS.index(self.clock or "live") if timed else NO_CLOCK)
        head = _TOPIC_HEAD.pack(MAGIC, version, stream_bucket(sid), len(sid))
        return b"".join((head, sid, body, bytes((len(mid),)), mid))

    @classmethod
    def unpack(cls, data: bytes) -> FrameHeader:
        if data[:2] == MAGIC and len(data) > 2 and data[2] in TOPIC_VERSIONS:
            return cls._unpack_topic_first(data)
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
        _check_fields(codec, width, height, ctime)
        pos = _FIXED.size
        media_time = duration = clock = None
        if version == CLOCK_VERSION:
            if len(data) < pos + _CLOCK.size + 2:
                raise ProtocolError("bad_header", f"version 3 header of {len(data)} bytes is too short")
            media_time, duration, clock_id = _CLOCK.unpack_from(data, pos)
            pos += _CLOCK.size
            media_time, duration, clock = _stream_clock(media_time, duration, clock_id)
            if flags & FLAG_END_OF_STREAM:  # the end of stream has no time of its own: read as version 2
                media_time = duration = clock = None
        sid, pos = _string(data, pos)
        mid, pos = _string(data, pos)
        if pos != len(data):
            raise ProtocolError("bad_header", f"{len(data) - pos} trailing bytes after header")
        return cls(sid, seq, ctime, CODEC_NAMES[codec], width, height, qp, bool(flags & FLAG_KEYFRAME),
                   label, mid, epoch, bool(flags & FLAG_END_OF_STREAM), media_time, duration, clock)

    @classmethod
    def _unpack_topic_first(cls, data: bytes) -> FrameHeader:
        """Versions 4 and 5: the topic (bucket, stream id), then the fields, then the model id."""
        if len(data) < _TOPIC_HEAD.size:
            raise ProtocolError("bad_header", f"header of {len(data)} bytes is too short")
        _, version, bucket, _ = _TOPIC_HEAD.unpack_from(data)
        body = _TOPIC_BODY[version]
        sid, pos = _string(data, _TOPIC_HEAD.size - 1)
        if bucket != stream_bucket(sid):
            raise ProtocolError("bad_topic", f"bucket {bucket} is not stream {sid[:64]!r}'s "
                                             f"({stream_bucket(sid)})")
        if len(data) < pos + body.size + 1:
            raise ProtocolError("bad_header", f"version {version} header of {len(data)} bytes is too short")
        (flags, codec, qp, width, height, label, epoch, seq, ctime, media_time, duration,
         clock_id) = body.unpack_from(data, pos)
        pos += body.size
        _check_fields(codec, width, height, ctime)
        _check_reference_flags(flags)
        if clock_id == NO_CLOCK or flags & FLAG_END_OF_STREAM:  # an end of stream has no time of its own
            media_time = duration = clock = None
        else:
            media_time, duration, clock = _stream_clock(media_time, duration, clock_id)
        mid, pos = _string(data, pos)
        if pos != len(data):
            raise ProtocolError("bad_header", f"{len(data) - pos} trailing bytes after header")
        return cls(sid, seq, ctime, CODEC_NAMES[codec], width, height, qp, bool(flags & FLAG_KEYFRAME),
                   label, mid, epoch, bool(flags & FLAG_END_OF_STREAM), media_time, duration, clock,
                   bool(flags & FLAG_REFERENCE), bool(flags & FLAG_HAS_REFERENCE))


def _check_reference_flags(flags: int) -> None:
    """A reference is neither an end of stream nor announces a reference of its own."""
    if flags & FLAG_REFERENCE and flags & (FLAG_END_OF_STREAM | FLAG_HAS_REFERENCE):
        raise ProtocolError("bad_header", f"flags {flags:#04x}: a reference message with the end-of-stream or "
                                          "has-reference bit")
    if flags & FLAG_HAS_REFERENCE and flags & FLAG_END_OF_STREAM:
        raise ProtocolError("bad_header", f"flags {flags:#04x}: an end of stream announcing a reference")


def _check_fields(codec: int, width: int, height: int, ctime: float) -> None:
    """The fields every version has, in the order they were always checked."""
    if codec not in CODEC_NAMES:
        raise ProtocolError("bad_header", f"unknown codec id {codec}")
    if width == 0 or height == 0 or width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise ProtocolError("bad_header", f"frame size {width}x{height}")
    if not 0.0 <= ctime < MAX_CAPTURE_TIME:  # also false for NaN; +-inf are out of range
        raise ProtocolError("bad_time", f"capture time {ctime!r} is not a plausible unix time")


def _stream_clock(media_time: float, duration: float, clock_id: int) -> tuple[float, float, str]:
    if not 0.0 <= media_time < MAX_CAPTURE_TIME:
        raise ProtocolError("bad_time", f"media time {media_time!r} is not a stream time")
    if not 0.0 <= duration <= MAX_FRAME_DURATION:
        raise ProtocolError("bad_time", f"frame duration {duration!r} s is not plausible")
    if clock_id >= len(CLOCKS):
        raise ProtocolError("bad_header", f"unknown stream clock {clock_id}")
    return media_time, duration, CLOCKS[clock_id]


def _string(data: bytes, pos: int) -> tuple[str, int]:
    """A u8-length-prefixed UTF-8 string at `pos`, and the position after it."""
    if pos >= len(data):
        raise ProtocolError("bad_header", "truncated header")
    n = data[pos]
    raw = data[pos + 1:pos + 1 + n]
    if len(raw) != n:
        raise ProtocolError("bad_header", "truncated header")
    try:
        return raw.decode(), pos + 1 + n
    except UnicodeDecodeError:
        raise ProtocolError("bad_header", "stream or model id is not UTF-8") from None


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
