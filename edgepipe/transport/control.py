"""The control back channel: a monitor that lost frames asks the capture for a keyframe.

Direction: capture binds a ROUTER (`--control tcp://0.0.0.0:5556`, next to its data port) and each
monitor connects a DEALER. Capture binds both of its sockets, so one firewall rule, one CURVE
server key and one allow-list cover the data and the control path; monitors only ever connect.

Message (monitor -> capture), three parts: b"EPCTL1", b"keyframe", stream_id (UTF-8).
No reply: the answer is the IDR frame on the data socket. Anything else is counted as a reject and
ignored. Requests are coalesced and rate-limited on the capture side (see CaptureLoop).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from edgepipe.transport.sockets import DEFAULTS, SocketDefaults, _bind, _connect, _heartbeats

log = logging.getLogger(__name__)

CONTROL_MAGIC = b"EPCTL1"
KEYFRAME = b"keyframe"


class ControlServer:
    """Capture side: receives keyframe requests and calls `on_keyframe(stream_id)` for its stream."""

    def __init__(self, endpoint: str, stream_id: str, on_keyframe: Callable[[], None], context=None, curve=None,
                 defaults: SocketDefaults = DEFAULTS):
        import zmq

        self._zmq = zmq
        self._ctx = context or zmq.Context.instance()
        self.stream_id = stream_id
        self._on_keyframe = on_keyframe
        self.requests = 0
        self.rejects: Counter = Counter()
        self.sock = self._ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1024)  # a request is a few dozen bytes
        _heartbeats(self.sock, defaults)
        if curve is not None:
            from edgepipe.transport.security import configure_server

            configure_server(self.sock, curve)
        _bind(self.sock, endpoint)
        self.endpoint = endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgepipe-control", daemon=True)
        self._last_log = 0.0

    @property
    def bound_endpoint(self) -> str:
        return self.sock.last_endpoint.decode()

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(100):
                self.handle(self.sock.recv_multipart())

    def handle(self, parts: list[bytes]) -> bool:
        """One ROUTER message ([peer identity, *request]); True when it asked for a keyframe."""
        request = parts[1:]
        if len(request) != 3 or request[0] != CONTROL_MAGIC:
            return self._reject("bad_request", f"{len(request)} parts")
        if request[1] != KEYFRAME:
            return self._reject("unknown_command", repr(request[1][:32]))
        if request[2] != self.stream_id.encode():
            return self._reject("unknown_stream", repr(request[2][:64]))
        self.requests += 1
        log.info("keyframe requested by a monitor for %s (%d so far)", self.stream_id, self.requests)
        self._on_keyframe()
        return True

    def _reject(self, cause: str, detail: str) -> bool:
        self.rejects[cause] += 1
        now = time.monotonic()
        if now - self._last_log > 1.0:
            self._last_log = now
            log.warning("control: ignored message (%s): %s [%d ignored so far]", cause, detail,
                        sum(self.rejects.values()))
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.sock.close()


class ControlClient:
    """Monitor side: `request_keyframe(stream_id)` is the Monitor's on_loss hook. Never blocks;
    while the capture is unreachable the request is not queued (it would be stale on arrival)."""

    def __init__(self, endpoint: str, context=None, curve=None, defaults: SocketDefaults = DEFAULTS):
        import zmq

        self._zmq = zmq
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 16)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no connection yet: fail now rather than queue
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1024)
        _heartbeats(self.sock, defaults)
        if curve is not None:
            from edgepipe.transport.security import configure_client

            configure_client(self.sock, curve)
        _connect(self.sock, endpoint)
        self.endpoint = endpoint
        self.sent = 0
        self.unsent = 0
        self._lock = threading.Lock()  # on_loss may come from any thread that calls Monitor.handle

    def request_keyframe(self, stream_id: str) -> bool:
        zmq = self._zmq
        with self._lock:
            try:
                self.sock.send_multipart((CONTROL_MAGIC, KEYFRAME, stream_id.encode()), flags=zmq.NOBLOCK)
            except zmq.Again:
                self.unsent += 1
                log.warning("could not ask %s for a keyframe for %s (not connected)", self.endpoint, stream_id)
                return False
            self.sent += 1
            log.info("asked %s for a keyframe for %s", self.endpoint, stream_id)
            return True

    def close(self) -> None:
        with self._lock:
            self.sock.close()
