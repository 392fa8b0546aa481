"""The relay's data path: ZeroMQ's own proxy between the cameras and the monitors (docs/relay.md).

    captures --XPUB connect/bind--> [XSUB, binds --cameras] == zmq.proxy_steerable == [XPUB, binds --monitors] <-- monitors (SUB)
                                                      capture socket -> Tap (counts)    control socket <- stop

Frames flow from the XSUB to the XPUB, which sends each one to the monitors whose subscriptions
match it (by prefix: a stream's topic, a shard's buckets, or everything). Subscriptions flow the
other way: the XPUB passes each topic's first subscription and last unsubscription to the XSUB,
which sends them to every camera (and, when a camera connects, every topic live at that moment), so
a capture sends only what some monitor wants and its "wait for a subscriber" works through the relay.

No frame is copied or parsed on the way: the proxy is libzmq's C loop. A monitor that cannot keep up
loses frames at the relay (its own queue, `monitor_hwm` messages, is full; the others go on): it
counts them as lost from the gap in its sequence. The cameras are never held back by a slow monitor.

Stop: TERMINATE on the control socket ends the proxy, then the sockets close with the socket linger
(0.5 s), so a stop is bounded. A subscription flood (more topics than the tap allows, relay/tap.py)
resets the monitors' side: the XPUB is closed and bound again (which frees libzmq's topic trie; every
monitor reconnects and subscribes again by itself) and every live topic is unsubscribed upstream.
"""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass

from edgepipe.transport.sockets import DEFAULTS, _bind, _heartbeats, bind_again

log = logging.getLogger(__name__)

CAMERAS_DOMAIN = b"edgepipe-cameras"  # ZAP domains: one allow-list each
MONITORS_DOMAIN = b"edgepipe-monitors"
_ids = itertools.count()


@dataclass(frozen=True)
class RelayLimits:
    camera_hwm: int = 1000  # messages from the cameras queued for the proxy (then TCP, then the capture drops)
    monitor_hwm: int = 1000  # messages queued for each monitor; beyond, that monitor loses frames (counted there)
    linger_ms: int = DEFAULTS.linger_ms
    max_streams: int = 256  # stream ids with counts of their own in the metrics (the rest: `other`)
    max_topics: int = 1024  # live distinct topics (a sharded monitor holds 2 x 256 / N, a stream two: wire v4 and v5)
    max_topic_bytes: int = 64 * 1024


