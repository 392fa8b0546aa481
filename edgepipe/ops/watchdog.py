"""systemd readiness and watchdog over $NOTIFY_SOCKET (sd_notify), with the stdlib only.

Type=notify: READY=1 once sockets are bound and the source and model are open; STOPPING=1 as soon
as a stop is asked for. WatchdogSec=: WATCHDOG=1 is sent only while `progress()` keeps rising (for
capture: frames out of the encoder, or reopen attempts of a camera that is down; for the monitor:
messages handled, and while no message comes, turns of its loop only as long as the transport is
healthy, i.e. connected or reconnecting: see Monitor.alive). A stuck camera read, encoder or
classifier, or a connection the transport dropped and could not repair, stops the count, the pings
stop, and systemd restarts the service. An idle monitor says so in STATUS=. Outside systemd every
call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify(3) in a few lines: one datagram per message to $NOTIFY_SOCKET."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):  # abstract namespace
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
            return True
        except OSError as exc:  # systemd gone or socket full: never fatal for the pipeline
            log.debug("sd_notify %r failed: %s", message, exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class FlowWatchdog:
    """Sends READY=1, then WATCHDOG=1 every watchdog/3 s while `progress()` has risen since the
    last check, STATUS= lines with `status()`, and STOPPING=1 when `stop` is set."""

    def __init__(self, notifier: Notifier, progress: Callable[[], int], stop: threading.Event,
                 status: Callable[[], str] | None = None, interval_s: float | None = None):
        self.notifier = notifier
        self.progress = progress
        self.stop = stop
        self.status = status
        self.interval_s = interval_s or (notifier.watchdog_s / 3 if notifier.watchdog_s else 5.0)
        self.pings = 0
        self.missed = 0  # checks with no progress: a watchdog ping withheld
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._stopping_sent = False
        self._thread = threading.Thread(target=self._run, name="edgepipe-watchdog", daemon=True)

    def ready(self) -> None:
        """Call once everything is open; starts the watchdog thread."""
        msg = "READY=1"
        if self.status:
            msg += f"\nSTATUS={self.status()}"
        self.notifier.notify(msg)
        if self.notifier.enabled:
            self._thread.start()

    def _run(self) -> None:
        last = self.progress()
        next_check = time.monotonic() + self.interval_s
        while not self._done.wait(0.1):  # short ticks: STOPPING=1 goes out right after a SIGTERM
            if self.stop.is_set():
                break
            if time.monotonic() < next_check:
                continue
            next_check += self.interval_s
            now = self.progress()
            lines = []
            if self.notifier.watchdog_s:
                if now > last:
                    lines.append("WATCHDOG=1")
                    self.pings += 1
                else:
                    self.missed += 1
                    log.warning("no frames flowed for %.0f s: withholding the watchdog ping", self.interval_s)
            if self.status:
                lines.append(f"STATUS={self.status()}")
            if lines:
                self.notifier.notify("\n".join(lines))
            last = now
        self._stopping()

    def _stopping(self) -> None:
        with self._lock:
            if not self._stopping_sent:
                self._stopping_sent = True
                self.notifier.notify("STOPPING=1")

    def close(self) -> None:
        """Sends STOPPING=1 (once) and stops the thread."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._stopping()
