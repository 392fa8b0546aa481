"""Capture and monitor as long-running services: sockets (CURVE or plain text), allow-list, back
channel, metrics endpoint and systemd notifications around CaptureLoop and Monitor.

Startup order is chosen so a bad setting fails with one line before anything is half-open: keys
and allow-list first, then sockets, then source and model. Shutdown closes everything in reverse,
sockets with a bounded linger, so a SIGTERM at any point ends within a few seconds.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.pipeline.capture import CaptureLoop, CaptureSettings
from edgepipe.pipeline.stats import CaptureStats

log = logging.getLogger(__name__)


@dataclass
class SecurityOptions:
    key: str | None = None  # own secret key: PATH, credential:NAME
    allow: tuple[str, ...] = ()  # capture: monitor public keys / folders of *.key
    server_key: str | None = None  # monitor: the capture's public key
    insecure: bool = False  # plain text beyond loopback, only when asked for


@dataclass
class ServiceOptions:
    control: str | None = None  # capture: endpoint to bind; monitor: endpoint to connect
    metrics: str | None = None  # PORT, :PORT or HOST:PORT for /metrics
    security: SecurityOptions = field(default_factory=SecurityOptions)
    # monitor sinks (sinks.py): record the received stream into a file; decoded frames as PNG
    record: str | None = None
    save_frames: str | None = None
    save_every: int = 1


def server_curve(sec: SecurityOptions):
    """CurveServer for the capture, or None for plain text; key errors surface here, first."""
    from edgepipe.pipeline.security import CurveServer, load_allow_list, load_keypair

    if sec.server_key:
        raise EdgepipeError("server-key is a monitor setting; the capture takes key and allow")
    if not sec.key:
        if sec.allow:
            raise EdgepipeError("allow needs key: the capture's own secret key (edgepipe keys generate capture)")
        return None
    return CurveServer(load_keypair(sec.key), load_allow_list(sec.allow))


def client_curve(sec: SecurityOptions):
    from edgepipe.pipeline.security import CurveClient, load_keypair, load_public_key

    if sec.allow:
        raise EdgepipeError("allow is a capture setting; the monitor takes key and server-key")
    if bool(sec.key) != bool(sec.server_key):
        raise EdgepipeError("CURVE on the monitor needs both key (its own secret key) and server-key "
                            "(the capture's public key)")
    if not sec.key:
        return None
    return CurveClient(load_keypair(sec.key), load_public_key(sec.server_key))


class CaptureService:
    """CaptureLoop + data socket + control socket + allow-list + metrics + sd_notify."""

    def __init__(self, settings: CaptureSettings, options: ServiceOptions | None = None, source=None,
                 engine=None):
        import zmq

        from edgepipe.pipeline.security import ZAP_DOMAIN, HandshakeWatcher, ZapHandler, check_plaintext_allowed
        from edgepipe.pipeline.transport import Publisher

        self.options = options = options or ServiceOptions()
        curve = server_curve(options.security)
        self.curve = curve
        self.context = zmq.Context()
        self.zap = self.handshakes = self.publisher = self.loop = self.control = self.metrics = None
        try:
            if curve is None:  # before anything binds
                check_plaintext_allowed(settings.publish, options.security.insecure, "capture")
                if options.control:
                    check_plaintext_allowed(options.control, options.security.insecure, "capture")
            # the allow-list (CURVE), or for plain text only bans (a subscription flood)
            self.zap = ZapHandler(self.context, curve.allowed if curve is not None else None).start()
            if curve is not None:
                self.handshakes = HandshakeWatcher(self.context)
            self.publisher = Publisher(settings.publish, context=self.context, curve=curve, zap_domain=ZAP_DOMAIN)
            self.publisher.on_flood = self.zap.ban
            if curve is not None:
                self.handshakes.watch(self.publisher.sock, "capture data")
                self.publisher.on_reopen.append(self.handshakes.replace)
            self.loop = CaptureLoop(settings, source=source, engine=engine, publisher=self.publisher)
            if options.control:
                from edgepipe.pipeline.backchannel import ControlServer

                self.control = ControlServer(options.control, settings.stream_id, self.loop.request_keyframe,
                                             self.context, curve)
                if curve is not None:
                    self.handshakes.watch(self.control.sock, "capture control")
            if options.metrics:
                from edgepipe.pipeline.metrics import CaptureCollector, MetricsServer, registry_for

                self.registry = registry_for(CaptureCollector(self.loop, self.control, self.zap, self.handshakes))
                self.metrics = MetricsServer(self.registry, options.metrics)
        except BaseException:
            self.close()
            raise

    def progress(self) -> int:
        """Frames out of the encoder, plus reopen attempts of a live source that is down."""
        return self.loop.frames_handled + getattr(self.loop.source, "open_attempts", 0)

    def status(self) -> str:
        st = self.loop.stats
        drops = sum(st.drops.values())
        return f"sent {st.frames_sent} frames, dropped {drops}, keyframe requests {st.keyframe_requests}"

    def run(self, stop: threading.Event | None = None) -> CaptureStats:
        from edgepipe.pipeline.watchdog import FlowWatchdog, Notifier

        stop = stop or threading.Event()
        if self.handshakes is not None:
            self.handshakes.start()
        if self.control is not None:
            self.control.start()
        notifier = Notifier()
        watchdog = FlowWatchdog(notifier, self.progress, stop, self.status)
        watchdog.ready()
        try:
            return self.loop.run(stop)
        finally:
            watchdog.close()
            notifier.close()

    def close(self) -> None:
        """Idempotent; every socket closes with a bounded linger, then the context ends."""
        _close_in_order(self, [("metrics", "close"), ("handshakes", "stop"), ("control", "close"),
                               ("loop", "close"), ("publisher", "close"), ("zap", "stop"),
                               ("context", "term")])  # term returns once every linger has run out


class MonitorService:
    """Monitor + data socket + keyframe back channel + metrics + sd_notify."""

    def __init__(self, connect: str, classify: Callable[[np.ndarray], int] | None,
                 options: ServiceOptions | None = None, max_streams: int = 256):
        import zmq

        from edgepipe.pipeline.monitor import Monitor
        from edgepipe.pipeline.security import HandshakeWatcher, check_plaintext_allowed
        from edgepipe.pipeline.transport import Subscriber

        self.options = options = options or ServiceOptions()
        curve = client_curve(options.security)
        if curve is None:
            check_plaintext_allowed(connect, options.security.insecure, "monitor")
            if options.control:
                check_plaintext_allowed(options.control, options.security.insecure, "monitor")
        self.connect, self.curve = connect, curve
        self.started = time.monotonic()
        self.context = zmq.Context()
        self.subscriber = self.control = self.handshakes = self.metrics = self.sinks = None
        try:
            if options.record or options.save_frames:  # files first: a bad path fails before any socket
                from edgepipe.pipeline.sinks import FrameSinks

                self.sinks = FrameSinks(options.record, options.save_frames, options.save_every)
            self.subscriber = Subscriber(connect, context=self.context, curve=curve)
            if options.control:
                from edgepipe.pipeline.backchannel import ControlClient

                self.control = ControlClient(options.control, self.context, curve)
            if curve is not None:
                self.handshakes = HandshakeWatcher(self.context)
                self.subscriber.on_event = lambda event: self.handshakes.record("monitor data", event)
                if self.control is not None:
                    self.handshakes.watch(self.control.sock, "monitor control")
            self.monitor = Monitor(classify, self.subscriber,
                                   on_loss=self.control.request_keyframe if self.control else None,
                                   max_streams=max_streams)
            self.monitor.sinks = self.sinks
            if options.metrics:
                from edgepipe.pipeline.metrics import MetricsServer, MonitorCollector, registry_for

                self.registry = registry_for(MonitorCollector(self.monitor, self.control, self.handshakes))
                self.metrics = MetricsServer(self.registry, options.metrics)
        except BaseException:
            self.close()
            raise

    def status(self) -> str:
        m = self.monitor
        rep = m.report()
        line = f"decoded {rep['decoded']} frames, lost {rep['lost']}, rejected {sum(rep['rejects'].values())}"
        sub = self.subscriber
        if sub is not None and not sub.healthy():  # the watchdog is not fed: say why before systemd acts
            return line + "; connection dropped by the transport, not repaired"
        idle = time.time() - m.last_message_at if m.last_message_at is not None else None
        if idle is None or idle > 10:  # an explicit idle state: systemctl status says why nothing moves
            link = "connected" if sub is not None and sub.connected else "not connected"
            line += f"; idle ({'no message yet' if idle is None else f'no message for {idle:.0f} s'}, {link})"
        return line

    def run(self, stop: threading.Event | None = None, max_frames: int | None = None,
            idle_timeout: float | None = None) -> dict:
        from edgepipe.pipeline.watchdog import FlowWatchdog, Notifier

        stop = stop or threading.Event()
        if self.handshakes is not None:
            self.handshakes.start()
        notifier = Notifier()
        watchdog = FlowWatchdog(notifier, lambda: self.monitor.alive, stop, self.status)
        watchdog.ready()
        try:
            self.monitor.run(stop, max_frames=max_frames, idle_timeout=idle_timeout)
        finally:
            watchdog.close()
            notifier.close()
        return self.monitor.report()

    def diagnosis(self) -> str | None:
        """None when any message arrived; else, in plain words, that no frame arrived, what was seen
        of the connection and the likely causes (the monitor then exits non-zero)."""
        m = self.monitor
        ends = sum(m.end_of_stream.values())
        if m.messages:
            return None
        sub = self.subscriber or m.subscriber
        failures = sum(self.handshakes.failures.values()) if self.handshakes is not None else 0
        listened = time.monotonic() - self.started
        if ends:
            seen = (f"only {ends} end-of-stream message(s) arrived: a capture finished before this monitor "
                    "joined (or its frames went out before the connection was made)")
        elif failures:
            seen = (f"the CURVE handshake failed {failures} time(s): the keys do not match (see "
                    "`check server-key` / `allow-list` in the log above)")
        elif sub is not None and sub.connections == 0:
            seen = f"no connection to {self.connect} was ever made: nothing listens there"
        else:
            seen = f"connected to {self.connect}, but nothing was sent to this monitor while it listened"
        curve = ("--server-key is not the capture's public key, or this monitor's public key is not in the "
                 "capture's --allow list" if self.curve is not None else
                 "the capture runs CURVE (--key/--allow) and this monitor has no --key/--server-key")
        return "\n".join([
            f"monitor: no frame arrived from {self.connect} in {listened:.0f} s: {seen}.",
            "Likely causes:",
            "  - a wrong endpoint: --connect must be the capture's --publish address (its host, and the same port)",
            "  - the capture is not running (yet): start it, or check `systemctl status edgepipe-capture`",
            f"  - CURVE keys that do not match: {curve}",
            "  - a capture that finished before this monitor joined: a file or folder waits only 10 s for a "
            "monitor (--wait-subscriber), so start the monitor first",
        ])

    def report(self) -> dict:
        return self.monitor.report()

    def close(self) -> None:
        """Idempotent. The sinks finish writing (bounded) after the monitor stopped, before the report."""
        _close_in_order(self, [("metrics", "close"), ("handshakes", "stop"), ("control", "close"),
                               ("sinks", "close"), ("subscriber", "close"), ("context", "term")])


def _close_in_order(service, steps: list[tuple[str, str]]) -> None:
    """Call each attribute's closing method once, in order, and clear it (so close() is idempotent).
    A further Ctrl-C while closing does not cut the shutdown short: it is already under way."""
    for attr, method in steps:
        part = getattr(service, attr, None)
        if part is None:
            continue
        setattr(service, attr, None)
        while True:
            try:
                getattr(part, method)()
                break
            except KeyboardInterrupt:
                log.warning("already stopping")