class Relay:
    """The two bound sockets, the proxy thread, the tap and the control socket.

    `curve`: a security.CurveServer (the relay's key pair; the allow-lists are the ZAP handler's, per
    domain); None for plain text (the ZAP handler still sees every peer, for the counts)."""

    def __init__(self, cameras: str, monitors: str, context, curve=None, limits: RelayLimits | None = None):
        import zmq

        from edgepipe.relay.tap import Tap

        self._zmq = zmq
        self.ctx, self.curve = context, curve
        self.limits = limits or RelayLimits()
        self.cameras_endpoint, self.monitors_endpoint = cameras, monitors
        self.cameras = self.monitors = self.tap = self._tap_out = self._control = self._steer = None
        self.resets = 0
        self.error: BaseException | None = None
        self.on_reopen: list = []  # callbacks (old socket, new socket) when the monitors' side is reset
        self._reset_wanted = threading.Event()
        self._stopping = threading.Event()
        self._steer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        n = next(_ids)
        try:
            self.cameras = self._open_cameras(cameras)
            self.monitors = self._open_monitors(monitors)
            tap_endpoint, control_endpoint = f"inproc://edgepipe-relay-tap-{n}", f"inproc://edgepipe-relay-ctl-{n}"
            self._tap_out = context.socket(zmq.PAIR)  # the proxy's capture socket; blocks when the tap lags
            self._tap_out.setsockopt(zmq.SNDHWM, 10_000)
            self._tap_out.setsockopt(zmq.LINGER, 0)
            self._tap_out.bind(tap_endpoint)
            lim = self.limits
            self.tap = Tap(context, tap_endpoint, lim.max_streams, lim.max_topics, lim.max_topic_bytes)
            self.tap.on_flood = self.request_reset
            self._control = context.socket(zmq.PAIR)  # the proxy's end
            self._control.setsockopt(zmq.LINGER, 0)
            self._control.bind(control_endpoint)
            self._steer = context.socket(zmq.PAIR)  # ours: TERMINATE
            self._steer.setsockopt(zmq.LINGER, 0)
            self._steer.connect(control_endpoint)
        except BaseException:
            self.close()
            raise

    # --- sockets --------------------------------------------------------------------------------

    def _open_cameras(self, endpoint: str):
        zmq = self._zmq
        sock = self.ctx.socket(zmq.XSUB)
        sock.setsockopt(zmq.RCVHWM, self.limits.camera_hwm)
        sock.setsockopt(zmq.LINGER, self.limits.linger_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, DEFAULTS.max_message_bytes)  # as a monitor: a bigger part drops that peer
        _heartbeats(sock, DEFAULTS)
        self._secure(sock, CAMERAS_DOMAIN)
        _bind(sock, endpoint)
        return sock

    def _open_monitors(self, endpoint: str):
        zmq = self._zmq
        sock = self.ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, self.limits.monitor_hwm)
        sock.setsockopt(zmq.LINGER, self.limits.linger_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, 1024)  # monitors only ever send (un)subscriptions
        _heartbeats(sock, DEFAULTS)
        self._secure(sock, MONITORS_DOMAIN)
        _bind(sock, endpoint)
        return sock

    def _secure(self, sock, domain: bytes) -> None:
        if self.curve is not None:
            from edgepipe.transport.security import configure_server

            configure_server(sock, self.curve, domain)
        else:
            sock.zap_domain = domain  # plain text: the ZAP handler still counts (and could ban) peers

    @property
    def bound(self) -> tuple[str, str]:
        """(cameras, monitors) as bound: the real ports for :0."""
        return self.cameras.last_endpoint.decode(), self.monitors.last_endpoint.decode()

    # --- running --------------------------------------------------------------------------------

    def start(self) -> Relay:
        self.tap.start()
        self._thread = threading.Thread(target=self._run, name="edgepipe-relay-proxy", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        zmq = self._zmq
        try:
            while not self._stopping.is_set():
                zmq.proxy_steerable(self.cameras, self.monitors, self._tap_out, self._control)
                while self._control.poll(0):  # a TERMINATE that came while it stopped: not for the next run
                    self._control.recv()
                if self._stopping.is_set():
                    break
                if self._reset_wanted.is_set():
                    self._reset_monitors_side()
        except zmq.ContextTerminated:
            pass
        except BaseException as exc:  # the service sees it (alive() is False) and stops, in one line
            self.error = exc
            log.error("relay: the proxy stopped: %s", exc)

    def request_reset(self) -> None:
        """From the tap's thread: stop the proxy so that its thread resets the monitors' side."""
        self._reset_wanted.set()
        self._terminate_proxy()

    def _terminate_proxy(self) -> None:
        zmq = self._zmq
        with self._steer_lock:
            if self._steer is None:
                return
            try:
                self._steer.send(b"TERMINATE", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _reset_monitors_side(self) -> None:
        """In the proxy thread, the proxy stopped: a new XPUB on the same address, every topic unsubscribed
        upstream (frees the XSUB's trie, and tells the cameras), the proxy's reply to TERMINATE read."""
        self._reset_wanted.clear()
        self.resets += 1
        old = self.monitors
        address = old.last_endpoint.decode()
        old.close(0)
        self.monitors = bind_again(self._open_monitors, address)
        for topic in self.tap.forget_topics():
            self.cameras.send(b"\x00" + topic)
        with self._steer_lock:
            while self._steer.poll(0):  # the proxy's empty replies to TERMINATE
                self._steer.recv()
        for callback in self.on_reopen:
            callback(old, self.monitors)
        log.warning("relay: the monitors' side was reset (%d resets): monitors reconnect and subscribe again",
                    self.resets)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ends the proxy (bounded); the tap counts what the proxy had copied to it."""
        self._stopping.set()
        self._terminate_proxy()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("relay: the proxy did not stop within %.0f s; closing its sockets anyway", timeout_s)
        if self.tap is not None:
            self.tap.stop()
            self.tap.drain()

    def close(self) -> None:
        """Idempotent: every socket closes (the data sockets with the bounded linger)."""
        if self._thread is not None and self._thread.is_alive():
            self.stop()
        if self.tap is not None:
            self.tap.close()  # its counts stay readable
        with self._steer_lock:
            for name in ("_steer", "_control", "_tap_out", "monitors", "cameras"):
                sock = getattr(self, name)
                if sock is not None:
                    sock.close()
                    setattr(self, name, None)
