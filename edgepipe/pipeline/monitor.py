"""Server side: receive, validate, decode, classify, and account accuracy against bitrate.

Sequencing is tracked per (stream, epoch): a gap in `seq` is counted as lost frames; after a gap,
or when joining mid-stream, HEVC frames are not decodable until the next keyframe and are counted
as `waiting_for_keyframe`, never shown. Accuracy and rate are accounted per (stream, model, QP).
Every rejected message is counted by cause and logged (rate-limited); the monitor keeps running.
Every message counts exactly once: decoded, or one reject. A replayed or reordered frame
(`out_of_order`) is rejected, not decoded, since it would corrupt the decoder's references. Memory
stays bounded for a monitor that runs for months: at most `max_streams` stream ids (a flood of
invented ids is rejected as `too_many_streams`; a restarted camera's new epoch always gets in, and
old epochs keep only their counts), and latency medians over the last 10,000 frames of each row.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgepipe.pipeline.codecs import HevcDecoder, decode_image
from edgepipe.pipeline.transport import FrameHeader, ProtocolError, Subscriber, parse_message

log = logging.getLogger(__name__)

# A gap in `seq` is loss only while it is plausible: no capture numbers more than MAX_GAP_RATE frames a
# second of the monitor's clock (since the last in-sequence frame), plus MAX_GAP_SLACK for bursts. A
# bigger jump (one forged seq = 2**64-1) is rejected as `seq_jump`: it moves nothing, later frames count.
MAX_GAP_RATE = 250.0
MAX_GAP_SLACK = 256


@dataclass
class RateAccount:
    """One row of the report: a (stream, model, QP) operating point."""

    frames: int = 0
    bytes: int = 0
    pixels: int = 0
    labelled: int = 0
    correct: int = 0
    first_capture: float = float("inf")
    last_capture: float = float("-inf")
    latency_s: deque = field(default_factory=lambda: deque(maxlen=10000))  # recent frames, for the median
    latency_sum_s: float = 0.0  # all frames, for the mean in metrics

    def add(self, header: FrameHeader, nbytes: int, prediction: int | None, latency: float) -> None:
        self.frames += 1
        self.bytes += nbytes
        self.pixels += header.width * header.height
        self.first_capture = min(self.first_capture, header.capture_time)
        self.last_capture = max(self.last_capture, header.capture_time)
        self.latency_s.append(latency)
        self.latency_sum_s += latency
        if header.label >= 0 and prediction is not None:
            self.labelled += 1
            self.correct += int(prediction == header.label)

    def summary(self) -> dict:
        span = self.last_capture - self.first_capture
        # rate over the capture span, extended by one mean frame interval so N frames span N intervals
        duration = span * self.frames / (self.frames - 1) if self.frames > 1 and span > 0 else 0.0
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "bpp": round(self.bytes * 8 / self.pixels, 5) if self.pixels else None,
            "bytes_per_frame": round(self.bytes / self.frames, 1) if self.frames else None,
            "kbit_s": round(self.bytes * 8 / 1000 / duration, 2) if duration else None,
            "top1": round(self.correct / self.labelled, 5) if self.labelled else None,
            "labelled": self.labelled,
            "latency_ms_p50": round(float(np.median(self.latency_s)) * 1000, 2) if self.latency_s else None,
        }


@dataclass
class StreamState:
    """Sequencing and decoding state of one (stream, epoch)."""

    expected_seq: int | None = None
    decoder: HevcDecoder | None = None
    waiting_keyframe: bool = True
    received: int = 0
    lost: int = 0
    last_accepted_at: float = 0.0  # monitor clock (received_at) of the last in-sequence frame


class Monitor:
    def __init__(self, classify: Callable[[np.ndarray], int] | None, subscriber: Subscriber | None = None,
                 on_loss: Callable[[str], None] | None = None, max_streams: int = 256,
                 max_gap_rate: float = MAX_GAP_RATE, max_gap_slack: int = MAX_GAP_SLACK):
        self.classify = classify  # one RGB frame -> ImageNet index; None: accounting only
        self.subscriber = subscriber
        self.on_loss = on_loss  # hook for the keyframe back channel
        self.max_streams = max_streams
        self.max_gap_rate, self.max_gap_slack = max_gap_rate, max_gap_slack
        self.ticks = 0  # receive-loop iterations: the service watchdog's sign of life
        self.timings = {"decode": [0, 0.0], "classify": [0, 0.0]}  # stage -> [frames, seconds]
        self.streams: dict[tuple[str, int], StreamState] = {}
        self._stream_ids: set[str] = set()  # capped at max_streams; epochs of one stream count once
        self.rows: dict[tuple[str, str, int, str], RateAccount] = {}
        self.rejects: Counter = Counter()
        self.messages = 0
        self.decoded = 0
        self._last_reject_log = 0.0
        self._lock = threading.Lock()

    # --- one message ----------------------------------------------------------------------------

    def handle(self, parts: list[bytes], received_at: float | None = None) -> np.ndarray | None:
        """Process one message; returns the decoded frame, or None when it was rejected or skipped."""
        received_at = time.time() if received_at is None else received_at
        with self._lock:
            self.messages += 1
            try:
                header, payload = parse_message(parts)
            except ProtocolError as exc:
                self._reject(exc.cause, str(exc))
                return None
            state = self._sequence(header, received_at)
            if state is None:  # rejected (out of order, too many streams)
                return None
            if header.codec == "hevc" and state.waiting_keyframe and not header.keyframe:
                self._reject("waiting_for_keyframe", f"{header.stream_id} seq {header.seq}")
                return None
            t0 = time.perf_counter()
            try:
                image = self._decode(header, payload, state)
            except Exception as exc:  # any decoder failure on hostile bytes is a counted reject
                self._reject("undecodable", f"{header.stream_id} seq {header.seq}: {exc}")
                if header.codec == "hevc":
                    state.waiting_keyframe = True
                    state.decoder = None
                return None
            self._timed("decode", time.perf_counter() - t0)
            if image is None:  # no picture (our low-latency streams give one per packet): counted, not shown
                self._reject("no_picture", f"{header.stream_id} seq {header.seq}: the decoder gave no picture")
                return None
            if image.shape[:2] != (header.height, header.width):
                self._reject("size_mismatch", f"decoded {image.shape[1]}x{image.shape[0]}, header says "
                                              f"{header.width}x{header.height}")
                return None
            state.waiting_keyframe = False
            self.decoded += 1
        t0 = time.perf_counter()
        prediction = self.classify(image) if self.classify else None
        with self._lock:
            if self.classify:
                self._timed("classify", time.perf_counter() - t0)
            key = (header.stream_id, header.model_id, header.qp, header.codec)
            self.rows.setdefault(key, RateAccount()).add(header, len(payload), prediction, received_at - header.capture_time)
        return image

    def _timed(self, stage: str, seconds: float) -> None:
        t = self.timings[stage]
        t[0] += 1
        t[1] += seconds

    def _sequence(self, header: FrameHeader, now: float) -> StreamState | None:
        key = (header.stream_id, header.epoch)
        state = self.streams.get(key)
        if state is None:
            known = header.stream_id in self._stream_ids
            if not known and len(self._stream_ids) >= self.max_streams:
                # a new epoch of a known camera is always let in; invented stream ids are not
                self._reject("too_many_streams", f"{len(self._stream_ids)} streams already; "
                                                 f"ignoring {header.stream_id!r}")
                return None
            if known:
                for (sid, _epoch), old in self.streams.items():
                    if sid == header.stream_id:  # the earlier epoch keeps its counts, not its decoder
                        old.decoder = None
                log.info("stream %s restarted (epoch %d): new accounting period", header.stream_id, header.epoch)
            self._stream_ids.add(header.stream_id)
            state = self.streams[key] = StreamState()
        if state.expected_seq is not None and header.seq != state.expected_seq:
            if header.seq > state.expected_seq:
                gap = header.seq - state.expected_seq
                plausible = self.max_gap_slack + self.max_gap_rate * max(0.0, now - state.last_accepted_at)
                if gap > plausible:  # no capture numbers frames that fast: a forged or corrupt seq, not loss
                    self._reject("seq_jump", f"{header.stream_id} seq {header.seq} jumps {gap} frames ahead of "
                                             f"{state.expected_seq} (at most {plausible:.0f} are plausible)")
                    return None
                state.lost += gap
                log.warning("stream %s: %d frame(s) lost before seq %d", header.stream_id, gap, header.seq)
                state.waiting_keyframe = True
                if self.on_loss:
                    self.on_loss(header.stream_id)
            else:  # a duplicate or a replay: decoding it would corrupt the references
                self._reject("out_of_order", f"{header.stream_id} seq {header.seq} < {state.expected_seq}")
                return None
        state.received += 1  # after the replay check: a replayed frame is not received twice
        state.last_accepted_at = now
        state.expected_seq = max(header.seq + 1, state.expected_seq or 0)
        return state

    @staticmethod
    def _decode(header: FrameHeader, payload: bytes, state: StreamState) -> np.ndarray | None:
        if header.codec != "hevc":
            return decode_image(header.codec, payload)
        if state.decoder is None:
            state.decoder = HevcDecoder()
        frames = state.decoder.decode(payload, header.width, header.height)
        return frames[-1] if frames else None

    def _reject(self, cause: str, detail: str) -> None:
        self.rejects[cause] += 1
        now = time.monotonic()
        if now - self._last_reject_log > 1.0:  # at most one line a second under a flood
            log.warning("rejected message (%s): %s [%d rejected so far]", cause, detail[:200], sum(self.rejects.values()))
            self._last_reject_log = now

    # --- driver ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, max_frames: int | None = None,
            idle_timeout: float | None = None) -> None:
        """Receive until `stop`, `max_frames` decoded frames, or `idle_timeout` seconds without a message."""
        stop = stop or threading.Event()
        last_message = time.monotonic()
        while not stop.is_set():
            self.ticks += 1
            parts = self.subscriber.recv()
            if parts is None:
                if idle_timeout is not None and time.monotonic() - last_message > idle_timeout:
                    break
                continue
            last_message = time.monotonic()
            self.handle(parts)
            if max_frames is not None and self.decoded >= max_frames:
                break

    # --- reporting ------------------------------------------------------------------------------

    def report(self) -> dict:
        with self._lock:
            rows = [{"stream": s, "model": m, "qp": q, "codec": c, **acc.summary()}
                    for (s, m, q, c), acc in sorted(self.rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))]
            streams = [{"stream": s, "epoch": e, "received": st.received, "lost": st.lost}
                       for (s, e), st in self.streams.items()]
            return {
                "messages": self.messages,
                "decoded": self.decoded,
                "lost": sum(st.lost for st in self.streams.values()),
                "rejects": dict(self.rejects),
                "streams": streams,
                "rows": rows,
            }


def format_table(report: dict) -> str:
    """The accuracy/bitrate table for the terminal."""
    head = f"{'stream':<14} {'model':<20} {'codec':<8} {'QP':>4} {'frames':>6} {'bpp':>8} {'kbit/s':>9} {'B/frame':>9} {'top-1':>7}"
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        top1 = f"{100 * r['top1']:6.1f}%" if r["top1"] is not None else "    n/a"
        kbps = f"{r['kbit_s']:9.1f}" if r["kbit_s"] is not None else "      n/a"
        lines.append(f"{r['stream'][:14]:<14} {r['model'][:20]:<20} {r['codec']:<8} {r['qp']:>4} {r['frames']:>6} "
                     f"{r['bpp']:>8.4f} {kbps} {r['bytes_per_frame']:>9.0f} {top1}")
    rejects = ", ".join(f"{k}={v}" for k, v in sorted(report["rejects"].items())) or "none"
    lines.append(f"messages {report['messages']}, decoded {report['decoded']}, lost {report['lost']}, rejected: {rejects}")
    return "\n".join(lines)


def json_safe(value):
    """The same data with every non-finite float as None: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(report: dict, path: str | Path) -> None:
    """Atomically: a report is never left half-written, even when the monitor is killed mid-write.
    Always valid JSON (RFC 8259): a non-finite number is written as null, never as NaN."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
    os.replace(tmp, path)
