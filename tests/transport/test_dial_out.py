"""The capture's Publisher dialling out (pub+connect:) to a bound XSUB, as to a relay, and subscription
tracking by topic: wait_for_subscriber means "a subscription that takes my stream"."""
from __future__ import annotations

import time

import pytest
import zmq

from edgepipe.core.errors import EdgepipeError
from edgepipe.transport.protocol import WIRE_VERSION, FrameHeader, parse_message, stream_topic
from edgepipe.transport.security import CurveClient, CurveServer, KeyPair, ZapHandler, dial_out_curve
from edgepipe.transport.sockets import Publisher, free_tcp_endpoint
from edgepipe.transport.topics import StreamSelection


def frame(stream: str, seq: int) -> FrameHeader:
    return FrameHeader(stream, seq, time.time(), "jpeg", 16, 16, 80, True)


class Upstream:
    """A bound XSUB, what a relay's camera side is."""

    def __init__(self):
        self.endpoint = free_tcp_endpoint()
        self.sock = zmq.Context.instance().socket(zmq.XSUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)

    def subscribe(self, *topics: bytes) -> None:
        for t in topics:
            self.sock.send(b"\x01" + t)

    def unsubscribe(self, *topics: bytes) -> None:
        for t in topics:
            self.sock.send(b"\x00" + t)

    def recv(self, timeout_ms: int = 3000):
        return self.sock.recv_multipart() if self.sock.poll(timeout_ms) else None

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.close()


def test_a_publisher_dials_out_and_waits_for_a_subscription_that_takes_its_stream(upstream):
    pub = Publisher("pub+connect:" + upstream.endpoint, stream_id="door")
    try:
        assert pub.dials_out and pub.bound_endpoint == upstream.endpoint
        assert not pub.wait_for_subscriber(0.3)  # nobody subscribed yet
        other = next(k for k in range(2) if not StreamSelection(shard=(k, 2)).takes("door"))
        upstream.subscribe(*StreamSelection(shard=(other, 2)).topics())  # the other shard: not for us
        assert not pub.wait_for_subscriber(0.5) and len(pub.topics) == 2 * 128  # in wire versions 4 and 5
        upstream.subscribe(stream_topic("door"))
        assert pub.wait_for_subscriber(3.0)
        assert pub.send(frame("door", 0), b"payload")
        parts = upstream.recv()
        assert parts is not None and parts[0][2] == WIRE_VERSION and parts[0].startswith(stream_topic("door"))
        assert parse_message(parts)[0].stream_id == "door"
        upstream.unsubscribe(stream_topic("door"))
        deadline = time.monotonic() + 3
        while stream_topic("door") in pub.topics and time.monotonic() < deadline:
            pub.poll_subscriptions(50)
        assert pub.send(frame("door", 1), b"payload") and pub.unsubscribed == 1  # counted: nobody took it
    finally:
        pub.close()


def test_before_the_stream_is_known_any_edgepipe_subscription_counts(upstream):
    pub = Publisher("pub+connect:" + upstream.endpoint)
    try:
        upstream.subscribe(b"XYZ")  # takes no edgepipe message
        assert not pub.wait_for_subscriber(0.5)
        upstream.subscribe(StreamSelection(shard=(1, 8)).topics()[0])
        assert pub.wait_for_subscriber(3.0)
        pub.send(frame("cam", 0), b"x")
        assert pub.stream_id == "cam"  # learnt from the first frame: from now on, its own topic decides
    finally:
        pub.close()


def test_topics_are_bounded_in_bytes_too(upstream):
    """64 KiB of topics (the old bound for 1,000-byte topics): beyond, the socket connects again."""
    pub = Publisher("pub+connect:" + upstream.endpoint, max_topic_bytes=10_000)
    try:
        # connected first: a subscription the XSUB sends before the dialling side's connection is up is lost
        deadline = time.monotonic() + 5
        while not pub.topics and time.monotonic() < deadline:
            upstream.subscribe(b"EP")
            pub.poll_subscriptions(50)
        assert pub.topics
        upstream.subscribe(*(b"%05d" % i + bytes(995) for i in range(12)))
        deadline = time.monotonic() + 5
        while pub.subscription_floods == 0 and time.monotonic() < deadline:
            pub.poll_subscriptions(50)
        assert pub.subscription_floods == 1 and pub.topic_bytes < 10_000
    finally:
        pub.close()


def test_a_dialling_capture_takes_the_relay_key_from_its_one_allowed_key():
    keys = KeyPair(*zmq.curve_keypair())
    relay = zmq.curve_keypair()[0]
    client = dial_out_curve(CurveServer(keys, frozenset({relay})))
    assert client == CurveClient(keys, relay)
    with pytest.raises(EdgepipeError, match="exactly one key"):
        dial_out_curve(CurveServer(keys, frozenset({relay, zmq.curve_keypair()[0]})))


def test_the_zap_handler_keeps_one_allow_list_per_domain():
    camera, monitor = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    zap = ZapHandler(zmq.Context.instance(), None, domains={b"cams": [camera], b"mons": [monitor]})

    def ask(domain: bytes, key: bytes) -> bytes:
        raw = zmq.utils.z85.decode(key)
        return zap._answer([b"1.0", b"1", domain, b"10.0.0.9", b"", b"CURVE", raw])[2]

    assert ask(b"cams", camera) == b"200" and ask(b"mons", monitor) == b"200"
    assert ask(b"cams", monitor) == b"400" and ask(b"mons", camera) == b"400"  # each side its own keys
    assert ask(b"other", camera) == b"400"
    assert zap.denied_by_domain == {("cams", "unknown_key"): 1, ("mons", "unknown_key"): 1,
                                    ("other", "unknown_domain"): 1}
    assert zap.accepted_by_domain == {"cams": 1, "mons": 1}


def test_the_zap_handler_ends_quietly_when_its_context_is_terminated(monkeypatch):
    """A second Ctrl-C terminates the context while the handler polls: its thread ends, without a traceback."""
    import threading

    failures = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    ctx = zmq.Context()
    zap = ZapHandler(ctx, None).start()
    ctx.term()  # returns once the handler has closed its socket
    zap._thread.join(5)
    assert not zap._thread.is_alive() and failures == []
