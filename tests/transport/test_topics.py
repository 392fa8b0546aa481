"""Wire versions 4 and 5 (the stream's topic first; 5 with a wide quality field), the monitor's stream
selection (--streams, --shard) and the capture's endpoint roles (pub+bind:, pub+connect:)."""
from __future__ import annotations

import hashlib

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.transport.endpoints import address_of, parse_publish
from edgepipe.transport.protocol import (
    BUCKETS,
    QUALITY_VERSION,
    TOPIC_VERSION,
    TOPIC_VERSIONS,
    WIRE_VERSION,
    FrameHeader,
    ProtocolError,
    parse_message,
    peek,
    stream_bucket,
    stream_topic,
)
from edgepipe.transport.topics import EVERYTHING, StreamSelection, parse_shard, parse_streams, selection


def header(**kw):
    base = dict(stream_id="cam7", seq=7, capture_time=1700000000.25, codec="hevc", width=768, height=432, qp=32,
                keyframe=True, label=217, model_id="ours-1a2b3c4d", epoch=42)
    base.update(kw)
    return FrameHeader(**base)


@pytest.mark.parametrize("version", TOPIC_VERSIONS)
@pytest.mark.parametrize("fields", [
    {},  # no stream clock (a frame of an older capture, replayed)
    dict(media_time=12.5, duration=0.04, clock="timestamps"),
    dict(media_time=0.0, duration=1 / 25, clock="default-fps", stream_id="Kamera ü", seq=2**40, qp=-1),
    dict(end_of_stream=True, keyframe=False),
])
def test_versions_4_and_5_keep_every_field(fields, version):
    h = header(**fields)
    raw = h.pack(version)
    assert raw[2] == version
    assert FrameHeader.unpack(raw) == h
    assert parse_message([raw, b"" if h.end_of_stream else b"x"])[0] == h


@pytest.mark.parametrize("version", TOPIC_VERSIONS)
def test_an_end_of_stream_carries_no_time_in_versions_4_and_5(version):
    end = header(media_time=3.0, duration=0.04, clock="fps", end_of_stream=True, keyframe=False)
    back = FrameHeader.unpack(end.pack(version))
    assert back.end_of_stream and back.media_time is None and back.clock is None


def test_the_capture_sends_version_5():
    assert WIRE_VERSION == QUALITY_VERSION == 5 and TOPIC_VERSIONS == (4, 5)


@pytest.mark.parametrize("codec, qp", [("jpeg2000", 200), ("jpeg2000", 1000), ("jpeg2000", 1), ("jpeg", 100),
                                       ("hevc", 51), ("hevc", -1), ("jpeg2000", 2**31 - 1)])
def test_version_5_carries_every_codecs_setting_whole(codec, qp):
    """Version 4's i8 held 127 at most: a JPEG 2000 rate x1000 of 200 was sent as 127."""
    h = header(codec=codec, qp=qp, media_time=1.0, duration=0.04, clock="fps")
    raw = h.pack(WIRE_VERSION)
    back, _ = parse_message([raw, b"x"])
    assert back.qp == qp and back == h
    if -128 <= qp <= 127:  # what version 4 could hold: version 5 is the same header, 3 bytes longer
        assert len(raw) == len(h.pack(TOPIC_VERSION)) + 3


@pytest.mark.parametrize("version, qp", [(TOPIC_VERSION, 200), (TOPIC_VERSION, -129), (None, 1000),
                                         (QUALITY_VERSION, 2**31)])
def test_a_qp_the_versions_field_cannot_hold_is_refused_not_clamped(version, qp):
    with pytest.raises(ValueError, match=f"qp {qp} does not fit version"):
        header(codec="jpeg2000", qp=qp).pack(version)


def test_a_version_4_message_of_an_older_capture_still_reads():
    """Written byte by byte as the captures of the release before did (qp an i8 right after the codec)."""
    import struct

    sid, mid = b"cam1", b"none"
    raw = (b"EP\x04" + bytes([stream_bucket("cam1"), len(sid)]) + sid
           + struct.pack("<BBbHHiIQdddB", 1, 3, 127, 64, 48, -1, 9, 5, 1700000000.0, 0.2, 0.04, 2)
           + bytes([len(mid)]) + mid)
    h, _ = parse_message([raw, b"x"])
    assert (h.stream_id, h.codec, h.qp, h.width, h.height, h.epoch, h.seq, h.keyframe, h.clock) == (
        "cam1", "jpeg2000", 127, 64, 48, 9, 5, True, "fps")
    assert raw == h.pack(TOPIC_VERSION)


def test_the_topic_is_the_header_prefix_and_names_one_stream_only():
    raw = header(stream_id="cam1").pack(WIRE_VERSION)
    assert raw.startswith(stream_topic("cam1"))
    assert not header(stream_id="cam10").pack(WIRE_VERSION).startswith(stream_topic("cam1"))  # the length byte
    assert stream_topic("cam1") == b"EP\x05" + bytes([hashlib.sha256(b"cam1").digest()[0], 4]) + b"cam1"
    assert stream_topic("cam1", TOPIC_VERSION) == b"EP\x04" + stream_topic("cam1")[3:]
    assert header(stream_id="cam1").pack(TOPIC_VERSION).startswith(stream_topic("cam1", TOPIC_VERSION))
    assert raw[3] == stream_bucket("cam1") == hashlib.sha256(b"cam1").digest()[0]
    with pytest.raises(ValueError, match="start with the stream's topic"):
        stream_topic("cam1", 3)


