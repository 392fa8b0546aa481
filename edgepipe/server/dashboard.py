"""`monitor --dashboard HOST:PORT`: a live web page of what the monitor measures (issue 14 item 5).

A stdlib ThreadingHTTPServer in a daemon thread serves two things, GET and HEAD only:
- `/`: dashboard.html beside this file, one self-contained page (inline CSS, JS and SVG, nothing fetched from
  elsewhere: the machines it runs on have no internet). It polls `/api/streams` about once a second and draws
  one card per stream: its current operating point, bitrate, agreement, losses and its RD curve, and with a
  ladder the live BD-rate of each pre-transform against `none` (server/live_rd.py);
- `/api/streams`: a JSON snapshot, built from the readers the status line and the report already use
  (ops/status.monitor_sample, Monitor.report, Monitor.operating_points), each taken under the monitor's lock,
  so the page shows the same numbers as the table, the status line and the metrics. A snapshot is reused
  for SNAPSHOT_TTL_S, so any number of open pages costs the monitor at most a few snapshots a second.
Every other path is 404, every other method 405. Bounded like the metrics endpoint: at most
`max_connections` requests at once (more are closed at once), and a client that stalls is dropped after
`timeout_s`. Stream ids are sender-chosen text: the page writes them with textContent, never as HTML.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.ops.bounded_http import bounded_server
from edgepipe.ops.metrics import parse_listen
from edgepipe.ops.status import monitor_sample
from edgepipe.server.monitor import json_safe

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("dashboard.html")
SNAPSHOT_TTL_S = 0.5  # a snapshot younger than this is served again
SNAPSHOT_VERSION = 1
MEASURES = ("top1_equal", "top5_overlap", "p_reference", "kl")


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 5) if whole else None


def _point(row: dict) -> dict:
    """One report row as a point of the RD curve: the operating point, its rate and what it kept."""
    reference = row.get("reference") or {}
    agreement = reference.get("agreement") or {}
    point = {key: row.get(key) for key in ("model", "qp", "codec", "kbit_s", "kbit_s_clock", "bpp", "frames",
                                           "top1", "labelled", "classified", "unclassified", "latency_ms_p50")}
    point["pairs"] = agreement.get("pairs", 0)
    point["references_lost"] = reference.get("lost", 0)
    for name in MEASURES:
        measure = agreement.get(name) or {}
        point[name] = measure.get("mean")
        point[name + "_ci95"] = measure.get("ci95")
    return point


def snapshot(monitor, previous: dict | None = None) -> tuple[dict, dict]:
    """(what the page shows, the status sample it was built from), from the monitor's own readers. `previous`
    is the sample of the snapshot before: the monitor-wide frames/s and kbit/s are over the time between the
    two (kbit/s on the stream clock, as the status line computes it)."""
    sample = monitor_sample(monitor)
    report = monitor.report()
    current = monitor.operating_points()
    now = time.time()
    streams: dict[str, dict] = {}
    for row in report["rows"]:
        sid = row["stream"]
        card = streams.setdefault(sid, {"stream": sid, "points": []})
        card["points"].append(_point(row))
    epochs: dict[str, list[dict]] = {}
    for state in report["streams"]:  # (stream, epoch) states kept now, oldest first
        epochs.setdefault(state["stream"], []).append(state)
    for sid, states in epochs.items():
        card = streams.setdefault(sid, {"stream": sid, "points": []})
        card["epoch"] = states[-1]["epoch"]
        card["ended"] = bool(states[-1].get("ended"))
        card["received"] = sum(s["received"] for s in states)
        card["lost"] = sum(s["lost"] for s in states)
    out = []
    for sid in sorted(streams):
        card = streams[sid]
        card.setdefault("epoch", None)
        card.setdefault("ended", False)
        card.setdefault("received", 0)
        card.setdefault("lost", 0)
        points = card["points"]
        card["frames"] = sum(p["frames"] for p in points)
        card["unclassified"] = sum(p["unclassified"] for p in points)
        card["references_lost"] = sum(p["references_lost"] for p in points)
        card["loss_ratio"] = _share(card["lost"], card["received"] + card["lost"])
        # the window's curve and the BD-rates against none (server/live_rd.py), with a ladder (capture --ladder/--ab)
        card["live_rd"] = report.get("live_rd", {}).get(sid)
        op = current.get(sid)
        card["current"] = None
        card["last_frame_s_ago"] = None
        if op is not None:
            match = next((p for p in points if (p["model"], p["qp"], p["codec"]) == (op["model"], op["qp"], op["codec"])),
                         None)
            card["current"] = dict(match) if match is not None else {k: op[k] for k in ("model", "qp", "codec")}
            card["last_frame_s_ago"] = round(max(0.0, now - op["last_frame_at"]), 1) if op["last_frame_at"] else None
        out.append(card)
    live = {"frames_s": None, "kbit_s": None}
    if previous is not None:
        dt = sample["t"] - previous["t"]
        if dt > 0:
            live["frames_s"] = round(max(0, sample["frames"] - previous["frames"]) / dt, 2)
            stream_s = sample["stream_s"] - previous["stream_s"]
            if stream_s > 0:
                live["kbit_s"] = round((sample["stream_bytes"] - previous["stream_bytes"]) * 8 / 1000 / stream_s, 2)
    latency = sample["latency"]
    last = sample["last_message_at"]
    totals = {
        "messages": report["messages"], "decoded": report["decoded"], "lost": report["lost"],
        "rejected": sum(report["rejects"].values()), "rejects": report["rejects"],
        "classifying": sample["classifying"], "classified": report["classified"],
        "unclassified": report["unclassified"], "top1": _share(sample["correct"], sample["labelled"]),
        "labelled": sample["labelled"], "references": sample["references"],
        "references_lost": sample["references_lost"], "pairs": sample["pairs"],
        "top1_agreement": sample["top1_agreement"], "top5_overlap": sample["top5_overlap"],
        "connected": None if sample["connected"] is None else bool(sample["connected"]), "last_message_s_ago": round(max(0.0, now - last), 1) if last else None,
        "latency_ms_p50": round(float(np.median(latency)) * 1000, 1) if len(latency) else None,
        **live,
    }
    return json_safe({"version": SNAPSHOT_VERSION, "time": now, "monitor": totals, "streams": out}), sample


class DashboardServer:
    """The page and its JSON on `listen` (PORT, :PORT or HOST:PORT; port 0 takes a free one), until close()."""

    def __init__(self, monitor, listen: str, max_connections: int = 8, timeout_s: float = 5.0):
        host, port = parse_listen(listen, "dashboard")
        try:
            self.page = PAGE.read_bytes()
        except OSError as exc:  # an install without its package data
            raise EdgepipeError(f"dashboard: cannot read {PAGE}: {exc.strerror}") from None
        self.monitor = monitor
        self.refused = 0
        self._cache: tuple[float, bytes] | None = None
        self._previous: dict | None = None
        self._cache_lock = threading.Lock()
        Server = bounded_server(ThreadingHTTPServer, host, max_connections, self, "dashboard", backlog=64)

        try:
            self._server = Server((host, port), _handler(self, timeout_s))
        except OSError as exc:
            raise EdgepipeError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = host, self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgepipe-dashboard", daemon=True)
        self._thread.start()
        log.info("dashboard on %s", self.url)

    def snapshot_json(self) -> bytes:
        """The current snapshot as JSON bytes, shared by every request within SNAPSHOT_TTL_S."""
        with self._cache_lock:
            now = time.monotonic()
            if self._cache is not None and now - self._cache[0] < SNAPSHOT_TTL_S:
                return self._cache[1]
            data, self._previous = snapshot(self.monitor, self._previous)
            body = json.dumps(data, allow_nan=False).encode()
            self._cache = (now, body)
            return body

    def close(self) -> None:
        """Stops serving and joins the thread; idempotent."""
        if self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
        self._thread = None


def _handler(owner: DashboardServer, timeout_s: float):
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # every read and write of a request
        server_version = "edgepipe-dashboard"
        sys_version = ""

        def _send(self, status: int, body: bytes, content_type: str, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            # the page is self-contained: it may talk to this server and nothing else
            self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                                                        "style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
            if status == 405:
                self.send_header("Allow", "GET, HEAD")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _get(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, owner.page, "text/html; charset=utf-8", head)
            elif path == "/api/streams":
                try:
                    body = owner.snapshot_json()
                except Exception:  # a snapshot never ends the monitor; the page shows "disconnected"
                    log.warning("dashboard: snapshot failed", exc_info=log.isEnabledFor(logging.DEBUG))
                    self._send(500, b'{"error": "snapshot failed"}', "application/json", head)
                    return
                self._send(200, body, "application/json", head)
            else:
                self._send(404, b"not found: the dashboard serves / and /api/streams\n", "text/plain; charset=utf-8",
                           head)

        def do_GET(self) -> None:  # noqa: N802 (http.server's names)
            self._get(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._get(head=True)

        def _not_allowed(self) -> None:
            self._send(405, b"only GET and HEAD\n", "text/plain; charset=utf-8")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

        def log_message(self, *args) -> None:  # one line a second per open page would flood the journal
            pass

    return Handler
