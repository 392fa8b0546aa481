"""`monitor --predictions FILE.jsonl`: one JSON line per classified frame.

    {"stream": "cam0", "epoch": 1712345678901, "seq": 42, "codec": "hevc", "qp": 32, "model": "none",
     "recognizer": "efficientnet-lite0", "keyframe": false, "bytes": 5120, "capture_time": 1712345680.123,
     "top5": [{"class": 0, "name": "tench", "p": 0.913}, ...], "label": 0, "label_name": "tench"}

`model` is the pre-transform's id from the frame header (as in the report's rows), `recognizer` the classifier
that made the prediction, `qp` the header's qp field (JPEG quality or JPEG 2000 rate for those codecs), `bytes`
the payload. `label` and `label_name` only when the frame carries a label. `top5` is sorted, most probable first
(`p` is null from a recognizer that gives no probabilities).

Never in the monitor's way: `offer` only queues (at most `max_lines`; beyond that a line is dropped and
counted), one thread appends each line with one write(2) to a file opened O_APPEND, so a line is on disk (in
the page cache) as soon as it is written and a killed monitor leaves whole lines. A failing disk (full, gone,
no permission) is counted by cause, logged once per cause, and the monitor goes on; a line cut short by a full
disk is truncated away. At stop the queue is written for at most `close_timeout_s`; the rest is
`dropped_at_stop`.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading
from collections import Counter
from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.labels import class_name
from edgepipe.server.writer_stop import drain_and_stop

log = logging.getLogger(__name__)


def parse_predictions_path(spec: str) -> Path:
    """The file to append to, checked before the monitor starts (one-line errors)."""
    path = Path(spec)
    if path.is_dir():
        raise EdgepipeError(f"--predictions {spec} is a folder; give a file such as {path / 'predictions.jsonl'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgepipeError(f"--predictions {spec}: folder {parent} does not exist")
    try:  # really opened (permission bits do not tell root, a read-only mount or /proc apart): nothing is written
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            path.unlink()
    except OSError as exc:
        what = "the file is not writable" if path.exists() else "cannot create the file"
        raise EdgepipeError(f"--predictions {spec}: {what} ({exc.strerror})") from None
    return path


def prediction_record(header, nbytes: int, recognizer: str, classes, probs) -> dict:
    """One line's content: a classified frame and its top-k (classes and probabilities, most probable first)."""
    top = [{"class": int(c), "name": class_name(int(c)),
            "p": None if probs is None else round(float(p), 6)}
           for c, p in zip(classes, probs if probs is not None else [None] * len(classes))]
    record = {"stream": header.stream_id, "epoch": header.epoch, "seq": header.seq, "codec": header.codec,
              "qp": header.qp, "model": header.model_id, "recognizer": recognizer, "keyframe": header.keyframe,
              "bytes": nbytes, "capture_time": header.capture_time, "top5": top}
    if header.label >= 0:
        record["label"] = header.label
        record["label_name"] = class_name(header.label)
    return record


def _cause(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__


class PredictionWriter:
    """Appends prediction records to a JSONL file from its own thread. `offer` never blocks."""

    def __init__(self, path: str | Path, max_lines: int = 4096, close_timeout_s: float = 10.0):
        self.path = parse_predictions_path(str(path))
        self.max_lines = max_lines
        self.close_timeout_s = close_timeout_s
        self.written = 0
        self.dropped = 0  # the queue was full: the disk is slower than the recognizer
        self.dropped_at_stop = 0
        self.errors: Counter = Counter()  # lines not written, by cause (ENOSPC, EIO, ...)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EdgepipeError(f"--predictions {path}: cannot open it ({exc.strerror})") from None
        self._end = os.fstat(self._fd).st_size  # where the next line starts: a cut line is truncated back to it
        self._queue: queue.Queue = queue.Queue(maxsize=max_lines)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgepipe-predictions", daemon=True)
        self._thread.start()

    def offer(self, record: dict) -> None:
        if self._stop.is_set():
            self.dropped_at_stop += 1
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            try:
                record = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            try:
                self._write((json.dumps(record, allow_nan=False) + "\n").encode())
            except Exception as exc:  # nothing here may end the monitor (a record JSON cannot hold, a bug)
                self._failed(type(exc).__name__, str(exc))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            if len(view) < len(data):  # half a line reached the file: cut it off, so every line is whole JSON
                try:
                    os.ftruncate(self._fd, self._end)
                except OSError:
                    pass
            self._failed(_cause(exc), exc.strerror or str(exc))
            return
        self._end += len(data)
        self.written += 1

    def _failed(self, cause: str, detail: str) -> None:
        if not self.errors[cause]:  # once per cause: a full disk fails every line
            log.warning("--predictions %s: cannot write a line (%s); such lines are counted, the monitor goes on",
                        self.path, detail)
        self.errors[cause] += 1

    def close(self) -> None:
        """Write what is queued (at most close_timeout_s), then close the file."""
        self.dropped_at_stop += drain_and_stop(self._queue, self._thread, self._stop, self.close_timeout_s)
        if not self._thread.is_alive():
            os.close(self._fd)

    def report(self) -> dict:
        return {"path": str(self.path), "written": self.written, "dropped": self.dropped,
                "dropped_at_stop": self.dropped_at_stop, "errors": dict(self.errors)}


def describe(report: dict) -> str:
    """The predictions line under the monitor's table."""
    line = f"predictions: {report['written']} lines appended to {report['path']}"
    if report["dropped"]:
        line += f"; {report['dropped']} dropped (the disk was too slow)"
    if report["dropped_at_stop"]:
        line += f"; {report['dropped_at_stop']} not written at stop"
    if report["errors"]:
        line += "; not written: " + ", ".join(f"{k}={v}" for k, v in sorted(report["errors"].items()))
    return line
