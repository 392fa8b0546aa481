"""The capture as a long-running service: publisher (CURVE or plain text), allow-list, back channel,
metrics endpoint and systemd notifications around CaptureLoop. Startup and shutdown order: ops/service.py."""
from __future__ import annotations

import threading

from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.edge.stats import CaptureStats
from edgepipe.ops.service import ServiceOptions, close_in_order, server_curve


class CaptureService:
    """CaptureLoop + data socket + control socket + allow-list + metrics + sd_notify."""

    def __init__(self, settings: CaptureSettings, options: ServiceOptions | None = None, source=None,
                 engine=None):
        import zmq

        from edgepipe.transport.security import ZAP_DOMAIN, HandshakeWatcher, ZapHandler, check_plaintext_allowed
        from edgepipe.transport.sockets import Publisher

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
            self.publisher = Publisher(settings.publish, context=self.context, curve=curve, zap_domain=ZAP_DOMAIN,
                                       stream_id=settings.stream_id)  # waits for a monitor that takes this stream
            self.publisher.on_flood = self.zap.ban
            if curve is not None:
                self.handshakes.watch(self.publisher.sock, "capture data")
                self.publisher.on_reopen.append(self.handshakes.replace)
            self.loop = CaptureLoop(settings, source=source, engine=engine, publisher=self.publisher)
            if options.control:
                from edgepipe.transport.control import ControlServer

                self.control = ControlServer(options.control, settings.stream_id, self.loop.request_keyframe,
                                             self.context, curve, qp_range=self.loop.remote_qp,
                                             on_qp=self.loop.request_qp, on_qp_refused=self.loop.stats.qp_refused,
                                             engines=self.loop.remote_engines, on_engine=self.loop.request_engine,
                                             on_engine_refused=self.loop.stats.engine_refused)
                if curve is not None:
                    self.handshakes.watch(self.control.sock, "capture control")
            if options.metrics:
                from edgepipe.ops.metrics import CaptureCollector, MetricsServer, registry_for

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
        from edgepipe.ops.watchdog import FlowWatchdog, Notifier

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
        close_in_order(self, [("metrics", "close"), ("handshakes", "stop"), ("control", "close"),
                               ("loop", "close"), ("publisher", "close"), ("zap", "stop"),
                               ("context", "term")])  # term returns once every linger has run out
