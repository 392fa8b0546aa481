"""Fuzz the monitor's socket: 12,000 malformed, truncated, oversized, replayed and random messages
interleaved on the same connection with a real HEVC stream. The monitor never crashes, counts every
reject under the cause the message was built to hit, and the real stream's accounting stays exact.
(The attacks of issue 11 that need more than one bad message are in test_hostile.py.)"""
from __future__ import annotations

import struct
import time
from collections import Counter

import numpy as np
import pytest
import zmq

from edgepipe.media.codecs import HevcEncoder
from edgepipe.server.monitor import Monitor
from edgepipe.transport.protocol import MAX_DIMENSION, TOPIC_VERSIONS, WIRE_VERSION, FrameHeader
from edgepipe.transport.sockets import SocketDefaults, Subscriber, free_tcp_endpoint

from field_helpers import Running, decode_frames, wait_for

N_FUZZ = 12_000
REAL, EPOCH, GOP = "real-cam", 7, 10
MAX_STREAMS = 16


@pytest.fixture(scope="module")
def real_stream(video_clip):
    """60 real HEVC frames (384x216, GOP 10) as wire messages of this release (version 5, the topic first)."""
    frames = decode_frames(video_clip, 60, (384, 216))
    enc = HevcEncoder(384, 216, qp=30, gop=GOP)
    msgs = []
    for seq, image in enumerate(frames):
        (packet,) = enc.encode(image)
        h = FrameHeader(REAL, seq, time.time(), "hevc", 384, 216, 30, packet.keyframe, -1, "none", EPOCH)
        msgs.append([h.pack(WIRE_VERSION), packet.data])
    return msgs


