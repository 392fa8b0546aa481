"""ZeroMQ sockets of the wire: the capture's Publisher and the monitor's Subscriber (docs/wire.md);
the message they carry is in protocol.py.

The capture side binds a PUB-like socket (XPUB, so it can tell when a subscriber has joined), or,
with `pub+connect:ADDRESS` (endpoints.py), connects it to a relay's camera side (edgepipe relay), so
a camera behind NAT needs no inbound port. It never blocks on a missing subscriber (ZeroMQ discards
messages nobody subscribed to). XPUB_NODROP makes a *slow* subscriber visible: send() reports
would-block instead of ZeroMQ dropping silently mid-GOP, so the capture loop can decide what to drop
(see capture.py). Either side may run CURVE (security.py): the binding side is the CURVE server.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from edgepipe.core.errors import EdgepipeError
from edgepipe.transport.endpoints import parse_publish
from edgepipe.transport.protocol import MAGIC, MAX_PAYLOAD, WIRE_VERSION, FrameHeader, stream_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SocketDefaults:
    """Socket settings in one place. The send HWM bounds memory on the device; LINGER bounds how long
    close() may wait for unsent frames on shutdown."""

    send_hwm: int = 200
    # The monitor's own receive queue (MonitorLimits.queue_bytes / queue_messages) holds its backlog;
    # the transport's holds one message, so the bytes it may hold are about (recv_hwm + 2) x
    # max_message_bytes (the queued one, one being read, one being handed over) however large they are.
    recv_hwm: int = 1
    linger_ms: int = 500
    poll_ms: int = 100
    # ZMTP heartbeats: a peer that vanished without closing TCP (power cut, cable) is dropped in
    # seconds instead of the kernel's ~15 minutes, so its queue stops holding the sender back.
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 6000
    reconnect_ivl_max_ms: int = 5000  # a connecting side backs off 100 ms -> 5 s while the peer is down
    # The publisher's kernel send buffer per connection, bytes (0: the kernel's, which on loopback grows to
    # megabytes). libzmq applies it only to connections made after it is set, so it is set before bind.
    send_buffer_bytes: int = 0
    max_message_bytes: int = MAX_PAYLOAD + 4096  # ZeroMQ drops a peer that sends more, unread


DEFAULTS = SocketDefaults()


def _peer_identity(frame) -> str:
    """Who sent a message: its CURVE key (as the ZAP handler named it) or else its IP address."""
    for prop in ("User-Id", "Peer-Address"):
        try:
            value = frame.get(prop)
        except Exception:  # an unsubscription for a closed connection carries no metadata
            continue
        if value:
            return f"{prop.lower()}:{value}"
    return "?"


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


def bind_again(open_socket: Callable[[str], object], endpoint: str, timeout_s: float = 5.0):
    """`open_socket(endpoint)` on the address a socket just closed there: the old listener is released
    asynchronously in libzmq's I/O thread, so the bind is retried (20 ms apart) until it succeeds or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return open_socket(endpoint)
        except EdgepipeError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _heartbeats(sock, defaults: SocketDefaults) -> None:
    import zmq

    sock.setsockopt(zmq.HEARTBEAT_IVL, defaults.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, defaults.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, defaults.heartbeat_timeout_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, defaults.reconnect_ivl_max_ms)


# A monitor's subscriptions: b"" (everything), or its shard's bucket prefixes (256 / N of them, in wire versions
# 4 and 5), or its streams' topics (in both versions; transport/topics.py). Behind a relay the capture sees the
# union of every monitor's.
MAX_TOPICS = 1024
MAX_TOPIC_BYTES = 64 * 1024  # what 64 topics of 1,000 bytes hold: the old bound for long topics
_EDGEPIPE_TOPIC = MAGIC + bytes((WIRE_VERSION,))