def test_ids_that_differ_in_one_character_spread_over_the_shards():
    """crc32 is linear: cam00..cam03 all had an even bucket, so one monitor of two took every camera."""
    assert {stream_bucket(f"cam{i:02d}") % 2 for i in range(4)} == {0, 1}
    assert len({stream_bucket(f"cam{i:02d}") % 4 for i in range(8)}) == 4


@pytest.mark.parametrize("version", TOPIC_VERSIONS)
def test_a_bucket_that_is_not_the_stream_ids_is_rejected_as_bad_topic(version):
    raw = bytearray(header(stream_id="cam1").pack(version))
    raw[3] = (raw[3] + 1) % 256  # another stream's bucket: a sharded monitor must never get it under this name
    with pytest.raises(ProtocolError) as info:
        parse_message([bytes(raw), b"x"])
    assert info.value.cause == "bad_topic"


@pytest.mark.parametrize("version", TOPIC_VERSIONS)
@pytest.mark.parametrize("cut", [3, 4, 5, 8, 20, -1])
def test_a_truncated_version_4_or_5_header_is_bad_header(cut, version):
    raw = header().pack(version)
    with pytest.raises(ProtocolError) as info:
        FrameHeader.unpack(raw[:cut])
    assert info.value.cause == "bad_header"


def test_peek_reads_the_stream_and_the_end_flag_of_every_version():
    timed = header(media_time=1.0, duration=0.04, clock="fps")
    end = header(end_of_stream=True, keyframe=False)
    for raw, expected in [(timed.pack(TOPIC_VERSION), ("cam7", False)), (timed.pack(), ("cam7", False)),
                          (header().pack(), ("cam7", False)), (end.pack(), ("cam7", True)),
                          (end.pack(TOPIC_VERSION), ("cam7", True)), (timed.pack(WIRE_VERSION), ("cam7", False)),
                          (end.pack(WIRE_VERSION), ("cam7", True))]:
        assert peek(raw) == expected, raw[:3]
    for raw in (b"", b"EP", b"EP\x04\x01", b"EP\x05\x01", b"XX" + header().pack()[2:], b"EP\x09" + bytes(60),
                b"EP\x06" + bytes(60)):
        assert peek(raw) is None


# --- the monitor's selection -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 100, 255, 256])
def test_the_shards_of_one_n_are_disjoint_and_take_every_bucket(n):
    seen: dict[bytes, int] = {}
    for k in range(n):
        for topic in StreamSelection(shard=(k, n)).topics():
            assert topic not in seen
            seen[topic] = k
    if n == 1:
        assert list(seen) == [EVERYTHING]
    else:
        # in both wire versions with a topic: a capture of the release before sends version 4
        assert sorted(seen) == sorted(b"EP" + bytes([v, b]) for v in (4, 5) for b in range(BUCKETS))


def test_a_shard_takes_exactly_the_streams_its_topics_match():
    names = [f"cam{i}" for i in range(64)]
    for n in (2, 3, 8):
        taken = set()
        for k in range(n):
            sel = StreamSelection(shard=(k, n))
            topics = sel.topics()
            for name in names:
                matched = any(header(stream_id=name).pack(WIRE_VERSION).startswith(t) for t in topics)
                assert matched == sel.takes(name)
                assert matched == any(header(stream_id=name).pack(TOPIC_VERSION).startswith(t) for t in topics)
                if matched:
                    assert name not in taken
                    taken.add(name)
        assert taken == set(names)


def test_streams_take_exactly_those_streams():
    sel = selection("cam1,cam3", None)
    topics = sel.topics()
    for name in ("cam1", "cam3", "cam10", "cam", "cam2"):
        for version in TOPIC_VERSIONS:
            matched = any(header(stream_id=name).pack(version).startswith(t) for t in topics)
            assert matched == (name in ("cam1", "cam3")) == sel.takes(name)
    assert selection(None, None).topics() == [EVERYTHING]


@pytest.mark.parametrize("spec, message", [
    ("3/2", "K must be 0..1"),
    ("0/0", "N must be 1..256"),
    ("0/257", "N must be 1..256"),
    ("2", "a shard is K/N"),
    ("a/b", "a shard is K/N"),
    ("-1/2", "a shard is K/N"),
    ("1/", "a shard is K/N"),
])
def test_a_bad_shard_is_one_line(spec, message):
    with pytest.raises(EdgepipeError, match=message):
        parse_shard(spec)


def test_stream_lists_and_exclusive_flags():
    assert parse_streams("cam1, cam3,cam1") == ("cam1", "cam3")
    with pytest.raises(EdgepipeError, match="empty name"):
        parse_streams("cam1,,cam3")
    with pytest.raises(EdgepipeError, match="over 255 bytes"):
        parse_streams("x" * 256)
    with pytest.raises(EdgepipeError, match="exclusive"):
        selection("cam1", "0/2")


# --- endpoint roles --------------------------------------------------------------------------------

def test_publish_endpoints_say_their_role():
    assert parse_publish("tcp://0.0.0.0:5555") == parse_publish("pub+bind:tcp://0.0.0.0:5555")
    assert not parse_publish("tcp://0.0.0.0:5555").connect
    target = parse_publish("pub+connect:tcp://relay:5555")
    assert target.connect and target.address == "tcp://relay:5555"
    assert address_of("pub+connect:tcp://127.0.0.1:5") == "tcp://127.0.0.1:5"
    assert address_of("camera:5555") == "camera:5555"  # no role: a malformed endpoint, for the endpoint check
    for bad, message in [("pub+bnd:tcp://relay:5555", r"unknown role 'pub\+bnd'"),
                         ("pub+connect:", "names a role but no address")]:
        with pytest.raises(EdgepipeError, match=message):
            parse_publish(bad)
