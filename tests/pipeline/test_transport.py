import struct

import pytest

from edgepipe.errors import EdgepipeError
from edgepipe.pipeline.demo import free_tcp_endpoint
from edgepipe.pipeline.transport import FrameHeader, ProtocolError, Publisher, Subscriber, parse_message


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
    assert len(header().pack()) < 64


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
