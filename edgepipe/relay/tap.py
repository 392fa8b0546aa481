"""The relay's tap: what went through it, counted without touching the data path.

ZeroMQ's proxy sends a copy of every message part it forwards, both ways, to its capture socket
(the copies share the payload's buffer: no byte is copied). This thread reads them and looks at the
first part only: a frame or an end of stream (cameras -> monitors) is counted under its stream id
(protocol.peek: the stream id and one flag, nothing else parsed, nothing validated: the monitors do
that); a one-part message that starts with 0 or 1 is a subscription or an unsubscription (monitors
-> cameras). The proxy waits for this thread when its queue is full (`queue` messages), so every
copy is counted: the counts are exact, never sampled.

Bounded: at most `max_streams` stream ids get their own counts (the rest are summed under `other`),
and the live topics are tracked so that a subscription flood can be seen (relay/proxy.py acts on it).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from edgepipe.transport.protocol import TOPIC_VERSIONS, peek, peek_reference, stream_topic

log = logging.getLogger(__name__)

OTHER = "other"  # the label of the streams beyond max_streams
TO_MONITORS, TO_CAMERAS = "to_monitors", "to_cameras"


class Tap:
    """Reads the proxy's capture socket (a PAIR connected to `endpoint`) on its own thread."""

    def __init__(self, context, endpoint: str, max_streams: int = 256, max_topics: int = 1024,
                 max_topic_bytes: int = 64 * 1024, queue: int = 10_000):
        import zmq

        self._zmq = zmq
        self.sock = context.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.RCVHWM, queue)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.max_streams, self.max_topics, self.max_topic_bytes = max_streams, max_topics, max_topic_bytes
        self.frames: Counter = Counter()  # stream -> frames forwarded to monitors
        self.ends: Counter = Counter()  # stream -> end-of-stream messages
        self.references: Counter = Counter()  # stream -> reference messages (issue 14: never counted as frames)
        self.bytes: Counter = Counter()  # stream -> bytes of its messages, every part
        self.unrecognised = 0  # messages from cameras that are no edgepipe header (monitors reject them)
        self.unrecognised_bytes = 0
        self.subscriptions: Counter = Counter()  # "subscribe" / "unsubscribe" -> messages to cameras
        self.subscription_bytes = 0
        self.subscriptions_by_stream: Counter = Counter()  # stream -> subscribe messages naming it
        self.topics: dict[bytes, None] = {}  # live distinct topics (first subscribe .. last unsubscribe)
        self.topic_bytes = 0
        self.floods = 0
        self._flooding = False  # a flood was reported and not yet handled (forget_topics): report it once
        self.on_flood: Callable[[], None] | None = None  # called (from this thread) when the topics overflow
        self.ticks = 0  # turns of this thread's loop: the watchdog's sign of life
        self.first_at: float | None = None  # wall clock of the first frame, the last one
        self.last_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgepipe-relay-tap", daemon=True)

    def start(self) -> Tap:
        self._thread.start()
        return self

    def _run(self) -> None:
        zmq = self._zmq
        while not self._stop.is_set():
            self.ticks += 1
            if not self.sock.poll(100):
                continue
            for _ in range(1000):  # a burst, then the stop flag again
                try:
                    parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.count([p.bytes if i == 0 else p for i, p in enumerate(parts)])

    def count(self, parts: list) -> None:
        """One forwarded message: parts[0] as bytes, the others anything with a len()."""
        first = parts[0]
        if len(parts) == 1 and first[:1] in (b"\x00", b"\x01"):
            self._subscription(first)
            return
        n = sum(len(p) for p in parts)
        seen = peek(first)
        now = time.time()
        with self._lock:
            if seen is None:
                self.unrecognised += 1
                self.unrecognised_bytes += n
                return
            stream, end = seen
            if stream not in self.frames and stream not in self.ends and len(self.bytes) >= self.max_streams:
                stream = OTHER
            (self.ends if end else self.references if peek_reference(first) else self.frames)[stream] += 1
            self.bytes[stream] += n
            if not end:
                self.first_at = self.first_at or now
                self.last_at = now

    def _subscription(self, msg: bytes) -> None:
        subscribe, topic = msg[:1] == b"\x01", msg[1:]
        overflow = False
        with self._lock:
            self.subscriptions["subscribe" if subscribe else "unsubscribe"] += 1
            self.subscription_bytes += len(msg)
            if subscribe:
                if topic not in self.topics:
                    stream = stream_of_topic(topic)
                    # a monitor names a stream in every wire version it reads (4 and 5): counted once
                    named = stream is not None and not any(stream_topic(stream, v) in self.topics
                                                           for v in TOPIC_VERSIONS)
                    self.topics[topic] = None
                    self.topic_bytes += len(topic)
                    if named and (stream in self.subscriptions_by_stream
                                  or len(self.subscriptions_by_stream) < self.max_streams):
                        self.subscriptions_by_stream[stream] += 1
                overflow = not self._flooding and (len(self.topics) > self.max_topics
                                                   or self.topic_bytes > self.max_topic_bytes)
                self._flooding = self._flooding or overflow
            elif topic in self.topics:
                del self.topics[topic]
                self.topic_bytes -= len(topic)
        if overflow:
            self.floods += 1
            log.warning("relay: subscription flood: %d distinct topics, %d bytes (at most %d, %d bytes); "
                        "resetting the monitors' side (%d floods so far)", len(self.topics), self.topic_bytes,
                        self.max_topics, self.max_topic_bytes, self.floods)
            if self.on_flood is not None:
                self.on_flood()

    def forget_topics(self) -> list[bytes]:
        """The live topics, now forgotten (the relay unsubscribes them upstream after a reset)."""
        with self._lock:
            topics = list(self.topics)
            self.topics.clear()
            self.topic_bytes = 0
            self._flooding = False
            return topics

    def snapshot(self) -> dict:
        """A consistent copy of every count (metrics, the report, the status line)."""
        with self._lock:
            return {"frames": dict(self.frames), "ends": dict(self.ends), "references": dict(self.references),
                    "bytes": dict(self.bytes),
                    "unrecognised": self.unrecognised, "unrecognised_bytes": self.unrecognised_bytes,
                    "subscriptions": dict(self.subscriptions), "subscription_bytes": self.subscription_bytes,
                    "subscriptions_by_stream": dict(self.subscriptions_by_stream),
                    "topics_live": len(self.topics), "topic_bytes": self.topic_bytes, "floods": self.floods,
                    "first_at": self.first_at, "last_at": self.last_at}

    def drain(self, timeout_s: float = 0.5) -> None:
        """After the proxy stopped: count the copies still queued (at most `timeout_s`)."""
        zmq = self._zmq
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.count([p.bytes if i == 0 else p for i, p in enumerate(parts)])

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def close(self) -> None:
        self.stop()
        self.sock.close(0)


def stream_of_topic(topic: bytes) -> str | None:
    """The stream a subscription names, when it is a whole stream topic of wire version 4 or 5 (monitor
    --streams)."""
    if len(topic) < 5 or topic[:2] != b"EP" or topic[2] not in TOPIC_VERSIONS or len(topic) != 5 + topic[4]:
        return None
    stream = topic[5:].decode(errors="replace")
    return stream if stream_topic(stream, topic[2]) == topic else None
