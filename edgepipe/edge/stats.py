"""Thread-safe counters and per-stage timings for the capture loop."""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from edgepipe.core.latency import LatencyWindow

MAX_QP_TRACE = 1000  # QP changes kept in the stats' trace (the latest)


@dataclass
class StageTimer:
    count: int = 0
    busy_s: float = 0.0

    @property
    def fps(self) -> float:
        return self.count / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class CaptureStats:
    started: float = field(default_factory=time.monotonic)
    stages: dict[str, StageTimer] = field(default_factory=lambda: defaultdict(StageTimer))
    drops: Counter = field(default_factory=Counter)  # cause -> frames dropped
    frames_sent: int = 0
    bytes_sent: int = 0
    keyframes: int = 0
    keyframe_requests: int = 0
    frames_unsubscribed: int = 0  # of frames_sent: sent while no monitor was subscribed (nobody got them)
    end_of_stream: str | None = None  # "sent" / "unsent" (a stuck monitor) once the run ends
    stream_s: float = 0.0  # stream-clock seconds the sent frames stand for (kbit/s = bits / this)
    # reference frames (edge/references.py): counted apart, never in frames_sent, bytes_sent or kbit_s
    references_on: bool = False
    references_sent: int = 0
    reference_bytes: int = 0
    references_skipped: Counter = field(default_factory=Counter)  # cause -> references not sent
    # the operating-point ladder (edge/ladder.py): its points as (setting, engine spec, model id), the switches
    # between them, and the frames and bytes sent at each (by index into ladder_points)
    ladder_points: list[tuple[int, str, str]] | None = None
    ladder_switches: int = 0
    ladder_frames: Counter = field(default_factory=Counter)
    ladder_bytes: Counter = field(default_factory=Counter)
    # the closed loop (capture --allow-remote-qp): the range allowed (None: QP requests refused), the QP coded now,
    # requests obeyed, requests refused by cause (control.py's and the loop's), changes applied and their trace
    remote_qp: tuple[int, int] | None = None
    qp_now: int | None = None
    qp_requests: int = 0
    qp_refusals: Counter = field(default_factory=Counter)
    qp_changes: int = 0
    qp_trace: list = field(default_factory=list)  # [wall_s, QP] per change, the last MAX_QP_TRACE
    # the same for the pre-transform (capture --allow-remote-engine): the specs allowed, the one running now,
    # requests obeyed and refused, changes applied and their trace ([wall_s, spec] per change)
    remote_engines: tuple[str, ...] | None = None
    engine_now: str | None = None
    engine_requests: int = 0
    engine_refusals: Counter = field(default_factory=Counter)
    engine_changes: int = 0
    engine_trace: list = field(default_factory=list)
    latency: LatencyWindow = field(default_factory=LatencyWindow, repr=False)  # read -> sent, recent frames
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def timed(self, stage: str, seconds: float) -> None:
        with self._lock:
            t = self.stages[stage]
            t.count += 1
            t.busy_s += seconds

    def drop(self, cause: str, n: int = 1) -> None:
        with self._lock:
            self.drops[cause] += n

    def sent(self, nbytes: int, keyframe: bool, unsubscribed: bool = False, stream_s: float = 0.0,
             latency_s: float | None = None, point: int | None = None) -> None:
        with self._lock:
            if point is not None:
                self.ladder_frames[point] += 1
                self.ladder_bytes[point] += nbytes
            self.frames_sent += 1
            self.frames_unsubscribed += int(unsubscribed)
            self.bytes_sent += nbytes
            self.keyframes += int(keyframe)
            self.stream_s += stream_s
            if latency_s is not None:
                self.latency.append(latency_s)

    def ladder_switch(self) -> int:
        """One more switch of operating point; returns how many so far."""
        with self._lock:
            self.ladder_switches += 1
            return self.ladder_switches

    def qp_request(self) -> None:
        with self._lock:
            self.qp_requests += 1

    def qp_refused(self, cause: str) -> None:
        with self._lock:
            self.qp_refusals[cause] += 1

    def qp_change(self, qp: int) -> int:
        """The QP moved (at a GOP boundary); returns how many changes so far."""
        with self._lock:
            self.qp_changes += 1
            self.qp_now = qp
            self.qp_trace.append([round(time.monotonic() - self.started, 3), qp])
            del self.qp_trace[:-MAX_QP_TRACE]
            return self.qp_changes

    def engine_request(self) -> None:
        with self._lock:
            self.engine_requests += 1

    def engine_refused(self, cause: str) -> None:
        with self._lock:
            self.engine_refusals[cause] += 1

    def engine_change(self, spec: str) -> int:
        """The pre-transform changed (at a GOP boundary); returns how many changes so far."""
        with self._lock:
            self.engine_changes += 1
            self.engine_now = spec
            self.engine_trace.append([round(time.monotonic() - self.started, 3), spec])
            del self.engine_trace[:-MAX_QP_TRACE]
            return self.engine_changes

    def reference_sent(self, nbytes: int) -> None:
        with self._lock:
            self.references_sent += 1
            self.reference_bytes += nbytes

    def reference_skipped(self, cause: str) -> None:
        with self._lock:
            self.references_skipped[cause] += 1

    def _references(self) -> dict:
        return {"sent": self.references_sent, "bytes": self.reference_bytes,
                "kbit_s": round(self.reference_bytes * 8 / 1000 / self.stream_s, 2) if self.stream_s > 0 else None,
                "share_of_stream_bytes": round(self.reference_bytes / self.bytes_sent, 5) if self.bytes_sent else None,
                "skipped": dict(self.references_skipped)}

    def as_dict(self) -> dict:
        with self._lock:
            wall = time.monotonic() - self.started
            out = {
                "wall_s": round(wall, 3),
                "frames_sent": self.frames_sent,
                "frames_unsubscribed": self.frames_unsubscribed,
                "end_of_stream": self.end_of_stream,
                "bytes_sent": self.bytes_sent,
                "stream_s": round(self.stream_s, 6),
                # on the stream's own clock (a video's timestamps, --fps, or the camera's clock)
                "kbit_s": round(self.bytes_sent * 8 / 1000 / self.stream_s, 2) if self.stream_s > 0 else None,
                "keyframes": self.keyframes,
                "keyframe_requests": self.keyframe_requests,
                # how fast this machine processed them: a replayed file or folder goes as fast as it can
                "loop_fps": round(self.frames_sent / wall, 2) if wall > 0 else 0.0,
                "drops": dict(self.drops),
                "stages": {name: {"frames": t.count, "busy_s": round(t.busy_s, 3), "fps_alone": round(t.fps, 2)}
                           for name, t in self.stages.items()},
            }
            if self.ladder_points is not None:
                out["ladder"] = {"switches": self.ladder_switches, "points": [
                    {"quality": q, "engine": e, "model": m, "frames_sent": self.ladder_frames[i],
                     "bytes_sent": self.ladder_bytes[i]} for i, (q, e, m) in enumerate(self.ladder_points)]}
            if self.remote_qp is not None or self.qp_refusals:
                out["remote_qp"] = {"allowed": list(self.remote_qp) if self.remote_qp else None, "qp": self.qp_now,
                                    "requests": self.qp_requests, "refused": dict(self.qp_refusals),
                                    "changes": self.qp_changes, "trace": list(self.qp_trace)}
            if self.remote_engines is not None or self.engine_refusals:
                out["remote_engine"] = {"allowed": list(self.remote_engines) if self.remote_engines else None,
                                        "engine": self.engine_now, "requests": self.engine_requests,
                                        "refused": dict(self.engine_refusals), "changes": self.engine_changes,
                                        "trace": list(self.engine_trace)}
            if self.references_on:
                out["references"] = self._references()
            return out
