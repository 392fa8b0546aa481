"""The live status line of `capture` and `monitor`, every few seconds, like DeepStream's perf line.

    capture cam-1: 12.5 frames/s, 98.3 kbit/s, queues 0/0/1 of 4, dropped 0, latency p50 35 ms, monitors 1, sent 250
    monitor: 12.5 frames/s, 98.3 kbit/s, queue 0, classify queue 3, lost 0, rejected 0, top-1 74.0%, latency p50 45 ms, decoded 250, classified 240, unclassified 7

Over the last interval: frames/s is how many frames went through per second of wall clock (the
processing rate); kbit/s is on the stream's own clock, as in the report (bits over the stream time
those frames stand for; `kbit/s*` when only an older capture's frames came, which carry none: then
it is per wall second). Totals (dropped, lost, rejected, top-1 over every labelled frame so far)
and the median latency of the last frames (capture: read -> handed to ZeroMQ; monitor: capture ->
received) come from the counters the loops keep anyway (CaptureStats, Monitor): a
sample copies a few numbers under their lock, the line is made and written in this module's own
thread, so the frame path never waits for it. With a recognizer, the monitor's line also has the
frames waiting for it (`classify queue`, those in the batch being classified included) and the
decoded frames classified and unclassified so far (top-1 is over the classified labelled ones).

Where it goes (`choose_mode`): on a terminal, stderr, rewritten in place (a log message clears it
first, so the two never mix); as a plain log line every S seconds with `edgepipe -v`, or when
stderr is not a terminal and `--status-every S` is given (nothing otherwise: a journal is not
filled by default); never with `-q`.
"""
from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)
status_log = logging.getLogger("edgepipe.status")

TTY_EVERY_S = 2.0  # default interval on a terminal
LOG_EVERY_S = 5.0  # default interval of log lines (-v)


def choose_mode(quiet: bool, verbose: bool, every: float | None, stream=None) -> tuple[str | None, float]:
    """("tty" | "log" | None, interval in seconds)."""
    if quiet:
        return None, 0.0
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if verbose:
        return "log", every or LOG_EVERY_S
    if tty:
        return "tty", every or TTY_EVERY_S
    if every:
        return "log", every
    return None, 0.0


# --- samples: a few numbers copied from the loops' own counters ------------------------------------

def capture_sample(loop) -> dict:
    st = loop.stats
    with st._lock:
        sample = {"t": time.monotonic(), "frames": st.frames_sent, "bytes": st.bytes_sent, "stream_s": st.stream_s,
                  "dropped": sum(st.drops.values()), "latency": st.latency.values()}
    sample["queues"] = [q.qsize() for q in list(loop.queues.values())]
    sample["capacity"] = loop.settings.queue_size
    topics = getattr(loop.publisher, "topics", {})
    sample["monitors"] = subscriptions_taking(topics, loop.settings.stream_id) if isinstance(topics, dict) else 0
    sample["stream"] = loop.settings.stream_id
    return sample


def subscriptions_taking(topics: dict[bytes, int], stream_id: str) -> int:
    """Live subscriptions that take this stream: monitors subscribed to everything, to its shard or to it by
    name (through a relay: one per distinct topic, however many monitors share it)."""
    from edgepipe.transport.protocol import stream_topic

    topic = stream_topic(stream_id)
    return sum(n for t, n in topics.items() if n > 0 and topic.startswith(t))


def monitor_sample(monitor) -> dict:
    m = monitor
    with m._lock:
        t = m.totals
        sample = {"t": time.monotonic(), "frames": m.decoded, "bytes": t["bytes"], "stream_bytes": t["stream_bytes"],
                  "stream_s": t["stream_s"], "labelled": t["labelled"], "correct": t["correct"],
                  "lost": sum(st.lost for st in m.streams.values())
                  + sum(e.folded_lost for e in m._ids.values()) + m.expired["lost"],
                  "rejected": sum(m.rejects.values()), "messages": m.messages,
                  "latency": m.recent_latency.values(), "queue": len(m.backlog),
                  "last_message_at": m.last_message_at, "classifying": m.recognizer is not None,
                  "classified": m.classified, "unclassified": m.unclassified,
                  "references": m.references["received"], "references_lost": m.references["lost"],
                  "pairs": m.pairs.pairs, "top1_agreement": m.agreement.mean("top1_equal"),
                  "top5_overlap": m.agreement.mean("top5_overlap")}
    sample["classify_queue"] = m.pending_classifications()
    sub = m.subscriber
    sample["connected"] = sub.connected if sub is not None else None
    return sample


# --- lines ----------------------------------------------------------------------------------------

def _rate(prev: dict, cur: dict) -> str:
    dt = max(cur["t"] - prev["t"], 1e-9)
    frames = max(0, cur["frames"] - prev["frames"])
    return f"{frames / dt:.1f} frames/s"


def _kbit(prev: dict, cur: dict, stream_bytes: str = "bytes") -> str:
    stream_s = cur["stream_s"] - prev["stream_s"]
    if stream_s > 0:
        return f"{(cur[stream_bytes] - prev[stream_bytes]) * 8 / 1000 / stream_s:.1f} kbit/s"
    nbytes = cur["bytes"] - prev["bytes"]
    if nbytes > 0:  # frames without a stream clock (an older capture): per wall second, marked
        return f"{nbytes * 8 / 1000 / max(cur['t'] - prev['t'], 1e-9):.1f} kbit/s*"
    return "0 kbit/s"