class Fuzzer:
    """Builds hostile messages, each with the reject cause it must land in (a set where either
    of two outcomes of a real decoder is right). Sequencing state is simulated so every expected
    cause is exact: fuzz streams get increasing seqs, new stream ids hit the stream cap."""

    def __init__(self, rng: np.random.Generator, real: list[list[bytes]]):
        self.rng, self.real = rng, real
        self.seq = Counter()
        self.streams = 0  # (stream, epoch) states the monitor will have created
        self.new_ids = 0
        self.kinds = [self.random_single, self.too_many_parts, self.random_header, self.truncated_header,
                      self.trailing_bytes, self.bad_version, self.bad_codec, self.bad_size, self.bad_utf8,
                      self.empty_payload, self.oversized, self.waiting, self.hevc_garbage, self.jpeg_garbage,
                      self.replay, self.new_stream, self.bad_topic, self.truncated_v4, self.trailing_v4]

    def header(self, stream="fz-hdr", codec="hevc", keyframe=True, w=64, h=64, seq=None) -> bytes:
        if seq is None:
            seq = self.seq[stream]
            self.seq[stream] += 1
        return FrameHeader(stream, seq, time.time(), codec, w, h, 30, keyframe, -1, "fuzz", 1).pack()

    def rand(self, lo, hi) -> bytes:
        return self.rng.bytes(int(self.rng.integers(lo, hi)))

    def random_single(self, sent):
        return [self.rand(0, 300)], {"bad_framing"}

    def too_many_parts(self, sent):
        return [self.rand(1, 80) for _ in range(int(self.rng.integers(3, 6)))], {"bad_framing"}

    def random_header(self, sent):
        head = self.rand(0, 120)
        if head[:2] == b"EP":
            head = b"X" + head[1:]
        return [head, self.rand(1, 500)], {"bad_header"}

    def truncated_header(self, sent):
        # no stream id: a truncated header never creates state (the cut lands in the fixed part or the ids)
        h = FrameHeader("t", 0, 0.0, "hevc", 64, 64, 30, True).pack()
        return [h[:int(self.rng.integers(0, len(h)))], self.rand(1, 100)], {"bad_header"}

    def trailing_bytes(self, sent):
        h = FrameHeader("t", 0, 0.0, "hevc", 64, 64, 30, True).pack()
        return [h + self.rand(1, 40), self.rand(1, 100)], {"bad_header"}

    def bad_version(self, sent):
        h = bytearray(FrameHeader("t", 0, 0.0, "hevc", 64, 64, 30, True).pack())
        h[2] = int(self.rng.integers(6, 256))  # 1 to 5 are spoken
        return [bytes(h), self.rand(1, 100)], {"bad_version"}

    def bad_codec(self, sent):
        h = bytearray(FrameHeader("t", 0, 0.0, "hevc", 64, 64, 30, True).pack())
        h[4] = int(self.rng.choice([0, *range(4, 256)]))
        return [bytes(h), self.rand(1, 100)], {"bad_header"}

    def bad_size(self, sent):
        h = bytearray(FrameHeader("t", 0, 0.0, "hevc", 64, 64, 30, True).pack())
        w = int(self.rng.choice([0, MAX_DIMENSION + 1, 65535]))
        struct.pack_into("<H", h, 6 + 2 * int(self.rng.integers(0, 2)), w)
        return [bytes(h), self.rand(1, 100)], {"bad_header"}

    def bad_utf8(self, sent):
        h = FrameHeader("ab", 0, 0.0, "hevc", 64, 64, 30, True).pack().replace(b"\x02ab", b"\x02\xff\xfe")
        return [h, self.rand(1, 100)], {"bad_header"}

    def empty_payload(self, sent):
        return [self.header("fz-hdr"), b""], {"empty_payload"}

    def oversized(self, sent):  # a 16x16 frame may not carry more than 4 bytes a pixel + 64 KiB
        return [self.header("fz-big", w=16, h=16), self.rand(70_000, 90_000)], {"oversized"}

    def _state(self, stream):
        if self.seq[stream] == 0:
            self.streams += 1

    def waiting(self, sent):  # P-frames of a stream that never had a keyframe
        self._state("fz-wait")
        return [self.header("fz-wait", keyframe=False), self.rand(1, 3000)], {"waiting_for_keyframe"}

    def hevc_garbage(self, sent):  # "keyframes" of random bytes: the decoder fails or yields nothing
        self._state("fz-hevc")
        return [self.header("fz-hevc", keyframe=True), self.rand(1, 3000)], {"undecodable", "no_picture"}

    def jpeg_garbage(self, sent):
        self._state("fz-jpeg")
        body = self.rand(1, 3000)
        if body[:2] == b"\xff\xd8":
            body = b"\x00" + body[1:]
        return [self.header("fz-jpeg", codec="jpeg"), body], {"undecodable"}

    def replay(self, sent):  # a real frame the monitor already has: a duplicate, never decoded twice
        if sent == 0:
            return self.random_single(sent)
        return list(self.real[int(self.rng.integers(0, sent))]), {"out_of_order"}

    def new_stream(self, sent):  # invented stream ids: past the cap, each takes the slot of the least
        self.new_ids += 1         # recently seen id that never decoded a frame (never the real stream's)
        stream = f"fz-new-{self.new_ids}"
        return [self.header(stream, keyframe=False), self.rand(1, 100)], {"waiting_for_keyframe"}

    def topic_version(self) -> int:
        return int(self.rng.choice(TOPIC_VERSIONS))

    def bad_topic(self, sent):  # a version 4 or 5 topic whose bucket is another stream's: never routed under it
        h = bytearray(FrameHeader(REAL, 0, 0.0, "hevc", 64, 64, 30, True).pack(self.topic_version()))
        h[3] = (h[3] + int(self.rng.integers(1, 256))) % 256
        return [bytes(h), self.rand(1, 100)], {"bad_topic"}

    def truncated_v4(self, sent):  # versions 4 and 5
        h = FrameHeader("t4", 0, 0.0, "hevc", 64, 64, 30, True).pack(self.topic_version())
        return [h[:int(self.rng.integers(0, len(h)))], self.rand(1, 100)], {"bad_header"}

    def trailing_v4(self, sent):  # versions 4 and 5
        h = FrameHeader("t4", 0, 0.0, "hevc", 64, 64, 30, True).pack(self.topic_version())
        return [h + self.rand(1, 40), self.rand(1, 100)], {"bad_header"}

    def next(self, sent: int):
        kind = self.kinds[int(self.rng.integers(0, len(self.kinds)))]
        return kind(sent)


def _send(sock, parts) -> None:
    while True:
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
            return
        except zmq.Again:  # NODROP: wait for the monitor instead of losing a message
            time.sleep(0.001)


