import struct

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.transport.protocol import _FIXED, FrameHeader, ProtocolError, parse_message
from edgepipe.transport.sockets import Publisher, SocketDefaults, Subscriber, free_tcp_endpoint


def header(**kw):
    base = dict(stream_id="cam0", seq=7, capture_time=1700000000.25, codec="hevc", width=768, height=432, qp=32,
                keyframe=True, label=217, model_id="ours-1a2b3c4d", epoch=42)
    base.update(kw)
    return FrameHeader(**base)


def test_header_roundtrip_keeps_every_field():
    h = header()
    assert FrameHeader.unpack(h.pack()) == h
    h2 = header(keyframe=False, label=-1, qp=-1, codec="jpeg2000", stream_id="Kamera ü", seq=2**40)
    assert FrameHeader.unpack(h2.pack()) == h2


def test_header_is_small():
    assert len(header().pack()) < 64  # version 1
    assert len(header(media_time=12.5, duration=0.04, clock="timestamps").pack()) < 64 + 17  # version 3: 17 more


def test_a_frame_with_a_stream_clock_is_version_3_and_keeps_it():
    for clock in ("live", "timestamps", "fps", "default-fps"):
        h = header(media_time=1234.56, duration=0.08, clock=clock)
        raw = h.pack()
        assert raw[2] == 3
        assert FrameHeader.unpack(raw) == h
    # no stream clock: the version 1 frame of earlier captures, read as before
    old = header()
    assert old.pack()[2] == 1 and FrameHeader.unpack(old.pack()).media_time is None
    # the end of stream stays version 2, whatever the last frame carried
    end = header(media_time=3.0, duration=0.04, clock="fps", end_of_stream=True, keyframe=False)
    assert end.pack()[2] == 2
    back = FrameHeader.unpack(end.pack())
    assert back.end_of_stream and back.media_time is None


@pytest.mark.parametrize("fields, cause", [
    (dict(media_time=float("nan")), "bad_time"),
    (dict(media_time=-1.0), "bad_time"),
    (dict(media_time=float("inf")), "bad_time"),
    (dict(duration=float("nan")), "bad_time"),
    (dict(duration=-0.04), "bad_time"),
    (dict(duration=3601.0), "bad_time"),
])
def test_implausible_stream_times_are_rejected(fields, cause):
    h = header(**{"media_time": 1.0, "duration": 0.04, "clock": "fps", **fields})
    with pytest.raises(ProtocolError) as info:
        FrameHeader.unpack(h.pack())
    assert info.value.cause == cause


def test_version_3_header_checks_its_own_fields():
    raw = bytearray(header(media_time=1.0, duration=0.04, clock="fps").pack())
    clock_at = _FIXED.size + 16  # after media_time and duration
    raw[clock_at] = 4  # no such clock
    with pytest.raises(ProtocolError, match="unknown stream clock") as info:
        FrameHeader.unpack(bytes(raw))
    assert info.value.cause == "bad_header"
    v1 = bytearray(header().pack())
    v1[2] = 3  # a version 1 body claiming version 3: too short or misread, never accepted as a frame
    with pytest.raises(ProtocolError):
        FrameHeader.unpack(bytes(v1))


@pytest.mark.parametrize("mutate,cause", [
    (lambda b: b[:10], "bad_header"),
    (lambda b: b"XX" + b[2:], "bad_header"),
    (lambda b: b[:2] + bytes([9]) + b[3:], "bad_version"),
    (lambda b: b[:4] + bytes([77]) + b[5:], "bad_header"),
    (lambda b: b + b"extra", "bad_header"),
    (lambda b: b[:-3], "bad_header"),
])
def test_bad_headers_are_rejected_with_a_cause(mutate, cause):
    with pytest.raises(ProtocolError) as info:
        FrameHeader.unpack(mutate(header().pack()))
    assert info.value.cause == cause


def test_zero_size_and_non_utf8_ids_are_rejected():
    raw = bytearray(header().pack())
    struct.pack_into("<H", raw, 6, 0)  # width = 0
    with pytest.raises(ProtocolError):
        FrameHeader.unpack(bytes(raw))
    good = header(stream_id="ab").pack()
    bad = good.replace(b"\x02ab", b"\x02\xff\xfe")
    with pytest.raises(ProtocolError, match="UTF-8"):
        FrameHeader.unpack(bad)


def test_message_framing():
    h = header().pack()
    assert parse_message([h, b"payload"])[1] == b"payload"
    for parts, cause in [([h], "bad_framing"), ([h, b"x", b"y"], "bad_framing"), ([h, b""], "empty_payload")]:
        with pytest.raises(ProtocolError) as info:
            parse_message(parts)
        assert info.value.cause == cause


def test_pub_sub_over_loopback_and_endpoint_in_use():
    endpoint = free_tcp_endpoint()
    pub = Publisher(endpoint)
    sub = Subscriber(endpoint)
    try:
        assert pub.wait_for_subscriber(5.0)
        assert pub.send(header(), b"\x00\x01payload")
        parts = sub.recv(timeout_ms=5000)
        assert parse_message(parts) == (header(), b"\x00\x01payload")
        with pytest.raises(EdgepipeError, match="already in use"):
            Publisher(endpoint)
    finally:
        pub.close()
        sub.close()


def test_a_small_send_buffer_shows_a_hung_subscriber_within_a_few_frames():
    """A subscriber that stops reading fills the publisher's queue only once the kernel buffers are full: set
    before bind, send_buffer_bytes bounds the publisher's, so the first refused send comes within a few 12 KB
    frames. Without it loopback's buffer grows to megabytes (here: over 100 frames unrefused)."""
    import os

    import zmq

    endpoint = free_tcp_endpoint()
    pub = Publisher(endpoint, SocketDefaults(send_hwm=2, send_buffer_bytes=8192))
    hung = zmq.Context.instance().socket(zmq.SUB)
    hung.setsockopt(zmq.RCVHWM, 2)
    hung.setsockopt(zmq.RCVBUF, 8192)
    hung.setsockopt(zmq.SUBSCRIBE, b"")
    hung.connect(endpoint)
    payload = os.urandom(12_000)
    try:
        assert pub.wait_for_subscriber(5.0)
        sent = 0
        while sent < 100 and pub.send(header(seq=sent), payload, timeout=0.1):
            sent += 1
        assert sent < 16, sent
    finally:
        pub.close()
        hung.close(0)


def test_free_endpoints_are_never_handed_out_twice(monkeypatch) -> None:
    """The OS may give back the port it has just released; the helper asks again rather than return it twice."""
    import socket

    from edgepipe.transport import sockets

    offered = iter([61001, 61001, 61001, 61002])

    class FakeSocket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(offered)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(sockets, "_handed_out_ports", set())
    monkeypatch.setattr(socket, "socket", FakeSocket)
    assert sockets.free_tcp_endpoint() == "tcp://127.0.0.1:61001"
    assert sockets.free_tcp_endpoint() == "tcp://127.0.0.1:61002"
