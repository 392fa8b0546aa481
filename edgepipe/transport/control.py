"""The control back channel: a monitor that lost frames asks the capture for a keyframe; a monitor that runs the
closed loop (server/qp_control.py) asks it for a new HEVC QP, or another of the pre-transforms it has loaded.

Direction: capture binds a ROUTER (`--control tcp://0.0.0.0:5556`, next to its data port) and each
monitor connects a DEALER. Capture binds both of its sockets, so one firewall rule, one CURVE
server key and one allow-list cover the data and the control path; monitors only ever connect.

Messages (monitor -> capture):
- three parts: b"EPCTL1", b"keyframe", stream_id (UTF-8). No reply: the answer is the IDR frame on the data
  socket. Requests are coalesced and rate-limited on the capture side (see CaptureLoop).
- four parts: b"EPCTL1", b"qp", stream_id (UTF-8), the QP in ASCII decimal (1 or 2 digits, e.g. b"34"). No reply:
  the answer is the frames' QP on the data socket, from the next GOP on. The capture obeys only when it allows it
  (`capture --allow-remote-qp MIN:MAX`) and only a QP within MIN:MAX; otherwise it refuses (counted by cause:
  qp_not_allowed, qp_out_of_range, bad_qp).
- four parts: b"EPCTL1", b"engine", stream_id (UTF-8), the pre-transform's spec as the capture names it (ASCII,
  e.g. b"none" or b"ours"). No reply: the answer is the frames' model id on the data socket, from the next GOP
  on. The capture obeys only when it allows it (`capture --allow-remote-engine none,ours`) and only a spec in
  that list; otherwise it refuses (counted by cause: engine_not_allowed, engine_unknown, bad_engine).
Anything else is counted as a reject and ignored.
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
QP = b"qp"
ENGINE = b"engine"
MAX_ENGINE_SPEC = 200  # bytes: a shipped model's name or a model file's path


def parse_qp_range(spec: str, what: str) -> tuple[int, int]:
    """`MIN:MAX` of HEVC QPs (0-51, MIN <= MAX); ValueError with one line when it is not."""
    low, sep, high = spec.partition(":")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise ValueError(f"{what} {spec!r}: give MIN:MAX, two HEVC QPs, e.g. 22:42") from None
    if not sep or not 0 <= lo <= hi <= 51:
        raise ValueError(f"{what} {spec!r}: give MIN:MAX with 0 <= MIN <= MAX <= 51, e.g. 22:42")
    return lo, hi


class ControlServer:
    """Capture side: receives keyframe requests and calls `on_keyframe()` for its stream; with `qp_range` (the
    capture's --allow-remote-qp) and `on_qp`, a QP request within the range calls `on_qp(qp)`; with `engines` (its
    --allow-remote-engine) and `on_engine`, a request for one of them calls `on_engine(spec)`."""

    def __init__(self, endpoint: str, stream_id: str, on_keyframe: Callable[[], None], context=None, curve=None,
                 defaults: SocketDefaults = DEFAULTS, qp_range: tuple[int, int] | None = None,
                 on_qp: Callable[[int], None] | None = None, on_qp_refused: Callable[[str], None] | None = None,
                 engines: tuple[str, ...] | None = None, on_engine: Callable[[str], None] | None = None,
                 on_engine_refused: Callable[[str], None] | None = None):
        import zmq

        self._zmq = zmq
        self._ctx = context or zmq.Context.instance()
        self.stream_id = stream_id
        self._on_keyframe = on_keyframe
        self.requests = 0
        self.qp_range = qp_range if on_qp is not None else None
        self._on_qp = on_qp
        self._on_qp_refused = on_qp_refused  # the capture's stats count the QP requests refused, by cause
        self.qp_requests = 0  # QP requests obeyed (within the range)
        self.engines = tuple(engines) if engines is not None and on_engine is not None else None
        self._on_engine = on_engine
        self._on_engine_refused = on_engine_refused
        self.engine_requests = 0  # engine requests obeyed (one of the allowed)
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
        """One ROUTER message ([peer identity, *request]); True when it asked for a keyframe or a QP obeyed."""
        request = parts[1:]
        if len(request) not in (3, 4) or request[0] != CONTROL_MAGIC:
            return self._reject("bad_request", f"{len(request)} parts")
        verb = request[1]
        if verb not in (KEYFRAME, QP, ENGINE):
            return self._reject("unknown_command", repr(verb[:32]))
        if len(request) != (3 if verb == KEYFRAME else 4):
            return self._reject("bad_request", f"{verb.decode()} with {len(request)} parts")
        if request[2] != self.stream_id.encode():
            return self._reject("unknown_stream", repr(request[2][:64]))
        if verb == QP:
            return self._qp(request[3])
        if verb == ENGINE:
            return self._engine(request[3])
        self.requests += 1
        log.info("keyframe requested by a monitor for %s (%d so far)", self.stream_id, self.requests)
        self._on_keyframe()
        return True

    def _qp(self, value: bytes) -> bool:
        if not (1 <= len(value) <= 2 and value.isdigit()):  # ASCII digits only: no sign, space or unicode digit
            return self._refuse_qp("bad_qp", repr(value[:16]))
        qp = int(value)
        if self.qp_range is None:
            return self._refuse_qp("qp_not_allowed", f"QP {qp} asked for, but this capture does not take QP "
                                                     "requests (capture --allow-remote-qp MIN:MAX)")
        low, high = self.qp_range
        if not low <= qp <= high:
            return self._refuse_qp("qp_out_of_range", f"QP {qp} is outside --allow-remote-qp {low}:{high}")
        self.qp_requests += 1
        log.info("QP %d requested by a monitor for %s (%d QP requests so far)", qp, self.stream_id, self.qp_requests)
        self._on_qp(qp)
        return True

    def _engine(self, value: bytes) -> bool:
        # printable ASCII without spaces: what a spec in a comma list on a command line can be
        if not (1 <= len(value) <= MAX_ENGINE_SPEC and all(33 <= b <= 126 for b in value)):
            return self._refuse_engine("bad_engine", repr(value[:32]))
        spec = value.decode()
        if self.engines is None:
            return self._refuse_engine("engine_not_allowed", f"engine {spec} asked for, but this capture does not "
                                                             "take engine requests (capture --allow-remote-engine)")
        if spec not in self.engines:
            return self._refuse_engine("engine_unknown", f"engine {spec} is not in --allow-remote-engine "
                                                         f"{','.join(self.engines)}")
        self.engine_requests += 1
        log.info("engine %s requested by a monitor for %s (%d engine requests so far)", spec, self.stream_id,
                 self.engine_requests)
        self._on_engine(spec)
        return True

    def _refuse_engine(self, cause: str, detail: str) -> bool:
        if self._on_engine_refused is not None:
            self._on_engine_refused(cause)
        return self._reject(cause, detail)

    def _refuse_qp(self, cause: str, detail: str) -> bool:
        if self._on_qp_refused is not None:
            self._on_qp_refused(cause)
        return self._reject(cause, detail)

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
        # QP and engine requests sent, and those that could not be sent (not connected), by verb ("qp", "engine")
        self.requests_sent: Counter = Counter()
        self.requests_unsent: Counter = Counter()
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

    def request_qp(self, stream_id: str, qp: int) -> bool:
        """Ask the capture of `stream_id` to code at `qp` from its next GOP; False when it could not be sent now."""
        return self._request(QP, stream_id, str(int(qp)), f"QP {int(qp)}")

    def request_engine(self, stream_id: str, spec: str) -> bool:
        """Ask the capture of `stream_id` to run the pre-transform `spec` (as the capture names it) from its next
        GOP; False when it could not be sent now."""
        return self._request(ENGINE, stream_id, spec, f"engine {spec}")

    def _request(self, verb: bytes, stream_id: str, value: str, what: str) -> bool:
        zmq = self._zmq
        with self._lock:
            try:
                self.sock.send_multipart((CONTROL_MAGIC, verb, stream_id.encode(), value.encode()),
                                         flags=zmq.NOBLOCK)
            except zmq.Again:
                self.requests_unsent[verb.decode()] += 1
                log.warning("could not ask %s for %s for %s (not connected)", self.endpoint, what, stream_id)
                return False
            self.requests_sent[verb.decode()] += 1
            log.info("asked %s for %s for %s", self.endpoint, what, stream_id)
            return True

    def close(self) -> None:
        with self._lock:
            self.sock.close()