def _latency(values: np.ndarray) -> str:
    return f", latency p50 {float(np.median(values)) * 1000:.0f} ms" if len(values) else ""


def capture_line(prev: dict, cur: dict) -> str:
    queues = "/".join(str(n) for n in cur["queues"]) or "-"
    return (f"capture {cur['stream']}: {_rate(prev, cur)}, {_kbit(prev, cur)}, queues {queues} of {cur['capacity']}, "
            f"dropped {cur['dropped']}{_latency(cur['latency'])}, monitors {cur['monitors']}, sent {cur['frames']}")


def monitor_line(prev: dict, cur: dict) -> str:
    top1 = f", top-1 {100 * cur['correct'] / cur['labelled']:.1f}%" if cur["labelled"] else ""
    classifying = cur.get("classifying")
    waiting = f", classify queue {cur['classify_queue']}" if classifying else ""
    line = (f"monitor: {_rate(prev, cur)}, {_kbit(prev, cur, 'stream_bytes')}, queue {cur['queue']}{waiting}, "
            f"lost {cur['lost']}, rejected {cur['rejected']}{top1}{_latency(cur['latency'])}, decoded {cur['frames']}")
    if classifying:
        line += f", classified {cur['classified']}" + (f", unclassified {cur['unclassified']}"
                                                        if cur["unclassified"] else "")
    if cur.get("references"):  # counted apart: never in the kbit/s, lost or decoded above
        line += f", references {cur['references']} (lost {cur['references_lost']})"
        if cur["pairs"]:
            line += (f", agreement top-1 {100 * cur['top1_agreement']:.1f}% top-5 {100 * cur['top5_overlap']:.1f}% "
                     f"over {cur['pairs']} pairs")
    if cur["messages"] == prev["messages"]:
        link = "" if cur["connected"] is None else (", connected" if cur["connected"] else ", not connected")
        idle = ("no message yet" if cur["last_message_at"] is None
                else f"no message for {time.time() - cur['last_message_at']:.0f} s")
        line += f" (idle: {idle}{link})"
    return line


def relay_line(prev: dict, cur: dict) -> str:
    dt = max(cur["t"] - prev["t"], 1e-9)
    mbit = (cur["bytes"] - prev["bytes"]) * 8 / 1e6 / dt
    return (f"relay: {_rate(prev, cur)} in, {mbit:.2f} Mbit/s, streams {cur['streams']}, cameras {cur['cameras']}, "
            f"monitors {cur['monitors']}, topics {cur['topics']}, forwarded {cur['frames']}")


# --- the reporter thread --------------------------------------------------------------------------

class _ClearLine(logging.Filter):
    """On a terminal: a log record clears the status line before it is written."""

    def __init__(self, reporter: StatusReporter):
        super().__init__()
        self.reporter = reporter

    def filter(self, record: logging.LogRecord) -> bool:
        self.reporter.clear()
        return True


class StatusReporter:
    """Every `every` seconds: sample(), line(previous, current), written as `mode` says."""

    def __init__(self, sample: Callable[[], dict], line: Callable[[dict, dict], str], mode: str | None,
                 every: float, stream=None):
        self.sample, self.line, self.mode, self.every = sample, line, mode, every
        self.stream = stream or sys.stderr
        self.lines = 0  # lines written (for tests)
        self._shown = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._filter = _ClearLine(self) if mode == "tty" else None
        self._handlers: list[logging.Handler] = []

    def start(self) -> StatusReporter:
        if self.mode is None:
            return self
        if self.mode == "log" and status_log.getEffectiveLevel() > logging.INFO:
            status_log.setLevel(logging.INFO)  # asked for with --status-every: shown whatever the log level
        if self._filter is not None:
            self._handlers = list(logging.getLogger().handlers)
            for h in self._handlers:
                h.addFilter(self._filter)
        self._thread = threading.Thread(target=self._run, name="edgepipe-status", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            prev = self.sample()
        except Exception:
            log.debug("status sample failed", exc_info=True)
            return
        while not self._stop.wait(self.every):
            try:
                cur = self.sample()
                text = self.line(prev, cur)
            except Exception:  # a status line never ends a capture or a monitor
                log.debug("status line failed", exc_info=True)
                continue
            prev = cur
            self.emit(text)

    def emit(self, text: str) -> None:
        if self.mode == "log":
            status_log.info(text)
        else:
            width = shutil.get_terminal_size((120, 24)).columns
            with self._lock:
                try:
                    self.stream.write("\r" + text[:max(20, width - 1)] + "\x1b[K")
                    self.stream.flush()
                except (OSError, ValueError):
                    return
                self._shown = True
        self.lines += 1

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                try:
                    self.stream.write("\r\x1b[K")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
                self._shown = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        for h in self._handlers:
            h.removeFilter(self._filter)
        self._handlers = []
        self.clear()

    def __enter__(self) -> StatusReporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
