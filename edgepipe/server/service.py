"""The monitor as a long-running service: subscriber (CURVE or plain text), keyframe back channel,
sinks, metrics endpoint and systemd notifications around Monitor. Startup and shutdown order: ops/service.py."""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from edgepipe.ops.service import ServiceOptions, client_curve, close_in_order

if TYPE_CHECKING:
    from edgepipe.server.classify import ClassifyOptions, Recognizer
    from edgepipe.transport.topics import StreamSelection

log = logging.getLogger(__name__)


class MonitorService:
    """Monitor + data socket + keyframe back channel + metrics + live dashboard + sd_notify; `classifying` says how
    frames reach the recognizer (server/classify.py), `predictions` is a JSONL file for every classified frame,
    `selection` the streams it takes (transport/topics.py: every stream, some by name, or a shard of them),
    `rd_window_s` the live BD-rate's window (server/live_rd.py), `closed_loop` the LoopSettings of monitor
    --target-agreement (server/qp_control.py; needs options.control), `engine_trials` its TrialSettings for
    --target-engines (server/engine_trial.py)."""

    def __init__(self, connect: str, classify: Recognizer | Callable[[np.ndarray], int] | None,
                 options: ServiceOptions | None = None, max_streams: int = 256,
                 classifying: ClassifyOptions | None = None, predictions: str | None = None,
                 selection: StreamSelection | None = None, rd_window_s: float | None = None, closed_loop=None,
                 engine_trials=None):
        import zmq

        from edgepipe.server.monitor import Monitor
        from edgepipe.transport.security import HandshakeWatcher, check_plaintext_allowed
        from edgepipe.transport.sockets import Subscriber
        from edgepipe.transport.topics import StreamSelection

        self.options = options = options or ServiceOptions()
        curve = client_curve(options.security)
        if curve is None:
            check_plaintext_allowed(connect, options.security.insecure, "monitor")
            if options.control:
                check_plaintext_allowed(options.control, options.security.insecure, "monitor")
        self.connect, self.curve = connect, curve
        self.selection = selection or StreamSelection()
        self.started = time.monotonic()
        self.context = zmq.Context()
        self.subscriber = self.control = self.handshakes = self.metrics = self.sinks = self.predictions = None
        self.dashboard = self.qp_loop = None
        try:
            if options.record or options.save_frames:  # files first: a bad path fails before any socket
                from edgepipe.server.sinks import FrameSinks

                self.sinks = FrameSinks(options.record, options.save_frames, options.save_every)
            if predictions:
                from edgepipe.server.predictions import PredictionWriter

                self.predictions = PredictionWriter(predictions)
            self.subscriber = Subscriber(connect, context=self.context, curve=curve, topics=self.selection.topics())
            if options.control:
                from edgepipe.transport.control import ControlClient

                self.control = ControlClient(options.control, self.context, curve)
            if curve is not None:
                self.handshakes = HandshakeWatcher(self.context)
                self.subscriber.on_event = lambda event: self.handshakes.record("monitor data", event)
                if self.control is not None:
                    self.handshakes.watch(self.control.sock, "monitor control")
            self.monitor = Monitor(classify, self.subscriber,
                                   on_loss=self.control.request_keyframe if self.control else None,
                                   max_streams=max_streams, classifying=classifying,
                                   **({"rd_window_s": rd_window_s} if rd_window_s is not None else {}))
            self.monitor.sinks = self.sinks
            if closed_loop is not None:  # the QP requests go out on the control socket, to the capture
                from edgepipe.server.qp_control import ClosedLoop

                if self.control is None:
                    raise ValueError("the closed loop needs the control channel (options.control)")
                self.qp_loop = ClosedLoop(closed_loop, self.control.request_qp, trials=engine_trials,
                                          send_engine=self.control.request_engine)
                self.monitor.on_pair = self.qp_loop.on_pair
                if engine_trials is not None:
                    self.monitor.on_frame = self.qp_loop.on_frame
            self.monitor.predictions = self.predictions
            if options.metrics:
                from edgepipe.ops.metrics import MetricsServer, MonitorCollector, registry_for

                self.registry = registry_for(MonitorCollector(self.monitor, self.control, self.handshakes))
                self.metrics = MetricsServer(self.registry, options.metrics)
            if options.dashboard:  # the live page (server/dashboard.py): it reads the monitor, never writes
                from edgepipe.server.dashboard import DashboardServer

                self.dashboard = DashboardServer(self.monitor, options.dashboard)
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
        from edgepipe.ops.watchdog import FlowWatchdog, Notifier

        stop = stop or threading.Event()
        if self.handshakes is not None:
            self.handshakes.start()
        if self.qp_loop is not None:
            self.qp_loop.start()
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
            if self.selection.as_dict() != {"all": True}:
                seen += (f" (it takes {self.selection.describe()}: a stream outside them, or a capture older than "
                         "wire version 4, never reaches it)")
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
        report = self.monitor.report(fresh_rd=True)  # the final figures: the live BD-rate over every sample now
        report["takes"] = self.selection.as_dict()
        if self.qp_loop is not None:
            report["closed_loop"] = self.qp_loop.summary()
        return report

    def close(self) -> None:
        """Idempotent. The sinks and the predictions file finish writing (bounded) after the monitor stopped,
        before the report."""
        if self.qp_loop is not None:  # kept (stopped) for the report, which comes after close
            self.qp_loop.close()
        close_in_order(self, [("dashboard", "close"), ("metrics", "close"), ("handshakes", "stop"),
                               ("control", "close"), ("sinks", "close"), ("predictions", "close"),
                               ("subscriber", "close"), ("context", "term")])
