"""The relay as a long-running service: the allow-lists (ZAP, one per side), connection and handshake
counts, the proxy (relay/proxy.py), metrics and systemd notifications. Startup: keys first, then
the addresses (plain text only on loopback or with --insecure), then the sockets; shutdown in reverse,
bounded by the socket linger."""
from __future__ import annotations

import logging
import threading
import time

from edgepipe.core.errors import EdgepipeError
from edgepipe.ops.service import close_in_order, relay_curve
from edgepipe.relay.proxy import CAMERAS_DOMAIN, MONITORS_DOMAIN, Relay, RelayLimits
from edgepipe.relay.tap import OTHER

log = logging.getLogger(__name__)

CAMERAS, MONITORS = "relay cameras", "relay monitors"  # roles in the handshake and connection counts


class RelayService:
    """Relay + ZAP allow-lists + handshake/connection watcher + metrics + sd_notify."""

    def __init__(self, cameras: str, monitors: str, key: str | None = None, allow_cameras: tuple[str, ...] = (),
                 allow_monitors: tuple[str, ...] = (), insecure: bool = False, metrics: str | None = None,
                 limits: RelayLimits | None = None):
        import zmq

        from edgepipe.transport.security import HandshakeWatcher, ZapHandler, check_plaintext_allowed

        curve = relay_curve(key, tuple(allow_cameras), tuple(allow_monitors))
        if curve is None:  # before anything binds
            for endpoint in (cameras, monitors):
                check_plaintext_allowed(endpoint.replace("://*:", "://0.0.0.0:"), insecure, "relay")
        self.curve = curve
        self.started = time.monotonic()
        self.context = zmq.Context()
        self.zap = self.handshakes = self.relay = self.metrics = None
        try:
            domains = {CAMERAS_DOMAIN: curve.cameras if curve else None,
                       MONITORS_DOMAIN: curve.monitors if curve else None}
            self.zap = ZapHandler(self.context, None, domains=domains).start()
            self.handshakes = HandshakeWatcher(self.context)
            self.relay = Relay(cameras, monitors, self.context, curve.server if curve else None, limits)
            self.handshakes.watch(self.relay.cameras, CAMERAS, connections=True)
            self.handshakes.watch(self.relay.monitors, MONITORS, connections=True)
            self.relay.on_reopen.append(self.handshakes.replace)
            if metrics:
                from edgepipe.ops.metrics import MetricsServer, registry_for
                from edgepipe.relay.metrics import RelayCollector

                self.registry = registry_for(RelayCollector(self))
                self.metrics = MetricsServer(self.registry, metrics)
        except BaseException:
            self.close()
            raise

    @property
    def bound(self) -> tuple[str, str]:
        return self.relay.bound

    def progress(self) -> int:
        """The watchdog's sign of life: the tap's loop turns while the proxy runs (an idle relay is alive)."""
        relay = self.relay
        return relay.tap.ticks if relay is not None and relay.alive() else 0

    def status(self) -> str:
        counts = self.relay.tap.snapshot()
        frames = sum(counts["frames"].values())
        conns = self.handshakes.connections
        return (f"forwarded {frames} frames of {len(counts['frames'])} streams; cameras {conns[CAMERAS]}, "
                f"monitors {conns[MONITORS]}, topics {counts['topics_live']}")

    def sample(self) -> dict:
        """A few numbers for the status line (ops/status.py relay_line)."""
        counts = self.relay.tap.snapshot()
        conns = self.handshakes.connections
        return {"t": time.monotonic(), "frames": sum(counts["frames"].values()), "bytes": sum(counts["bytes"].values()),
                "streams": len(counts["frames"]), "cameras": conns[CAMERAS], "monitors": conns[MONITORS],
                "topics": counts["topics_live"]}

    def run(self, stop: threading.Event | None = None) -> dict:
        """Until `stop`; a proxy that fails ends it in one line."""
        from edgepipe.ops.watchdog import FlowWatchdog, Notifier

        stop = stop or threading.Event()
        self.handshakes.start()
        self.relay.start()
        notifier = Notifier()
        watchdog = FlowWatchdog(notifier, self.progress, stop, self.status)
        watchdog.ready()
        try:
            while not stop.wait(0.2):
                if not self.relay.alive():
                    raise EdgepipeError(f"relay: the proxy stopped: {self.relay.error or 'unknown cause'}")
        finally:
            watchdog.close()
            notifier.close()
            self.relay.stop()
        return self.report()

    def report(self) -> dict:
        """What went through, per stream, and who connected: the counts the metrics serve."""
        relay, zap, hs = self.relay, self.zap, self.handshakes
        counts = relay.tap.snapshot()
        streams = sorted(set(counts["frames"]) | set(counts["ends"]))
        span = (counts["last_at"] - counts["first_at"]) if counts["first_at"] is not None else 0.0
        frames = sum(counts["frames"].values())
        return {
            "cameras": relay.cameras_endpoint, "monitors": relay.monitors_endpoint,
            "security": "CURVE" if self.curve else "plain text",
            "uptime_s": round(time.monotonic() - self.started, 3),
            "frames": frames,
            "frames_per_s": round((frames - 1) / span, 2) if span > 0 and frames > 1 else None,
            "bytes": sum(counts["bytes"].values()) + counts["unrecognised_bytes"],
            "streams": [{"stream": s, "frames": counts["frames"].get(s, 0), "ends": counts["ends"].get(s, 0),
                         **({"references": counts["references"][s]} if s in counts["references"] else {}),
                         "bytes": counts["bytes"].get(s, 0)} for s in streams],
            "streams_over_cap": OTHER in streams,
            "unrecognised": counts["unrecognised"],
            "subscriptions": {"subscribe": counts["subscriptions"].get("subscribe", 0),
                              "unsubscribe": counts["subscriptions"].get("unsubscribe", 0),
                              "topics_live": counts["topics_live"], "floods": counts["floods"],
                              "resets": relay.resets},
            "connections": {"cameras": hs.connections[CAMERAS], "monitors": hs.connections[MONITORS],
                            "cameras_accepted": hs.accepted[CAMERAS], "monitors_accepted": hs.accepted[MONITORS]},
            "refused": {f"{domain.rsplit('-', 1)[-1]}:{cause}": n
                        for (domain, cause), n in sorted(zap.denied_by_domain.items())}
                       | {f"handshake:{cause}": n for cause, n in sorted(hs.failures.items())},
        }

    def close(self) -> None:
        """Idempotent; the proxy stops, the sockets close with a bounded linger, then the context ends."""
        close_in_order(self, [("metrics", "close"), ("handshakes", "stop"), ("relay", "close"), ("zap", "stop"),
                               ("context", "term")])