def test_fuzz_interleaved_with_a_real_stream(real_stream):
    endpoint = free_tcp_endpoint()
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.setsockopt(zmq.SNDHWM, 1000)
    pub.bind(endpoint)
    sub = Subscriber(endpoint)
    mon = Monitor(None, sub, max_streams=MAX_STREAMS)
    run = Running(mon.run)
    fuzz = Fuzzer(np.random.default_rng(20240611), real_stream)
    expected: list[set[str]] = []
    try:
        assert pub.poll(5000)  # the monitor's subscription
        pub.recv()
        per_frame = N_FUZZ // len(real_stream)
        t0 = time.monotonic()
        # every fixed fuzz stream exists before invented ids arrive, so the cap is hit predictably
        fuzz.streams = 1  # the real stream's state comes with its first frame, sent first
        _send(pub, real_stream[0])
        for i in range(N_FUZZ):
            if i and i % per_frame == 0 and i // per_frame < len(real_stream):
                _send(pub, real_stream[i // per_frame])
            parts, causes = fuzz.next(sent=min(i // per_frame + 1, len(real_stream)))
            expected.append(causes)
            _send(pub, parts)
        total = N_FUZZ + len(real_stream)
        assert wait_for(lambda: mon.messages >= total, 60), f"monitor stalled at {mon.messages}/{total}"
        elapsed = time.monotonic() - t0
    finally:
        run.stop()
        sub.close()
        pub.close(0)
    assert run.thread is not None and run.error is None  # never crashed
    rep = mon.report()
    assert rep["messages"] == N_FUZZ + len(real_stream)
    assert sum(rep["rejects"].values()) == N_FUZZ  # every hostile message counted, once

    # every cause matches what the message was built to hit
    exact = Counter(next(iter(c)) for c in expected if len(c) == 1)
    either = sum(1 for c in expected if len(c) > 1)
    got = Counter(rep["rejects"])
    assert got["undecodable"] + got["no_picture"] == exact["undecodable"] + either
    for cause, n in exact.items():
        if cause != "undecodable":
            assert got[cause] == n, (cause, got[cause], n)
    assert exact["out_of_order"] > 0 and exact["oversized"] > 0 and exact["bad_topic"] > 0
    assert rep["expired"]["streams"] >= fuzz.new_ids - MAX_STREAMS  # invented ids were folded, not kept

    # the real stream is untouched: every frame decoded, no loss, no duplicate counted
    real = [s for s in rep["streams"] if s["stream"] == REAL]
    assert real == [{"stream": REAL, "epoch": EPOCH, "received": len(real_stream), "lost": 0}]
    row = next(r for r in rep["rows"] if r["stream"] == REAL)
    assert row["frames"] == len(real_stream) == rep["decoded"]
    assert row["bytes"] == sum(len(m[1]) for m in real_stream)
    assert len({sid for sid, _ in mon.streams}) == MAX_STREAMS  # memory stays bounded under invented ids
    assert elapsed < 45


def test_a_message_over_the_transport_cap_costs_only_its_sender_the_connection(real_stream):
    """ZeroMQ refuses parts over max_message_bytes unread and drops that peer; a real stream on
    another connection to the same monitor carries on, exactly."""
    real_ep, hostile_ep = free_tcp_endpoint(), free_tcp_endpoint()
    ctx = zmq.Context.instance()
    socks = []
    for ep in (real_ep, hostile_ep):
        s = ctx.socket(zmq.XPUB)
        s.setsockopt(zmq.XPUB_NODROP, 1)
        s.bind(ep)
        socks.append(s)
    real_pub, hostile = socks
    sub = Subscriber(real_ep, SocketDefaults(max_message_bytes=200_000))
    sub.sock.connect(hostile_ep)
    mon = Monitor(None, sub)
    run = Running(mon.run)
    try:
        assert real_pub.poll(5000) and hostile.poll(5000)
        real_pub.recv(), hostile.recv()
        for i, msg in enumerate(real_stream):
            _send(real_pub, msg)
            if i % 10 == 5:
                h = FrameHeader("evil", i, 0.0, "hevc", 4096, 4096, 30, True).pack()
                try:
                    hostile.send_multipart([h, bytes(1_000_000)], flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # already cut off and not yet reconnected
        assert wait_for(lambda: mon.decoded >= len(real_stream), 20)
    finally:
        run.stop()
        sub.close()
        for s in socks:
            s.close(0)
    rep = mon.report()
    assert rep["decoded"] == len(real_stream) and rep["lost"] == 0 and not rep["rejects"]
    assert {s["stream"] for s in rep["streams"]} == {REAL}  # nothing of the oversized sender got through


def test_the_stream_cap_never_locks_out_a_restarted_camera(real_stream):
    """A camera restarted hundreds of times (new epoch each time) stays welcome; invented ids do not."""
    mon = Monitor(None, max_streams=2)
    keyframe = real_stream[0]

    def frame(stream, epoch):
        h = FrameHeader.unpack(keyframe[0])
        h.stream_id, h.epoch = stream, epoch
        return [h.pack(), keyframe[1]]

    for epoch in range(300):
        assert mon.handle(frame("cam-a", epoch)) is not None
    assert mon.handle(frame("cam-b", 0)) is not None
    assert mon.handle(frame("invented", 0)) is None
    assert mon.report()["rejects"] == {"too_many_streams": 1}
    # 300 epochs, but only max_epochs_per_stream states are kept (the rest folded, counts intact)
    assert len(mon.streams) == mon.limits.max_epochs_per_stream + 1
    assert sum(s["received"] for s in mon.report()["streams"]) + mon.report()["expired"]["received"] == 301
    assert sum(1 for s in mon.streams.values() if s.decoder is not None) <= mon.limits.max_epochs_per_stream + 1
    mon.expire(time.time() + mon.limits.decoder_idle_s)  # idle decoders are freed
    assert not any(s.decoder is not None for s in mon.streams.values())