class Publisher:
    """Capture side. Binds an XPUB socket (or connects it to a relay: `pub+connect:ADDRESS`); send()
    never blocks unless given a timeout. Every message goes out as wire version 5, its stream's topic
    first, so a subscriber (a monitor, or a relay on behalf of its monitors) takes the streams it wants.

    Subscriptions are bounded: libzmq keeps every distinct topic a subscriber sends in a trie
    (60,000 topics of 1,000 bytes took 3 GB), so this side tracks them (XPUB_VERBOSER shows every
    subscribe and unsubscribe, a closed connection's included) and when more than `max_topics`
    distinct topics, or more than `max_topic_bytes` of them, are live, the peer that sent the most is
    reported to `on_flood(identity)` (the service bans it at the ZAP handler for a while) and the
    socket is closed and bound again, which frees the trie; every other subscriber reconnects by
    itself and resubscribes. Dialled out, the one peer is the relay (it bounds its monitors' topics
    itself): nobody is banned, the socket connects again. `topics_live`, `subscription_floods`,
    `bad_subscriptions` count.

    What this cannot bound: libzmq moves every subscription that has arrived into its trie during
    any call on the socket, before this side reads them, so a burst that arrives between two sends
    (one frame interval) is held until the socket is reopened (measured: 5,000 topics of 1,000
    bytes, about 240 MB, then freed for reuse). The ban keeps the same sender from doing it again.

    `curve`: a security.CurveServer (bound: this side is the CURVE server; dialled out, its one allowed
    key is the relay's, the server's); None for plain text.
    `zap_domain`: ask the context's ZAP handler about plain-text peers too (for bans).
    `stream_id`: the stream this publisher carries (else learnt from the first send): a subscriber
    counts for `wait_for_subscriber` only if its subscriptions take this stream."""

    def __init__(self, endpoint: str, defaults: SocketDefaults = DEFAULTS, context=None, curve=None,
                 max_topics: int = MAX_TOPICS, zap_domain: bytes | None = None, stream_id: str | None = None,
                 max_topic_bytes: int = MAX_TOPIC_BYTES):
        import zmq

        target = parse_publish(endpoint)
        self._zmq = zmq
        self._ctx = context or zmq.Context.instance()
        self.dials_out = target.connect
        if curve is not None and self.dials_out:
            from edgepipe.transport.security import dial_out_curve

            curve = dial_out_curve(curve)
        self._defaults, self._curve, self._zap_domain = defaults, curve, zap_domain
        self.max_topics, self.max_topic_bytes = max_topics, max_topic_bytes
        self.linger_s = defaults.linger_ms / 1000
        self.endpoint = endpoint
        self.address = target.address
        self.stream_id = stream_id
        self.sock = self._open(self.address)
        self.subscribers_seen = 0
        self.topics: dict[bytes, int] = {}  # live subscriptions: topic -> subscribe count
        self.topic_bytes = 0  # bytes of the distinct live topics
        self._senders: Counter = Counter()  # identity -> subscribe messages since the socket was opened
        self.subscription_floods = 0
        self.bad_subscriptions = 0
        self.on_flood: Callable[[str], None] | None = None
        self.on_reopen: list[Callable[[object, object], None]] = []  # (old socket, new socket)
        self.dropped = 0
        self.unsubscribed = 0  # frames sent while no subscription matched them: nobody got them
        self._cancelled_by: object | None = None
        self._cancel_deadline = 0.0

    def _open(self, endpoint: str):
        zmq = self._zmq
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, self._defaults.send_hwm)
        sock.setsockopt(zmq.LINGER, self._defaults.linger_ms)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, a restarted monitor's included
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full subscriber queue is reported, not dropped silently
        sock.setsockopt(zmq.MAXMSGSIZE, 1024)  # subscribers only ever send (un)subscriptions
        if self._defaults.send_buffer_bytes:
            sock.setsockopt(zmq.SNDBUF, self._defaults.send_buffer_bytes)
        _heartbeats(sock, self._defaults)
        if self.dials_out:
            # no queue while the relay is away: libzmq would keep the pipe (and its subscriptions) across a
            # reconnect and deliver up to send_hwm stale frames after it; this way the lost connection
            # unsubscribes everything (frames go out counted as unsubscribed) and the relay's XSUB
            # subscribes again when it is back
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if self._curve is not None:
                from edgepipe.transport.security import configure_client

                configure_client(sock, self._curve)
            _connect(sock, endpoint)
            return sock
        if self._curve is not None:
            from edgepipe.transport.security import configure_server

            configure_server(sock, self._curve)
        elif self._zap_domain:
            sock.zap_domain = self._zap_domain
        _bind(sock, endpoint)
        return sock

    def wait_for_subscriber(self, timeout: float) -> bool:
        """True once a subscription takes this publisher's stream (at once if one already does). Before
        the stream is known (no stream_id, nothing sent yet): any subscription that takes some stream."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll_subscriptions(timeout_ms=50)
            if self.stream_id is not None and self.subscribed(stream_topic(self.stream_id)):
                return True
            if self.stream_id is None and any(
                    n > 0 and (_EDGEPIPE_TOPIC.startswith(t) or t.startswith(_EDGEPIPE_TOPIC))
                    for t, n in self.topics.items()):
                return True
            if time.monotonic() >= deadline:
                return False

    def subscribed(self, header: bytes = MAGIC) -> bool:
        """Whether any live subscription matches a message starting with `header` (a packed header, or
        a stream's topic: protocol.stream_topic)."""
        return any(header.startswith(topic) for topic, n in self.topics.items() if n > 0)

    def poll_subscriptions(self, timeout_ms: int = 0) -> None:
        zmq = self._zmq
        if timeout_ms and not self.sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            # recv, not poll, per message: every poll makes libzmq take in more subscriptions,
            # recv only every 100 calls
            try:
                frame = self.sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg = frame.bytes
            if msg[:1] not in (b"\x00", b"\x01"):
                self.bad_subscriptions += 1
                continue
            topic = msg[1:]
            if msg[:1] == b"\x01":
                self.subscribers_seen += 1
                if topic not in self.topics:
                    self.topic_bytes += len(topic)
                self.topics[topic] = self.topics.get(topic, 0) + 1
                self._senders[_peer_identity(frame)] += 1
                if len(self.topics) > self.max_topics or self.topic_bytes > self.max_topic_bytes:
                    self._flood()
                    return
            elif topic in self.topics:
                self.topics[topic] -= 1
                if self.topics[topic] <= 0:
                    del self.topics[topic]
                    self.topic_bytes -= len(topic)

    def _flood(self) -> None:
        """Too many distinct topics: ban the peer that sent the most, free libzmq's trie by opening
        the socket again on the same address (the other subscribers reconnect by themselves)."""
        zmq = self._zmq
        identity = self._senders.most_common(1)[0][0] if self._senders else "?"
        self.subscription_floods += 1
        if self.dials_out:
            log.warning("subscription flood from the relay at %s: %d distinct topics, %d bytes (at most %d, %d "
                        "bytes); connecting again (%d floods so far)", self.address, len(self.topics),
                        self.topic_bytes, self.max_topics, self.max_topic_bytes, self.subscription_floods)
        else:
            log.warning("subscription flood: %d distinct topics, %d bytes (at most %d, %d bytes), most from %s; "
                        "banning it and reopening %s (%d floods so far)", len(self.topics), self.topic_bytes,
                        self.max_topics, self.max_topic_bytes, identity, self.endpoint, self.subscription_floods)
        if self.on_flood is not None and identity != "?" and not self.dials_out:
            self.on_flood(identity)
        bound = self.bound_endpoint
        old = self.sock
        try:
            old.disable_monitor()
        except zmq.ZMQError:
            pass
        old.close(0)
        self.sock = bind_again(self._open, bound)
        self.topics.clear()
        self.topic_bytes = 0
        self._senders.clear()
        for callback in self.on_reopen:
            callback(old, self.sock)

    @property
    def bound_endpoint(self) -> str:
        """The endpoint as bound (tcp://0.0.0.0:5555 for tcp://*:5555; the real port for :0 / *), or
        the relay's address when dialled out."""
        if self.dials_out:
            return self.address
        return self.sock.last_endpoint.decode()

    def send(self, header: FrameHeader, payload: bytes, timeout: float | None = 0.0,
             cancel: threading.Event | None = None) -> bool:
        """False when a subscriber's queue stayed full (the frame is counted as dropped).

        timeout: seconds to keep retrying while a subscriber is full (0: never wait; None: until
        `cancel` is set). Once `cancel` is set, all sends together wait at most the socket linger
        more, so a stop never hangs on a stuck subscriber. With no subscriber, send() always succeeds."""
        zmq = self._zmq
        if self.stream_id is None:
            self.stream_id = header.stream_id
        parts = (header.pack(WIRE_VERSION), payload)
        self.poll_subscriptions()
        if not self.subscribed(parts[0]):
            self.unsubscribed += 1  # ZeroMQ discards it: counted, the capture reports it
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(payload) < 16384)
                return True
            except zmq.Again:
                pass
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                if self._cancelled_by is not cancel:  # one linger budget per stop, shared by every send
                    self._cancelled_by, self._cancel_deadline = cancel, now + self.linger_s
                if now >= self._cancel_deadline:
                    break
            elif deadline is not None and now >= deadline:
                break
            time.sleep(0.002)  # XPUB has no useful POLLOUT with NODROP: retry briefly
        self.dropped += 1
        return False

    def send_end(self, header: FrameHeader, cancel=None) -> bool:
        """The end-of-stream message, after the last frame: waits at most the linger for room (a
        stuck subscriber), so a stop never hangs; False when it could not be queued."""
        header.end_of_stream, header.keyframe = True, False
        zmq = self._zmq
        parts = (header.pack(WIRE_VERSION), b"")
        self.poll_subscriptions()
        deadline = time.monotonic() + self.linger_s
        while True:
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.002)

    def close(self) -> None:
        self.sock.close()


