"""Monitor output sinks: `--record out.mkv` and `--save-frames DIR` (jetson-inference style URIs).

* record: the received packets of every decoded frame, remuxed as they came (no re-encoding) into
  Matroska, MP4 or MOV (by the file's extension), with the stream clock of wire version 3 as their
  timestamps (the capture clock for older captures). One file per (stream, epoch, codec, size):
  the first at the path given, the next ones at PATH-1, PATH-2, ...; an existing file is never
  overwritten. A file starts at a keyframe; after a packet was dropped here the recording resumes
  at the next keyframe, and after one could not be written, in a new file at the next keyframe, so
  no file holds a frame whose reference is missing.
* save-frames: decoded frames as PNG, `STREAM-EPOCH-SEQ.png` (SEQ zero-padded; unsafe characters
  of a stream id become `_`), every Nth decoded frame of each (stream, epoch) with --save-every N.

Bounded and never in the way: the monitor's decoding loop only queues (at most `max_items` and
`max_bytes`; beyond that an item is dropped and counted), one thread writes, at most
`max_recordings` files are open (the least recently used is closed first), and any failure of the
disk (full, gone, read-only, no permission) is counted by cause and logged at most once every 10
s; it never stops the monitor. At stop the queue is written for at most `close_timeout_s`;
whatever is left is counted as `dropped_at_stop`.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import re
import threading
import time
from collections import Counter, OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.server.writer_stop import drain_and_stop

log = logging.getLogger(__name__)

RECORD_FORMATS = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov"}
_AV_CODECS = {"hevc": "hevc", "jpeg": "mjpeg", "jpeg2000": "jpeg2000"}
_TIME_BASE = Fraction(1, 90000)


def parse_record_target(spec: str) -> Path:
    """`out.mkv`, `file://out.mkv` -> Path; checked before the monitor starts (one-line errors)."""
    path = Path(spec[len("file://"):] if spec.startswith("file://") else spec)
    if re.match(r"[a-z][a-z0-9+.-]+://", spec, re.IGNORECASE) and not spec.startswith("file://"):
        raise EdgepipeError(f"--record {spec}: only files are supported (out.mkv, out.mp4 or file://PATH)")
    if path.is_dir():
        raise EdgepipeError(f"--record {spec} is a folder; give a file such as {path / 'stream.mkv'}")
    if path.suffix.lower() not in RECORD_FORMATS:
        raise EdgepipeError(f"--record {spec}: the file must end in {', '.join(RECORD_FORMATS)} "
                            "(Matroska, MP4, QuickTime)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgepipeError(f"--record {spec}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EdgepipeError(f"--record {spec}: folder {parent} is not writable by this user")
    return path


def parse_frames_dir(spec: str) -> Path:
    path = Path(spec)
    if path.exists() and not path.is_dir():
        raise EdgepipeError(f"--save-frames {spec} is a file; give a folder (it is created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgepipeError(f"--save-frames {spec}: cannot create the folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise EdgepipeError(f"--save-frames {spec}: folder is not writable by this user")
    return path


def safe_name(stream_id: str) -> str:
    """A stream id (sender-chosen UTF-8) as a file name part: no path separators, no surprises."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stream_id)[:64].lstrip(".") or "_"


