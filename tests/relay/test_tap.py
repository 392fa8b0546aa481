"""The relay's tap reads the headers of wire versions 4 and 5 alike (issue 10: version 5 widens qp)."""
from __future__ import annotations

import zmq

from edgepipe.relay.tap import Tap, stream_of_topic
from edgepipe.transport.protocol import TOPIC_VERSION, WIRE_VERSION, FrameHeader, stream_topic
from edgepipe.transport.topics import StreamSelection


def test_a_stream_named_in_both_wire_versions_is_one_subscription_and_both_versions_count():
    ctx = zmq.Context()
    tap = Tap(ctx, "inproc://edgepipe-test-tap")
    try:
        assert stream_of_topic(stream_topic("cam1", TOPIC_VERSION)) == stream_of_topic(stream_topic("cam1")) == "cam1"
        assert stream_of_topic(b"EP\x06" + stream_topic("cam1")[3:]) is None
        for topic in StreamSelection(streams=("cam1", "cam2")).topics():  # what a monitor --streams sends
            tap.count([b"\x01" + topic])
        assert dict(tap.subscriptions_by_stream) == {"cam1": 1, "cam2": 1} and len(tap.topics) == 4
        old = FrameHeader("cam1", 0, 1.0, "jpeg2000", 8, 8, 127, True).pack(TOPIC_VERSION)
        new = FrameHeader("cam1", 1, 1.0, "jpeg2000", 8, 8, 200, True).pack(WIRE_VERSION)
        ref = FrameHeader("cam1", 1, 1.0, "jpeg", 8, 8, 95, True, reference=True).pack(WIRE_VERSION)
        end = FrameHeader("cam1", 2, 1.0, "jpeg2000", 8, 8, 200, False, end_of_stream=True).pack(WIRE_VERSION)
        for first in (old, new, ref, end, b"EP\x06" + new[3:]):
            tap.count([first, b"x"])
        assert (tap.frames["cam1"], tap.references["cam1"], tap.ends["cam1"], tap.unrecognised) == (2, 1, 1, 1)
    finally:
        tap.sock.close(0)
        ctx.term()