class Subscriber:
    """Monitor side. Connects a SUB socket subscribed to `topics` (default b"": everything; a shard's or
    some streams' topics: transport/topics.py).

    The connection is kept: libzmq reconnects by itself after a network error, but after a protocol
    error (a message over max_message_bytes, a malformed ZMTP frame) it drops the peer for good. A
    socket monitor sees the disconnect; when libzmq does not retry within `repair_after_s`, this
    side disconnects and connects the endpoint again (counted in `drops` and `repairs`). `healthy()`
    is False only while such a drop is not repaired. Handshake events go to `on_event(event)`
    (security.HandshakeWatcher.record), since a socket has one monitor.

    `curve`: a security.CurveClient (the capture is the CURVE server); None for plain text."""

    repair_after_s = 0.5

    def __init__(self, endpoint: str, defaults: SocketDefaults = DEFAULTS, context=None, curve=None,
                 topics: list[bytes] | tuple[bytes, ...] = (b"",)):
        import zmq

        self._zmq = zmq
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, defaults.recv_hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, defaults.max_message_bytes)
        _heartbeats(self.sock, defaults)
        if curve is not None:
            from edgepipe.transport.security import configure_client

            configure_client(self.sock, curve)
        self.endpoint = endpoint
        self.topics = list(topics)
        for topic in self.topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.poll_ms = defaults.poll_ms
        self.on_event: Callable[[dict], None] | None = None
        self.connected = 0  # connections up now
        self.connections = 0  # connections ever made (0: nothing ever listened at the endpoint)
        self.drops = 0  # connections the transport dropped without retrying (protocol errors)
        self.repairs = 0  # ... and re-made here
        self.disconnects = 0  # every lost connection, retried by libzmq or not
        self._dropped: dict[str, float] = {}  # endpoint -> when it was disconnected and not (yet) retried
        self._broken = False  # a repair failed: unhealthy until the process restarts
        self._consecutive = 0  # repairs since the last message: each waits twice as long (max 5 s)
        self._last_log = float("-inf")
        self._monitor = self.sock.get_monitor_socket()
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        _connect(self.sock, endpoint)

    def recv(self, timeout_ms: int | None = None) -> list[bytes] | None:
        """The next multipart message, or None after the timeout."""
        zmq = self._zmq
        timeout = self.poll_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout / 1000
        while True:
            ready = dict(self._poller.poll(timeout))
            if self._monitor in ready:
                self._events()
            self._repair_if_dropped()
            if self.sock in ready or self.sock.poll(0, zmq.POLLIN):
                self._consecutive = 0
                return self.sock.recv_multipart(copy=True)
            timeout = int(max(0.0, deadline - time.monotonic()) * 1000)
            if timeout <= 0:
                return None

    def healthy(self) -> bool:
        """False while the transport has dropped the peer and not been reconnected."""
        if self._broken:
            return False
        now = time.monotonic()
        return all(now - t < self._repair_delay() + 1.0 for t in self._dropped.values())

    def _repair_delay(self) -> float:
        return min(5.0, self.repair_after_s * 2 ** self._consecutive)

    def _events(self) -> None:
        zmq = self._zmq
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            try:
                event = recv_monitor_message(self._monitor)
            except zmq.ZMQError:
                return
            kind = event["event"]
            endpoint = event.get("endpoint", b"")
            endpoint = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            if kind == zmq.EVENT_CONNECTED:
                self.connected += 1
                self.connections += 1
                self._dropped.pop(endpoint, None)
            elif kind == zmq.EVENT_DISCONNECTED:
                self.connected = max(0, self.connected - 1)
                self.disconnects += 1
                self._dropped[endpoint] = time.monotonic()
            elif kind in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED):
                self._dropped.pop(endpoint, None)  # libzmq is reconnecting by itself
            if self.on_event is not None:
                self.on_event(event)

    def _repair_if_dropped(self) -> None:
        now = time.monotonic()
        due = [e for e, t in self._dropped.items() if now - t >= self._repair_delay()]
        for endpoint in due:
            del self._dropped[endpoint]
            if not self._broken:
                self._repair(self._target(endpoint))

    def _target(self, endpoint: str) -> str:
        """The endpoint to connect again: the event names the resolved address (tcp://10.0.0.2:5555)
        where this side may have connected a host name (tcp://camera:5555): same port, ours."""
        if endpoint == self.endpoint or not endpoint:
            return self.endpoint
        if endpoint.startswith("tcp://") and endpoint.rsplit(":", 1)[-1] == self.endpoint.rsplit(":", 1)[-1]:
            return self.endpoint
        return endpoint

    def _repair(self, endpoint: str) -> None:
        self.drops += 1
        self._consecutive += 1
        now = time.monotonic()
        if now - self._last_log > 30.0:
            self._last_log = now
            log.warning("the transport dropped %s without reconnecting (a message over the size limit or a "
                        "protocol error); connecting again (%d so far)", endpoint, self.drops)
        try:
            self.sock.disconnect(endpoint)
        except self._zmq.ZMQError:
            pass  # libzmq already forgot the endpoint
        try:
            self.sock.connect(endpoint)
        except self._zmq.ZMQError as exc:
            log.error("cannot connect to %s again: %s", endpoint, exc)
            self._broken = True  # unhealthy for good: the watchdog stops being fed, systemd restarts us
            return
        self.repairs += 1

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except self._zmq.ZMQError:
            pass
        self._monitor.close(0)
        self.sock.close()


_handed_out_ports: set[int] = set()
_handed_out_lock = threading.Lock()


def free_tcp_endpoint() -> str:
    """A loopback endpoint on a port free now (demo, tests and benchmarks bind it next), never one this process
    was given before: two endpoints asked for one after the other are bound only later, and the OS may hand back
    the port it has just released (a data and a control endpoint came back equal)."""
    with _handed_out_lock:
        for _ in range(100):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return f"tcp://127.0.0.1:{port}"
    raise EdgepipeError("no free loopback port left that this process was not given already")