def _cause(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return errno.errorcode.get(code, str(code))
    return type(exc).__name__


class _Recording:
    """One open container: packets of one (stream, epoch, codec, size)."""

    def __init__(self, path: Path, codec: str, width: int, height: int):
        import av

        self.path = path
        fmt = RECORD_FORMATS[path.suffix.lower()]
        # every packet reaches the disk at once (Matroska: in clusters of at most 1 s), so a failing
        # disk shows at the packet it fails on, and a killed monitor leaves a playable file
        options = {"flush_packets": "1", **({"cluster_time_limit": "1000"} if fmt == "matroska" else {})}
        self.container = av.open(str(path), "w", format=fmt, options=options)
        try:
            self.stream = self.container.add_mux_stream(_AV_CODECS[codec], width=width, height=height)
            self.stream.time_base = _TIME_BASE
        except BaseException:
            self.container.close()
            raise
        self.last_pts = -1
        self.packets = 0
        self.entry: dict = {}  # this file in the report; "error" once the disk failed under it
        self.start: float | None = None  # stream time of the first packet: the file starts at 0

    def write(self, payload: bytes, keyframe: bool, at: float, duration: float | None) -> None:
        import av

        if self.start is None:
            self.start = at
        pts = max(self.last_pts + 1, round((at - self.start) / _TIME_BASE))
        packet = av.Packet(payload)
        packet.stream = self.stream
        packet.time_base = _TIME_BASE
        packet.pts = packet.dts = pts
        if duration:
            packet.duration = max(1, round(duration / _TIME_BASE))
        packet.is_keyframe = keyframe
        self.container.mux(packet)
        self.last_pts = pts
        self.packets += 1

    def close(self) -> None:
        self.container.close()


class FrameSinks:
    """The monitor's sinks. `offer()` is called from the decoding loop and never blocks."""

    def __init__(self, record: str | Path | None = None, save_frames: str | Path | None = None,
                 save_every: int = 1, max_items: int = 64, max_bytes: int = 64 * 1024 * 1024,
                 max_recordings: int = 8, close_timeout_s: float = 10.0):
        self.record = parse_record_target(str(record)) if record else None
        self.save_dir = parse_frames_dir(str(save_frames)) if save_frames else None
        self.save_every = max(1, int(save_every))
        self.max_items, self.max_bytes = max_items, max_bytes
        self.max_recordings = max_recordings
        self.close_timeout_s = close_timeout_s
        self.counts: Counter = Counter()  # recorded, saved, dropped_*, ...
        self.errors: Counter = Counter()  # "record ENOSPC", "save EACCES", ...
        self.files: list[dict] = []  # every recording opened: path, stream, epoch
        self._queue: queue.Queue = queue.Queue()
        self._bytes = 0
        self._lock = threading.Lock()
        self._decoded: Counter = Counter()  # (stream, epoch) -> decoded frames offered (for --save-every)
        self._needs_key: set = set()  # recordings that lost a packet: resume at the next keyframe
        self._recordings: OrderedDict[tuple, _Recording] = OrderedDict()  # open ones, least recently used first
        self._clock0: dict[tuple, float] = {}  # (stream, epoch) -> first capture time (old captures' clock)
        self._used: set[Path] = set()
        self._last_log = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgepipe-sinks", daemon=True)
        self._thread.start()

    # --- the monitor's side: queue, never wait ----------------------------------------------------

    def offer(self, header, payload: bytes, image: np.ndarray | None) -> None:
        stream = (header.stream_id, header.epoch)
        if self.record is not None:
            key = (*stream, header.codec, header.width, header.height)
            if key in self._needs_key and not header.keyframe:
                self.counts["record_skipped"] += 1  # its reference is not in the file
            else:
                self._needs_key.discard(key)
                if not self._put(("record", key, header, payload), len(payload)):
                    self.counts["record_dropped"] += 1
                    self._needs_key.add(key)
        if self.save_dir is not None and image is not None:
            n = self._decoded[stream]
            self._decoded[stream] = n + 1
            if len(self._decoded) > 4096:  # sender-chosen ids: keep the counter bounded
                self._decoded.clear()
            if n % self.save_every == 0 and not self._put(("save", stream, header, image), image.nbytes):
                self.counts["save_dropped"] += 1

    def _put(self, item, nbytes: int) -> bool:
        with self._lock:
            if self._stop.is_set() or self._queue.qsize() >= self.max_items or (
                    self._bytes and self._bytes + nbytes > self.max_bytes):
                return False
            self._bytes += nbytes
        self._queue.put((item, nbytes))
        return True

    # --- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item, nbytes = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            try:
                if item[0] == "record":
                    self._record(*item[1:])
                else:
                    self._save(*item[1:])
            except Exception as exc:  # nothing a sink does may end the monitor
                self._error("sink", exc, "unexpected failure")
            finally:
                with self._lock:
                    self._bytes -= nbytes

    def _record(self, key: tuple, header, payload: bytes) -> None:
        rec = self._recordings.get(key)
        if rec is None:
            if key in self._needs_key or not header.keyframe:
                self.counts["record_skipped"] += 1
                self._needs_key.add(key)
                return
            while len(self._recordings) >= self.max_recordings:
                self._close_recording(next(iter(self._recordings)))
            path = self._next_path()
            try:
                rec = _Recording(path, header.codec, header.width, header.height)
            except Exception as exc:
                self._error("record", exc, f"cannot open {path}")
                self._needs_key.add(key)
                self.counts["record_skipped"] += 1
                return
            self._recordings[key] = rec
            rec.entry = {"path": str(path), "stream": header.stream_id, "epoch": header.epoch}
            self.files.append(rec.entry)
            log.info("recording %s epoch %d to %s", header.stream_id, header.epoch, path)
        self._recordings.move_to_end(key)
        try:
            rec.write(payload, header.keyframe, self._stream_time(header), header.duration)
        except Exception as exc:
            self._error("record", exc, f"cannot write {rec.path}")
            rec.entry["error"] = _cause(exc)  # the file ends early
            self.counts["record_skipped"] += 1
            self._close_recording(key)
            self._needs_key.add(key)  # a new file from the next keyframe
            return
        self.counts["recorded"] += 1

    def _stream_time(self, header) -> float:
        if header.media_time is not None:
            return header.media_time
        start = self._clock0.setdefault((header.stream_id, header.epoch), header.capture_time)
        if len(self._clock0) > 4096:
            self._clock0.clear()
        return header.capture_time - start

    def _next_path(self) -> Path:
        base = self.record
        n = 0
        while True:
            path = base if n == 0 else base.with_name(f"{base.stem}-{n}{base.suffix}")
            if path not in self._used and not path.exists():
                self._used.add(path)
                return path
            n += 1

    def _close_recording(self, key: tuple) -> None:
        rec = self._recordings.pop(key, None)
        if rec is None:
            return
        try:
            rec.close()
        except Exception as exc:
            self._error("record", exc, f"cannot finish {rec.path}")
            rec.entry.setdefault("error", _cause(exc))

    def _save(self, stream: tuple, header, image: np.ndarray) -> None:
        import cv2

        path = self.save_dir / f"{safe_name(header.stream_id)}-{header.epoch}-{header.seq:08d}.png"
        ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            self._error("save", ValueError("PNG encoder failed"), str(path))
            return
        try:
            with open(path, "wb") as f:
                f.write(data.tobytes())
        except OSError as exc:
            self._error("save", exc, f"cannot write {path}")
            try:
                path.unlink(missing_ok=True)  # no half-written PNG left behind
            except OSError:
                pass
            return
        self.counts["saved"] += 1

    def _error(self, sink: str, exc: BaseException, what: str) -> None:
        self.errors[f"{sink} {_cause(exc)}"] += 1
        now = time.monotonic()
        if now - self._last_log >= 10.0:
            self._last_log = now
            log.warning("%s: %s (%s); the monitor goes on [%d sink errors so far]", sink, what,
                        getattr(exc, "strerror", None) or exc, sum(self.errors.values()))

    # --- stop and report --------------------------------------------------------------------------

    def close(self) -> None:
        """Write what is queued (at most close_timeout_s), then close every file."""
        self.counts["dropped_at_stop"] += drain_and_stop(self._queue, self._thread, self._stop, self.close_timeout_s)
        if not self._thread.is_alive():
            for key in list(self._recordings):
                self._close_recording(key)

    def report(self) -> dict:
        out: dict = {}
        if self.record is not None:
            out["record"] = {"path": str(self.record), "files": [dict(f) for f in self.files],
                             "frames": self.counts["recorded"], "skipped": self.counts["record_skipped"],
                             "dropped": self.counts["record_dropped"]}
        if self.save_dir is not None:
            out["save_frames"] = {"dir": str(self.save_dir), "every": self.save_every, "frames": self.counts["saved"],
                                  "dropped": self.counts["save_dropped"]}
        out["dropped_at_stop"] = self.counts["dropped_at_stop"]
        out["errors"] = dict(self.errors)
        return out


def describe(report: dict) -> list[str]:
    """The sinks' lines under the monitor's table."""
    lines = []
    rec = report.get("record")
    if rec is not None:
        files = [f["path"] for f in rec["files"]]
        where = files[0] if len(files) == 1 else f"{len(files)} files ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
        failed = [f["path"] for f in rec["files"] if f.get("error")]
        lines.append(f"recorded {rec['frames']} frames to {where if files else rec['path'] + ' (nothing written)'}"
                     + (f"; {len(failed)} file(s) end early: the disk failed under them" if failed else "")
                     + (f"; {rec['skipped']} skipped (a keyframe awaited after a loss or a disk error)"
                        if rec["skipped"] else "")
                     + (f"; {rec['dropped']} dropped (the disk was too slow)" if rec["dropped"] else ""))
    saved = report.get("save_frames")
    if saved is not None:
        lines.append(f"saved {saved['frames']} frames as PNG in {saved['dir']}"
                     + (f" (every {saved['every']})" if saved["every"] > 1 else "")
                     + (f"; {saved['dropped']} dropped (the disk was too slow)" if saved["dropped"] else ""))
    if report.get("dropped_at_stop"):
        lines.append(f"sinks: {report['dropped_at_stop']} frames not written at stop")
    if report.get("errors"):
        lines.append("sink errors: " + ", ".join(f"{k}={v}" for k, v in sorted(report["errors"].items())))
    return lines
