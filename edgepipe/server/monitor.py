"""Server side: receive, validate, decode, classify, and account accuracy against bitrate.

Sequencing is tracked per (stream, epoch): a gap in `seq` is counted as lost frames; after a gap,
or when joining mid-stream, HEVC frames are not decodable until the next keyframe and are counted
as `waiting_for_keyframe`, never shown. Accuracy and rate are accounted per (stream, model, QP).
Every rejected message is counted by cause and logged (rate-limited); the monitor keeps running.
Every message counts exactly once: decoded, or one reject (`messages` = decoded + rejects), except
a capture's end-of-stream message, counted in `end_of_stream`: it turns the frames missing at the
tail of an epoch into loss, and a frame of that epoch arriving after it proves it false (it is then
moved to the `bogus_end_of_stream` rejects). A replayed or reordered frame (`out_of_order`) is
rejected, not decoded, since it would corrupt the decoder's references. Whatever was received but
not decoded when the monitor stops is counted (`unprocessed_at_stop`), never dropped silently.

Memory is bounded for a monitor that runs for months, whatever peers send (see docs/guarantees.md,
`MonitorLimits`): stream ids, (stream, epoch) states, HEVC decoders, report rows and the receive
queue (in bytes and in messages) each have a cap. Under a cap, the least recently used entry that
is safe to drop is folded into the report's `expired` totals (its counts are kept, its memory is
not); when none is, the message is rejected by cause (`too_many_streams`, `too_many_rows`). A
stream that never decoded a frame is the first to go, so invented ids cannot starve a real camera.
Each epoch of a stream has its own state and decoder: a new (possibly forged) epoch never resets
the decoder of the epoch that is live.

Rate is measured on the stream's own clock: `kbit_s` is the bits of the decoded frames over the
stream time they stand for (wire version 3: a video's timestamps, the capture's --fps for folders,
or a live camera's clock), so the same bytes give the same kbit/s however fast the machines ran.
How fast they ran is `processed_fps` (decoded frames over the span of their capture times). A
frame of a capture older than version 3 carries no stream clock: its row's kbit/s falls back to
the span of capture times, and says so (`kbit_s_clock` "capture": a processing rate).

Classification is off the decoding path (server/classify.py): `run` decodes and accounts each frame
(bitrate, loss, its row) at once, then offers it to a bounded queue that one worker thread empties
in batches, across frames and streams. When the recognizer cannot keep up, the declared policy
chooses what is classified; every decoded frame ends `classified` or `unclassified` (by cause), never
lost, and top-1 is over the classified labelled frames. `handle` called on its own (no `run`)
classifies in the calling thread, a batch of one.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgepipe.core.errors import EdgepipeError, RecognizerUnavailable
from edgepipe.core.files import atomic_write
from edgepipe.core.latency import LatencyWindow
from edgepipe.media.codecs import HevcDecoder, decode_image
from edgepipe.media.frames import DEFAULT_FPS
from edgepipe.recognition import TopK
from edgepipe.server.agreement import AgreementStats
from edgepipe.server.classify import (
    CAUSES,
    ClassifyOptions,
    ClassifyQueue,
    ClassifyWorker,
    Pending,
    Recognizer,
    as_recognizer,
)
from edgepipe.server.live_rd import DEFAULT_WINDOW_S, LiveRD
from edgepipe.server.pairs import PairTable
from edgepipe.server.predictions import prediction_record
from edgepipe.transport.protocol import FrameHeader, ProtocolError, parse_message
from edgepipe.transport.sockets import Subscriber

log = logging.getLogger(__name__)

# A gap in `seq` is loss only while it is plausible: no capture numbers more than MAX_GAP_RATE frames a
# second of the monitor's clock (since the last in-sequence frame), plus MAX_GAP_SLACK for bursts. A
# bigger jump (one forged seq = 2**64-1) is rejected as `seq_jump`: it moves nothing, later frames count.
MAX_GAP_RATE = 250.0
MAX_GAP_SLACK = 256
SWEEP_EVERY_S = 1.0  # the decoding loop frees idle decoders (expire()) this often, on the monitor clock
KEYFRAME_ASK_INTERVAL_S = 1.0  # while a stream waits for a keyframe, the back channel is asked this often
# An epoch that has decoded nothing does not ask for keyframes while another epoch of its stream id decoded
# within this many seconds: forged epochs of a live camera cannot make it send keyframes (a real restart's
# old epoch falls silent, and a capture starts with a keyframe anyway).
RIVAL_LIVE_S = 2.0
# A frame's stream-clock duration counts at most this many times its stream's usual one (the median of
# its last DURATION_WINDOW frames; DURATION_FLOOR_S always counts): one forged duration of 3600 s cannot
# turn a row's kbit/s to ~0, and a real stall (dropped frames add their time to the next) still counts.
DURATION_RATIO = 100.0
DURATION_FLOOR_S = 1.0
DURATION_WINDOW = 31


@dataclass(frozen=True)
class MonitorLimits:
    """Every per-sender structure of the monitor and its bound (docs/guarantees.md)."""

    max_streams: int = 256  # stream ids with state
    max_epochs_per_stream: int = 3  # (stream, epoch) states per stream id; older ones are folded
    max_decoders: int = 32  # HEVC decoders alive at once; the least recently used one is freed
    max_rows: int = 1024  # report rows (stream, model, QP, codec) in all
    max_rows_per_stream: int = 16  # ... and per stream id: sender-chosen model ids / QPs stay bounded
    stream_idle_s: float = 600.0  # a stream that decoded frames keeps its slot at least this long idle
    decoder_idle_s: float = 10.0  # a decoder idle this long is freed (the stream resumes at a keyframe); idle:
    # no message of its stream received, nor waiting to be handled, for this long on the handling clock (expire())
    row_idle_s: float = 600.0  # under the row cap, rows idle this long are folded into `expired`
    queue_bytes: int = 128 * 1024 * 1024  # receive queue between the socket and the decoder, in bytes
    queue_messages: int = 2000  # ... and in messages
    latency_window: int = 4096  # latency samples per row for the median
    max_gap_rate: float = MAX_GAP_RATE
    max_gap_slack: int = MAX_GAP_SLACK
    max_pending_pairs: int = 64  # classified halves of reference pairs waiting for the other (server/pairs.py)


DEFAULT_LIMITS = MonitorLimits()


# What a row's kbit/s is measured on (`kbit_s_clock`): the stream clocks of wire version 3, and the
# fallback for older captures, which is the processing rate, not the stream's.
CLOCK_MEANINGS = {
    "timestamps": "the video's own timestamps",
    "fps": "the frame rate given to capture (--fps)",
    "default-fps": f"{DEFAULT_FPS:g} frames/s, the default for folders and images (capture --fps sets it)",
    "live": "the camera's capture clock",
    "capture": "the span of capture times: a capture older than wire version 3 sends no stream clock, "
               "so this is how fast it was processed, not the stream's rate",
}


@dataclass
class RateAccount:
    """One row of the report: a (stream, model, QP) operating point."""

    frames: int = 0
    bytes: int = 0
    pixels: int = 0
    labelled: int = 0  # classified frames that carried a label: top-1 is over these
    correct: int = 0
    classified: int = 0  # frames the recognizer classified (the rest of `frames` is unclassified or pending)
    unclassified: int = 0
    first_capture: float = float("inf")
    last_capture: float = float("-inf")
    latency_s: LatencyWindow = field(default_factory=lambda: LatencyWindow(DEFAULT_LIMITS.latency_window))  # recent frames
    latency_sum_s: float = 0.0  # all frames, for the mean in metrics
    last_seen: float = 0.0  # monitor clock of the last frame: rows idle longest are folded first
    # frames that carried a stream clock (wire version 3): their bytes, and the stream time they stand for
    stream_frames: int = 0
    stream_bytes: int = 0
    stream_s: float = 0.0
    clock: str | None = None  # the stream clock of the latest such frame (transport.CLOCKS)
    # reference messages of this row's coded frames: counted apart, never in frames, bytes or kbit/s
    references: int = 0
    reference_bytes: int = 0
    references_lost: int = 0
    agreement: AgreementStats | None = None

    def add_reference(self, nbytes: int) -> None:
        self.references += 1
        self.reference_bytes += nbytes

    def add_agreement(self, measures: dict) -> None:
        if self.agreement is None:
            self.agreement = AgreementStats()
        self.agreement.add(measures)

    def reference_summary(self) -> dict | None:
        if not (self.references or self.references_lost):
            return None
        return {"references": self.references, "bytes": self.reference_bytes, "lost": self.references_lost,
                "agreement": (self.agreement or AgreementStats()).summary()}

    def add(self, header: FrameHeader, nbytes: int, prediction: int | None, latency: float) -> None:
        self.frames += 1
        self.bytes += nbytes
        self.pixels += header.width * header.height
        self.first_capture = min(self.first_capture, header.capture_time)
        self.last_capture = max(self.last_capture, header.capture_time)
        self.latency_s.append(latency)
        self.latency_sum_s += latency
        if header.media_time is not None:
            self.stream_frames += 1
            self.stream_bytes += nbytes
            self.stream_s += header.duration or 0.0
            self.clock = header.clock
        if prediction is not None:
            self.add_prediction(header.label, prediction)

    def add_prediction(self, label: int, prediction: int) -> None:
        """A frame of this row classified (it was counted by `add` when it was decoded)."""
        self.classified += 1
        if label >= 0:
            self.labelled += 1
            self.correct += int(prediction == label)

    def summary(self) -> dict:
        span = self.last_capture - self.first_capture
        # processing: the capture span, extended by one mean frame interval so N frames span N intervals
        duration = span * self.frames / (self.frames - 1) if self.frames > 1 and span > 0 else 0.0
        processed = duration > 0 and math.isfinite(duration)
        if self.stream_frames:  # the stream's own clock (frames of an older capture in this row are left out)
            kbit_s = self.stream_bytes * 8 / 1000 / self.stream_s if self.stream_s > 0 else None
            clock = self.clock
        else:  # wire version 1: only the capture clock, i.e. the processing rate
            kbit_s = self.bytes * 8 / 1000 / duration if processed else None
            clock = "capture"
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "bpp": round(self.bytes * 8 / self.pixels, 5) if self.pixels else None,
            "bytes_per_frame": round(self.bytes / self.frames, 1) if self.frames else None,
            "kbit_s": round(kbit_s, 2) if kbit_s is not None and math.isfinite(kbit_s) else None,
            "kbit_s_clock": clock,
            "stream_s": round(self.stream_s, 6) if self.stream_frames else None,
            "stream_fps": round(self.stream_frames / self.stream_s, 3) if self.stream_s > 0 else None,
            "processed_fps": round(self.frames / duration, 2) if processed else None,
            "top1": round(self.correct / self.labelled, 5) if self.labelled else None,
            "labelled": self.labelled,
            "classified": self.classified,
            "unclassified": self.unclassified,
            "share_classified": share(self.classified, self.classified + self.unclassified),
            "latency_ms_p50": round(self.latency_s.median() * 1000, 2) if len(self.latency_s) else None,
            **({"reference": ref} if (ref := self.reference_summary()) is not None else {}),
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
    last_seen: float = 0.0  # monitor clock of the last message, in sequence or not
    decoded: int = 0
    asked_at: float = float("-inf")  # monitor clock of the last keyframe request for this state
    eos_tail: int | None = None  # frames lost at the tail, once the end-of-stream message came
    awaiting_reference: tuple | None = None  # (seq, row key) of a decoded frame whose reference follows it


class _Stream:
    """Everything the monitor keeps about one stream id: its epochs (at most max_epochs_per_stream),
    its rows, and the counts of epochs already folded."""

    __slots__ = ("sid", "epochs", "rows", "proven", "last_seen", "folded_received", "folded_lost",
                 "folded_epochs", "durations", "last_decoded_at")

    def __init__(self, sid: str):
        self.sid = sid
        self.epochs: OrderedDict[int, StreamState] = OrderedDict()
        self.rows: OrderedDict[tuple, None] = OrderedDict()  # least recently used first
        self.proven = False  # some epoch decoded a frame: a real camera, not an invented id
        self.last_seen = 0.0
        self.folded_received = self.folded_lost = self.folded_epochs = 0
        self.durations: deque[float] = deque(maxlen=DURATION_WINDOW)  # last counted stream-clock durations
        self.last_decoded_at: dict[int, float] = {}  # epoch -> monitor clock of its last decoded frame


class _Backlog:
    """The receive queue between the socket thread and the decoding loop, bounded in bytes and in
    messages. When it is full the socket thread stops reading: the transport's own queue (one
    message, SocketDefaults.recv_hwm) fills, then TCP, then the capture sees a slow subscriber
    and drops by its own policy, counted there and seen here as a gap. Nothing is dropped here."""

    def __init__(self, max_bytes: int, max_messages: int):
        self.max_bytes, self.max_messages = max_bytes, max_messages
        self._items: deque = deque()  # (parts, received_at, bytes)
        self.bytes = 0
        self.peak_bytes = 0
        self.waits = 0  # times the socket thread waited for room (the monitor fell behind)
        self._cond = threading.Condition()

    def put(self, parts: list[bytes], received_at: float, stop: threading.Event) -> bool:
        """Queue one message, waiting while the queue is full; False if `stop` came first."""
        n = sum(len(p) for p in parts)
        with self._cond:
            waited = False
            # an empty queue takes any message the transport let through (max_message_bytes bounds it)
            while self._items and (self.bytes + n > self.max_bytes or len(self._items) >= self.max_messages):
                if stop.is_set():
                    return False
                waited = True
                self._cond.wait(0.05)
            self.waits += waited
            self._items.append((parts, received_at, n))
            self.bytes += n
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self._cond.notify_all()
            return True

    def get(self, timeout: float):
        with self._cond:
            if not self._items and not self._cond.wait(timeout):
                return None
            if not self._items:
                return None
            parts, received_at, n = self._items.popleft()
            self.bytes -= n
            self._cond.notify_all()
            return parts, received_at

    def oldest(self) -> float | None:
        """The receive time of the oldest message waiting (None: none waits)."""
        with self._cond:
            return self._items[0][1] if self._items else None

    def drain(self) -> list:
        with self._cond:
            items = [(p, t) for p, t, _ in self._items]
            self._items.clear()
            self.bytes = 0
            self._cond.notify_all()
            return items

    def __len__(self) -> int:
        return len(self._items)


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 5) if whole else None


class Monitor:
    def __init__(self, classify: Recognizer | Callable[[np.ndarray], int] | None, subscriber: Subscriber | None = None,
                 on_loss: Callable[[str], None] | None = None, max_streams: int | None = None,
                 limits: MonitorLimits | None = None, classifying: ClassifyOptions | None = None,
                 rd_window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.time, **limit_overrides):
        limits = limits or DEFAULT_LIMITS
        if max_streams is not None:
            limit_overrides["max_streams"] = max_streams
        self.limits = replace(limits, **limit_overrides) if limit_overrides else limits
        self.max_streams = self.limits.max_streams
        # the monitor clock: messages are stamped with it when received (received_at) and handled on those stamps;
        # the idle-decoder sweep reads it too. Tests inject a fake one.
        self.clock = clock
        # a Recognizer (batches), a Classifier, or a function of one RGB frame -> ImageNet index; None: accounting only
        self.recognizer = as_recognizer(classify)
        self.classifying = classifying or ClassifyOptions()
        self.classify_queue = ClassifyQueue(self.classifying.queue, self.classifying.queue_bytes)
        self._classifier: ClassifyWorker | None = None  # running while run() runs; else handle() classifies itself
        self._stopping: threading.Event | None = None  # run()'s stop: ends a wait for room in the classify queue
        self.classified = 0
        # decoded frames not classified, by cause: every cause from 0, so metrics show each series from the start
        self.unclassified_by_cause: Counter = Counter({cause: 0 for cause in CAUSES})
        self.classify_latency = LatencyWindow(1024)  # capture -> classified, of the last classified frames
        self.predictions = None  # predictions.PredictionWriter: --predictions FILE.jsonl
        self.recognizer_failure: EdgepipeError | None = None  # set by the classify thread: run() stops with it
        self._last_classify_log = float("-inf")
        self.subscriber = subscriber
        self.on_loss = on_loss  # hook for the keyframe back channel
        self.on_pair = None  # hook for the closed loop (server/qp_control.py): (row key, measures) of each pair
        self.on_frame = None  # and its engine trials: (row key, bytes, keyframe) of each decoded frame
        self.ticks = 0  # decoding-loop iterations
        # The watchdog's sign of life: rises with every message handled, and while idle only if the
        # transport is healthy (connected, or reconnecting by itself). A connection the transport
        # dropped for good, or a stuck decoder or classifier, stops it.
        self.alive = 0
        self.last_message_at: float | None = None  # monitor clock of the last message (None: none yet)
        self.timings = {"decode": [0, 0.0], "classify": [0, 0.0]}  # stage -> [frames, seconds]
        self.durations_capped = 0  # frames whose stream-clock duration counted only up to its plausible cap
        self.streams: dict[tuple[str, int], StreamState] = {}  # every (stream, epoch) kept, flat
        self._ids: dict[str, _Stream] = {}
        self._unproven: OrderedDict[str, None] = OrderedDict()  # stream ids, least recently seen first
        self._proven: OrderedDict[str, None] = OrderedDict()
        self._decoders: OrderedDict[tuple[str, int], None] = OrderedDict()  # states holding a decoder, LRU first
        self.rows: OrderedDict[tuple[str, str, int, str], RateAccount] = OrderedDict()  # LRU first
        self.expired: Counter = Counter()  # what was folded to stay bounded: counts kept, memory freed
        self.rejects: Counter = Counter()
        self.end_of_stream: Counter = Counter()  # end-of-stream messages: matched an epoch, or unmatched
        self.messages = 0  # frame messages counted (as soon as their handling starts)
        self.settled = 0  # messages whose handling is complete, report rows included
        self.decoded = 0
        self.backlog = _Backlog(self.limits.queue_bytes, self.limits.queue_messages)
        self.totals: Counter = Counter()  # bytes, stream_s, labelled, correct ... of every decoded frame
        self.recent_latency = LatencyWindow(1024)  # end-to-end latency of the last decoded frames, any row
        self.sinks = None  # sinks.FrameSinks: --record / --save-frames (decoded frames, non-blocking)
        # reference messages (issue 14 item 1): counted apart from `messages`, never a stream frame
        self.references: Counter = Counter()
        self.pairs = PairTable(self.limits.max_pending_pairs)
        self.agreement = AgreementStats()  # over every pair, folded rows included
        # the live rate-accuracy curves and BD-rates over a sliding window (server/live_rd.py, issue 14 item 3)
        self.live_rd = LiveRD(rd_window_s, max_points=min(256, self.limits.max_rows))
        self._last_reject_log = 0.0
        self._last_epoch_log = 0.0
        self._lock = threading.Lock()

    @property
    def unclassified(self) -> int:
        """Decoded frames not classified, all causes (a recognizer server away, shed under load, at stop)."""
        return sum(self.unclassified_by_cause.values())

    # --- one message ----------------------------------------------------------------------------

    def handle(self, parts: list[bytes], received_at: float | None = None) -> np.ndarray | None:
        """Process one message; returns the decoded frame, or None when it was rejected or skipped."""
        try:
            return self._handle(parts, self.clock() if received_at is None else received_at)
        finally:
            with self._lock:
                self.settled += 1

    def _handle(self, parts: list[bytes], received_at: float) -> np.ndarray | None:
        with self._lock:
            try:
                header, payload = parse_message(parts)
            except ProtocolError as exc:
                self.messages += 1
                self._reject(exc.cause, str(exc))
                return None
            if header.end_of_stream:
                self._end_of_stream(header, received_at)
                return None
            if header.reference:
                reference = self._reference(header, payload)
                if reference is None:
                    return None
                image, key = reference
        if header.reference:
            if self.recognizer is not None:
                self._submit(Pending(header, len(payload), key, image, 0, pair="reference"))
            return None
        with self._lock:
            self.messages += 1
            state = self._sequence(header, received_at)
            if state is None:  # rejected (out of order, implausible jump, too many streams)
                return None
            if header.codec == "hevc" and state.waiting_keyframe and not header.keyframe:
                self._reject("waiting_for_keyframe", f"{header.stream_id} seq {header.seq}")
                return None
            key = (header.stream_id, header.model_id, header.qp, header.codec)
            if not self._row_room(key, received_at):
                self._reject("too_many_rows", f"{header.stream_id}: no room for a row for model "
                                              f"{header.model_id!r} QP {header.qp}")
                self._lose_reference(header, state, received_at)
                return None
            t0 = time.perf_counter()
            try:
                image = self._decode(header, payload, state)
            except Exception as exc:  # any decoder failure on hostile bytes is a counted reject
                self._reject("undecodable", f"{header.stream_id} seq {header.seq}: {exc}")
                if header.codec == "hevc":
                    self._free_decoder((header.stream_id, header.epoch))
                    state.waiting_keyframe = True
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
            state.decoded += 1
            self._prove(header.stream_id)
            self._learn_stream(header, received_at)
            self.decoded += 1
            header = self._account(header, key, len(payload), received_at)
            if header.has_reference:  # its reference is the next message of this (stream, epoch)
                state.awaiting_reference = (header.seq, key)
        if self.sinks is not None:  # non-blocking: a full or failing sink counts, never stalls this loop
            self.sinks.offer(header, payload, image)
        if self.recognizer is not None:
            self._submit(Pending(header, len(payload), key, image,
                                 self.classifying.rank(header, reference=header.has_reference),
                                 pair="coded" if header.has_reference else None))
        return image

    # --- reference messages (issue 14 item 1) ------------------------------------------------------

    def _reference(self, header: FrameHeader, payload: bytes) -> tuple[np.ndarray, tuple] | None:
        """Under the lock: a reference message, counted apart; its decoded image and its coded frame's row key
        when it belongs to the decoded frame its stream announced last, else None (counted by cause)."""
        refs = self.references
        refs["received"] += 1
        refs["bytes"] += len(payload)
        entry = self._ids.get(header.stream_id)
        state = entry.epochs.get(header.epoch) if entry is not None else None
        awaiting = state.awaiting_reference if state is not None else None
        if awaiting is None or awaiting[0] != header.seq:  # its frame was lost, not decoded, or never announced it
            refs["without_frame"] += 1
            return None
        state.awaiting_reference = None
        key = awaiting[1]
        row = self.rows.get(key)
        if row is not None:
            row.add_reference(len(payload))
        try:
            image = decode_image(header.codec, payload) if header.codec != "hevc" else None
        except Exception:  # hostile bytes: counted, the pair is gone
            image = None
        if image is None or image.shape[:2] != (header.height, header.width):
            refs["undecodable"] += 1
            self._pair_gone(header, "unclassified")
            return None
        refs["decoded"] += 1
        return image, key

    def _reference_lost(self, sid: str, epoch: int, state: StreamState) -> None:
        """Under the lock: the reference `state` awaited did not come before the next message of its stream."""
        seq, key = state.awaiting_reference
        state.awaiting_reference = None
        self.references["lost"] += 1
        row = self.rows.get(key)
        if row is not None:
            row.references_lost += 1
        if self.recognizer is not None:
            self._emit(self.pairs.gone((sid, epoch, seq), "reference_lost"))

    def _pair_gone(self, header: FrameHeader, cause: str) -> None:
        if self.recognizer is not None:
            self._emit(self.pairs.gone((header.stream_id, header.epoch, header.seq), cause))

    def _emit(self, records: list) -> None:
        """Predictions lines of coded frames released from the pair table (with or without an agreement)."""
        if self.predictions is not None:
            for record in records:
                if record is not None:
                    self.predictions.offer(record)

    def _settle_pair(self, item: Pending, classes, probs, record: dict | None) -> None:
        """Under the lock: a classified half of a reference pair into the pair table; a completed pair into its
        row's agreement and the total."""
        key = (item.header.stream_id, item.header.epoch, item.header.seq)
        value = (classes, probs, item.key, record) if item.pair == "coded" else (classes, probs)
        done, released = self.pairs.classified(key, item.pair, value)
        self._emit(released)
        for row_key, measures, coded_record in done:
            self.agreement.add(measures)
            self.live_rd.add_agreement(*row_key, measures, time.time(), key[1:])
            row = self.rows.get(row_key)
            if row is not None:
                row.add_agreement(measures)
            if coded_record is not None:
                coded_record["agreement"] = measures
            self._emit([coded_record])
            if self.on_pair is not None:
                self.on_pair(row_key, measures)

    def _account(self, header: FrameHeader, key: tuple, nbytes: int, received_at: float) -> FrameHeader:
        """Under the lock: a decoded frame into its row and the totals (bitrate, latency), classified or not.
        Returns the header with the duration that counted."""
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = RateAccount(latency_s=LatencyWindow(self.limits.latency_window))
        self.rows.move_to_end(key)
        entry = self._ids.get(header.stream_id)
        if entry is not None:
            entry.rows[key] = None
            entry.rows.move_to_end(key)
        row.last_seen = received_at
        header = self._counted_duration(header)
        latency = received_at - header.capture_time
        row.add(header, nbytes, None, latency)
        self._totals(header, nbytes, latency)
        self.live_rd.add_frame(*key, nbytes, header.duration, received_at, (header.epoch, header.seq))
        if self.on_frame is not None:
            self.on_frame(key, nbytes, header.keyframe)
        return header

    # --- classification (server/classify.py) -----------------------------------------------------

    def _submit(self, item: Pending) -> None:
        """A decoded frame to the recognizer: queued for the worker while run() runs (never waiting, except
        under the `all` policy), else classified here and now."""
        if self._classifier is None:
            self._classify_items([item], raise_failure=True)
            return
        queued, shed = self.classify_queue.offer(item, self.classifying.waits, self._stopping)
        self._settle_unclassified(shed, "skipped_under_load")
        if not queued:
            self._settle_unclassified([item], "at_stop" if self.classifying.waits else "skipped_under_load")

    def _classify_items(self, items: list[Pending], raise_failure: bool = False) -> None:
        """One batch: classified, or counted unclassified by cause. Runs in the classify thread, or in handle()'s
        thread (`raise_failure`: a misconfiguration is raised there; the thread leaves it for run() to raise)."""
        t0 = time.perf_counter()
        try:
            topk = self.recognizer.classify([item.image for item in items])
        except RecognizerUnavailable:  # a server away: counted, not lost, not in top-1; the client reconnects
            self._settle_unclassified(items, "recognizer_unavailable")
            return
        except EdgepipeError as exc:  # a misconfiguration (a model that takes one frame size): stop, in one line
            self._settle_unclassified(items, "recognizer_error")
            if raise_failure:
                raise
            self.recognizer_failure = exc  # run() stops on it and raises it
            return
        except Exception as exc:  # one bad batch never ends the monitor: counted, and said
            self._settle_unclassified(items, "recognizer_error")
            self._log_classify_error(exc, len(items))
            return
        self._settle_classified(items, topk, time.perf_counter() - t0)

    def _settle_classified(self, items: list[Pending], topk: TopK, seconds: float) -> None:
        now = time.time()
        done = []
        with self._lock:
            for i, item in enumerate(items):
                if item.settled:  # counted at stop while its batch ran: the late answer is not counted twice
                    continue
                item.settled = True
                item.image = None  # its pixels are no longer needed
                probs = None if topk.probs is None else topk.probs[i]
                if item.pair is not None:
                    self._settle_half(item, topk.classes[i], probs)
                    if item.pair == "reference":
                        continue  # not a stream frame: never in classified, top-1 or the predictions lines
                prediction = int(topk.classes[i, 0])
                row = self.rows.get(item.key)
                if row is not None:  # else folded while it waited: the totals still count it
                    row.add_prediction(item.header.label, prediction)
                self.classified += 1
                if item.header.label >= 0:
                    self.totals["labelled"] += 1
                    self.totals["correct"] += int(prediction == item.header.label)
                    self.live_rd.add_label(*item.key, prediction == item.header.label, now,
                                           (item.header.epoch, item.header.seq))
                self.classify_latency.append(now - item.header.capture_time)
                done.append(i)
            if done:
                self._timed("classify", seconds, len(done))
        if self.predictions is not None:  # non-blocking: a slow or failing disk counts, never stalls the recognizer
            for i in done:
                if items[i].pair is not None:
                    continue  # its line goes out from the pair table, with its agreement
                item = items[i]
                self.predictions.offer(self._record(item, topk.classes[i],
                                                    None if topk.probs is None else topk.probs[i]))

    def _record(self, item: Pending, classes, probs) -> dict:
        return prediction_record(item.header, item.nbytes, self.recognizer.name, classes, probs)

    def _settle_half(self, item: Pending, classes, probs) -> None:
        """Under the lock: a classified half of a reference pair (the coded half's predictions line waits in the
        pair table for its agreement)."""
        if item.pair == "reference":
            self.references["classified"] += 1
        record = self._record(item, classes, probs) if item.pair == "coded" and self.predictions is not None \
            else None
        self._settle_pair(item, classes, probs, record)

    def _settle_unclassified(self, items: list[Pending], cause: str) -> None:
        if not items:
            return
        with self._lock:
            for item in items:
                if item.settled:
                    continue
                item.settled = True
                item.image = None
                if item.pair is not None:
                    self._pair_gone(item.header, "unclassified")
                    if item.pair == "reference":
                        self.references["unclassified"] += 1
                        continue  # not a stream frame: never in unclassified
                self.unclassified_by_cause[cause] += 1
                row = self.rows.get(item.key)
                if row is not None:
                    row.unclassified += 1

    def _log_classify_error(self, exc: Exception, n: int) -> None:
        now = time.monotonic()
        if now - self._last_classify_log > 10.0:  # at most one line every 10 s
            self._last_classify_log = now
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("the recognizer failed on a batch of %d frame(s): %s; counted unclassified "
                        "(recognizer_error), the monitor goes on", n, first)

    def pending_classifications(self) -> int:
        """Decoded frames queued for the recognizer or in the batch it is classifying."""
        worker = self._classifier
        return len(self.classify_queue) + (worker.in_flight if worker is not None else 0)

    def _totals(self, header: FrameHeader, nbytes: int, latency: float) -> None:
        """Running totals over every row (folded ones included), for the status line; `labelled` and
        `correct` are added when a frame is classified."""
        t = self.totals
        t["bytes"] += nbytes
        if header.media_time is not None:
            t["stream_frames"] += 1
            t["stream_bytes"] += nbytes
            t["stream_s"] += header.duration or 0.0
        self.recent_latency.append(latency)

    def count_unhandled(self, parts: list[bytes], cause: str, received_at: float | None = None) -> None:
        """Count a message that was received but will not be decoded (the monitor is stopping): it
        takes its place in the sequence, so it is never counted as lost too."""
        received_at = self.clock() if received_at is None else received_at
        with self._lock:
            self.settled += 1
            try:
                header, _ = parse_message(parts)
            except ProtocolError as exc:
                self.messages += 1
                self._reject(exc.cause, str(exc))
                return
            if header.end_of_stream:  # cheap, and it counts a tail: handled, not left over
                self._end_of_stream(header, received_at)
                return
            if header.reference:  # counted apart, like every reference; its pair is not measured
                self.references["received"] += 1
                self.references["bytes"] += len(parts[1])
                self.references[cause] += 1
                self._pair_gone(header, "unclassified")
                state = self.streams.get((header.stream_id, header.epoch))
                if state is not None and state.awaiting_reference and state.awaiting_reference[0] == header.seq:
                    state.awaiting_reference = None
                return
            self.messages += 1
            state = self._sequence(header, received_at)
            if state is None:
                return
            self._reject(cause, f"{header.stream_id} seq {header.seq}")
            self._lose_reference(header, state, received_at, ask=cause != "unprocessed_at_stop")

    def _lose_reference(self, header: FrameHeader, state: StreamState, now: float, ask: bool = True) -> None:
        """A frame of this state was not decoded: HEVC needs a keyframe before the next picture."""
        if header.codec == "hevc":
            state.waiting_keyframe = True
            if ask:
                self._ask_keyframe(header.stream_id, state, now)

    def _ask_keyframe(self, sid: str, state: StreamState, now: float) -> None:
        """Ask the capture for a keyframe (back channel), at most once a second per (stream, epoch), and
        not for an epoch that decoded nothing while a rival epoch of the same id is live."""
        if state.decoded == 0 and self._rival_live(sid, state, now):
            return
        if self.on_loss and now - state.asked_at >= KEYFRAME_ASK_INTERVAL_S:
            state.asked_at = now
            self.on_loss(sid)

    def _end_of_stream(self, header: FrameHeader, now: float) -> None:
        """A capture's last message of an epoch: the frames it numbered but this monitor never got
        are lost at the tail. A later frame of the same epoch proves it false (see _sequence)."""
        entry = self._ids.get(header.stream_id)
        state = entry.epochs.get(header.epoch) if entry is not None else None
        if state is None:  # an epoch this monitor never saw a frame of (or has folded): nothing to count
            self.end_of_stream["unmatched"] += 1
            return
        if state.awaiting_reference is not None:  # references come right after their frame, before the end
            self._reference_lost(header.stream_id, header.epoch, state)
        expected = state.expected_seq or 0
        gap = header.seq - expected
        if state.eos_tail is not None or gap < 0 or gap > self._plausible_gap(state, now):
            self.messages += 1  # not a credible end: a reject like any bad message
            self._reject("bad_end_of_stream", f"{header.stream_id} epoch {header.epoch}: ends at seq "
                                              f"{header.seq}, expected {expected}")
            return
        state.eos_tail = gap
        state.lost += gap
        state.last_seen = now
        self.end_of_stream["matched"] += 1
        log.info("stream %s epoch %d ended after %d frames (%d lost at the tail)", header.stream_id, header.epoch,
                 header.seq, gap)

    def _plausible_gap(self, state: StreamState, now: float) -> float:
        return self.limits.max_gap_slack + self.limits.max_gap_rate * max(0.0, now - state.last_accepted_at)

    def _timed(self, stage: str, seconds: float, frames: int = 1) -> None:
        t = self.timings[stage]
        t[0] += frames
        t[1] += seconds

    # --- sequencing and the bounded per-sender state ----------------------------------------------

    def _sequence(self, header: FrameHeader, now: float) -> StreamState | None:
        sid = header.stream_id
        entry = self._ids.get(sid)
        if entry is None:
            if len(self._ids) >= self.limits.max_streams and not self._evict_stream(now):
                self._reject("too_many_streams", f"{len(self._ids)} streams, none idle; ignoring {sid!r}")
                return None
            entry = self._ids[sid] = _Stream(sid)
            self._unproven[sid] = None
        else:
            (self._proven if entry.proven else self._unproven).move_to_end(sid)
        entry.last_seen = now
        state = entry.epochs.get(header.epoch)
        if state is None:
            if entry.epochs:
                if now - self._last_epoch_log > 1.0:
                    self._last_epoch_log = now
                    log.info("stream %s: new epoch %d (a restarted capture): new accounting period", sid, header.epoch)
                if len(entry.epochs) >= self.limits.max_epochs_per_stream:
                    self._fold_epoch(entry)
            state = entry.epochs[header.epoch] = self.streams[(sid, header.epoch)] = StreamState()
        state.last_seen = now
        if state.eos_tail is not None and header.seq >= (state.expected_seq or 0):
            # the epoch goes on: its end-of-stream message was false (forged): undo what it counted
            state.lost -= state.eos_tail
            state.eos_tail = None
            self.end_of_stream["matched"] -= 1
            self.messages += 1
            self._reject("bogus_end_of_stream", f"{sid} epoch {header.epoch} continues at seq {header.seq}")
        if state.expected_seq is not None and header.seq != state.expected_seq:
            if header.seq > state.expected_seq:
                gap = header.seq - state.expected_seq
                plausible = self._plausible_gap(state, now)
                if gap > plausible:  # no capture numbers frames that fast: a forged or corrupt seq, not loss
                    self._reject("seq_jump", f"{sid} seq {header.seq} jumps {gap} frames ahead of "
                                             f"{state.expected_seq} (at most {plausible:.0f} are plausible)")
                    return None
                state.lost += gap
                log.warning("stream %s: %d frame(s) lost before seq %d", sid, gap, header.seq)
                state.waiting_keyframe = True
                state.asked_at = float("-inf")  # a new loss: ask now, even right after an earlier request
                self._ask_keyframe(sid, state, now)
            else:  # a duplicate or a replay: decoding it would corrupt the references
                self._reject("out_of_order", f"{sid} seq {header.seq} < {state.expected_seq}")
                return None
        elif state.waiting_keyframe and header.codec == "hevc" and not header.keyframe:
            self._ask_keyframe(sid, state, now)  # joined mid-GOP: ask rather than wait for the next GOP
        if state.awaiting_reference is not None:  # a later frame came first: that reference is lost
            self._reference_lost(sid, header.epoch, state)
        state.received += 1  # after the replay check: a replayed frame is not received twice
        state.last_accepted_at = now
        state.expected_seq = header.seq + 1
        return state

    def _rival_live(self, sid: str, state: StreamState, now: float) -> bool:
        entry = self._ids.get(sid)
        if entry is None:
            return False
        return any(now - at < RIVAL_LIVE_S for epoch, at in entry.last_decoded_at.items()
                   if entry.epochs.get(epoch) is not state)

    def _counted_duration(self, header: FrameHeader) -> FrameHeader:
        """The header with its duration capped at DURATION_RATIO x its stream's median (counted as
        `duration_capped`), and that duration remembered for the median."""
        entry = self._ids.get(header.stream_id)
        if header.duration is None or entry is None:
            return header
        if len(entry.durations) >= 3:
            cap = max(DURATION_FLOOR_S, DURATION_RATIO * float(np.median(entry.durations)))
            if header.duration > cap:
                self.durations_capped += 1
                log.debug("%s seq %d: duration %.3g s counted as %.3g s", header.stream_id, header.seq,
                          header.duration, cap)
                header = replace(header, duration=cap)
        entry.durations.append(header.duration)
        return header

    def _learn_stream(self, header: FrameHeader, now: float) -> None:
        """Which epochs of this stream id are live (decoded lately): keyframe asks depend on it."""
        entry = self._ids.get(header.stream_id)
        if entry is None:
            return
        entry.last_decoded_at[header.epoch] = now
        for epoch in [e for e in entry.last_decoded_at if e not in entry.epochs]:  # folded epochs: bounded
            del entry.last_decoded_at[epoch]

    def _prove(self, sid: str) -> None:
        entry = self._ids.get(sid)
        if entry is not None and not entry.proven:
            entry.proven = True
            self._unproven.pop(sid, None)
            self._proven[sid] = None

    def _evict_stream(self, now: float) -> bool:
        """Room for a new stream id: the least recently seen id that never decoded a frame, else the
        least recently seen real stream if it has been idle stream_idle_s. False when neither exists."""
        if self._unproven:
            sid = next(iter(self._unproven))
        elif self._proven and now - self._ids[next(iter(self._proven))].last_seen >= self.limits.stream_idle_s:
            sid = next(iter(self._proven))
        else:
            return False
        entry = self._ids.pop(sid)
        self._unproven.pop(sid, None)
        self._proven.pop(sid, None)
        while entry.epochs:
            self._fold_epoch(entry)
        self.expired["streams"] += 1
        self.expired["received"] += entry.folded_received
        self.expired["lost"] += entry.folded_lost
        return True

    def _fold_epoch(self, entry: _Stream) -> None:
        """Drop one epoch's state, keeping its counts: the least recently seen epoch that never
        decoded a frame, else the least recently seen one."""
        victim = min(entry.epochs, key=lambda e: (entry.epochs[e].decoded > 0, entry.epochs[e].last_seen))
        state = entry.epochs.pop(victim)
        self._free_decoder((entry.sid, victim))
        del self.streams[(entry.sid, victim)]
        entry.folded_received += state.received
        entry.folded_lost += state.lost
        entry.folded_epochs += 1
        self.expired["epochs"] += 1

    def _decode(self, header: FrameHeader, payload: bytes, state: StreamState) -> np.ndarray | None:
        if header.codec != "hevc":
            return decode_image(header.codec, payload)
        key = (header.stream_id, header.epoch)
        if state.decoder is None:
            state.decoder = HevcDecoder()
            while len(self._decoders) >= self.limits.max_decoders:
                self._free_decoder(next(iter(self._decoders)))
                self.expired["decoders"] += 1
        self._decoders[key] = None
        self._decoders.move_to_end(key)
        frames = state.decoder.decode(payload, header.width, header.height)
        return frames[-1] if frames else None

    def _free_decoder(self, key: tuple[str, int]) -> None:
        self._decoders.pop(key, None)
        state = self.streams.get(key)
        if state is not None and state.decoder is not None:
            state.decoder = None
            state.waiting_keyframe = True

    def _row_room(self, key: tuple, now: float) -> bool:
        """True when `key` has a row or one can be made under the caps (folding an idle row if needed)."""
        if key in self.rows:
            return True
        entry = self._ids[key[0]]
        if len(entry.rows) >= self.limits.max_rows_per_stream and not self._fold_row(next(iter(entry.rows)), now):
            return False
        if len(self.rows) >= self.limits.max_rows and not self._fold_row(next(iter(self.rows)), now):
            return False
        return True

    def _fold_row(self, key: tuple, now: float) -> bool:
        row = self.rows.get(key)
        if row is not None and now - row.last_seen < self.limits.row_idle_s:
            return False
        self.rows.pop(key, None)
        entry = self._ids.get(key[0])
        if entry is not None:
            entry.rows.pop(key, None)
        if row is not None:
            self.expired["rows"] += 1
            self.expired["row_frames"] += row.frames
            self.expired["row_bytes"] += row.bytes
        return True

    def expire(self, now: float | None = None) -> None:
        """Free the decoders idle for decoder_idle_s (their streams resume at the next keyframe).

        Idle is judged on the clock messages are handled on (their receive times), up to the moment every
        message received has been handled: `now`, or the receive time of the oldest message still waiting in
        the receive queue when the monitor is behind. A stream is idle when no message of it was received in
        the last decoder_idle_s of that, so a frame still queued keeps its stream's decoder however far behind
        the monitor is, and the sweep frees what a monitor that kept up would have freed. Runs in the decoding
        loop, between messages (the one being handled is in no queue)."""
        now = self.clock() if now is None else now
        waiting = self.backlog.oldest()
        handled_to = now if waiting is None else min(now, waiting)
        with self._lock:
            while self._decoders:
                key = next(iter(self._decoders))
                state = self.streams.get(key)
                if state is not None and handled_to - state.last_seen < self.limits.decoder_idle_s:
                    break
                self._free_decoder(key)
                self.expired["idle_decoders"] += 1

    def _reject(self, cause: str, detail: str) -> None:
        self.rejects[cause] += 1
        now = time.monotonic()
        if now - self._last_reject_log > 1.0:  # at most one line a second under a flood
            log.warning("rejected message (%s): %s [%d rejected so far]", cause, detail[:200], sum(self.rejects.values()))
            self._last_reject_log = now

    def memory(self) -> dict:
        """What the bounded structures hold now (for metrics and tests)."""
        with self._lock:
            return {"streams": len(self._ids), "epochs": len(self.streams), "decoders": len(self._decoders),
                    "rows": len(self.rows), "queue_messages": len(self.backlog), "queue_bytes": self.backlog.bytes,
                    "queue_peak_bytes": self.backlog.peak_bytes, "classify_queue_frames": len(self.classify_queue),
                    "classify_queue_bytes": self.classify_queue.bytes, "reference_pairs": len(self.pairs)}

    def operating_points(self) -> dict[str, dict]:
        """Read-only, for live views (server/dashboard.py): each stream's current operating point, the row it
        decoded its latest frame into, and the monitor clock (time.time()) of that frame."""
        with self._lock:
            latest = {key[0]: (key, row.last_seen) for key, row in self.rows.items()}  # LRU order: latest wins
        return {sid: {"model": m, "qp": q, "codec": c, "last_frame_at": at}
                for sid, ((_, m, q, c), at) in latest.items()}

    # --- driver ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, max_frames: int | None = None,
            idle_timeout: float | None = None) -> None:
        """Receive until `stop`, `max_frames` decoded frames, or `idle_timeout` seconds without a message.

        A thread reads the socket into the receive queue (bounded in bytes and messages; when it is
        full the socket thread waits) while this one decodes, and a third classifies. At the end,
        whatever was received but not decoded is counted as `unprocessed_at_stop`, and decoded frames
        still waiting for the recognizer are classified for at most `stop_timeout_s`, the rest counted
        unclassified (`at_stop`): nothing received goes uncounted."""
        stop = stop or threading.Event()
        self._start_classifying(stop)
        rx_stop = threading.Event()
        errors: list[BaseException] = []
        overflow: list = []  # received while stopping with the queue full
        receiver = threading.Thread(target=self._receive, args=(rx_stop, errors, overflow), name="edgepipe-receive",
                                    daemon=True)
        receiver.start()
        last_message = time.monotonic()
        next_sweep = self.clock() + SWEEP_EVERY_S
        poll_s = self.subscriber.poll_ms / 1000 if self.subscriber is not None else 0.1
        try:
            while not stop.is_set() and self.recognizer_failure is None:
                self.ticks += 1
                now = self.clock()
                if now >= next_sweep or next_sweep - now > SWEEP_EVERY_S:  # due, or the clock was set back
                    self.expire(now)
                    next_sweep = now + SWEEP_EVERY_S
                item = self.backlog.get(poll_s)
                if item is None:
                    if self.subscriber is None or self.subscriber.healthy():
                        self.alive += 1
                    if idle_timeout is not None and time.monotonic() - last_message > idle_timeout:
                        break
                    if not receiver.is_alive():
                        break
                    continue
                last_message = time.monotonic()
                self.last_message_at = self.clock()
                self.handle(*item)
                self.alive += 1
                if max_frames is not None and self.decoded >= max_frames:
                    break
        finally:
            rx_stop.set()
            receiver.join()
            left = self.backlog.drain() + overflow
            before = self.rejects["unprocessed_at_stop"]
            for parts, received_at in left:
                self.count_unhandled(parts, "unprocessed_at_stop", received_at)
            unprocessed = self.rejects["unprocessed_at_stop"] - before  # an end of stream is counted, not left
            if unprocessed:
                log.warning("stopping with %d received message(s) not decoded: counted as unprocessed_at_stop",
                            unprocessed)
            self._stop_classifying()
        if errors:
            raise errors[0]
        if self.recognizer_failure is not None:
            raise self.recognizer_failure

    def _start_classifying(self, stop: threading.Event) -> None:
        if self.recognizer is not None and self._classifier is None:
            self._stopping = stop
            self._classifier = ClassifyWorker(self.classify_queue, self._classify_items, self.classifying.batch)

    def _stop_classifying(self) -> None:
        """Classify what is queued (at most stop_timeout_s); count the rest unclassified (`at_stop`)."""
        worker, self._classifier = self._classifier, None
        if worker is None:
            return
        left: list[Pending] = []
        try:
            left = worker.stop(self.classifying.stop_timeout_s)
        finally:  # a second Ctrl-C during the wait still leaves every frame counted
            left = left or self.classify_queue.drain(worker.inflight)
            before = self.unclassified_by_cause["at_stop"]
            self._settle_unclassified(left, "at_stop")
            with self._lock:  # coded frames whose reference never came still get their predictions line
                self._emit(self.pairs.release_lines())
            if self.unclassified_by_cause["at_stop"] > before:
                log.warning("stopping with %d decoded frame(s) not classified within %.0f s: counted unclassified "
                            "(at_stop)", self.unclassified_by_cause["at_stop"] - before,
                            self.classifying.stop_timeout_s)

    def _receive(self, stop: threading.Event, errors: list, overflow: list) -> None:
        """Socket -> receive queue; owns the subscriber's socket while run() runs."""
        sub = self.subscriber
        try:
            while not stop.is_set():
                parts = sub.recv(timeout_ms=50)
                if parts is not None:
                    self._enqueue(parts, stop, overflow)
            for _ in range(self.limits.queue_messages):  # what the transport already holds, then stop
                if (parts := sub.recv(timeout_ms=0)) is None:
                    break
                self._enqueue(parts, stop, overflow)
        except BaseException as exc:  # surfaced by run()
            log.error("monitor receive thread failed: %s", exc)
            errors.append(exc)

    def _enqueue(self, parts: list[bytes], stop: threading.Event, overflow: list) -> None:
        now = self.clock()
        if not self.backlog.put(parts, now, stop):  # stopping while the queue is full: counted after it
            overflow.append((parts, now))

    # --- reporting ------------------------------------------------------------------------------

    def report(self, fresh_rd: bool = False) -> dict:
        """Everything counted so far. `fresh_rd`: the live BD figures computed now (the final report), not the
        ones cached for a few seconds (live views)."""
        live = self.live_rd.summary(fresh=fresh_rd)  # its own lock: the BD figures never hold up decoding
        with self._lock:
            rows = [{"stream": s, "model": m, "qp": q, "codec": c, **acc.summary()}
                    for (s, m, q, c), acc in sorted(self.rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))]
            streams = [{"stream": s, "epoch": e, "received": st.received, "lost": st.lost,
                        **({"ended": True} if st.eos_tail is not None else {})}
                       for (s, e), st in self.streams.items()]
            folded_lost = sum(e.folded_lost for e in self._ids.values()) + self.expired["lost"]
            folded_received = sum(e.folded_received for e in self._ids.values()) + self.expired["received"]
            out = {
                "messages": self.messages,
                "decoded": self.decoded,
                "classified": self.classified,
                "unclassified": self.unclassified,
                "unclassified_by_cause": {c: self.unclassified_by_cause[c] for c in CAUSES
                                          if self.unclassified_by_cause[c]},
                "share_classified": share(self.classified, self.decoded) if self.recognizer is not None else None,
                "durations_capped": self.durations_capped,
                "lost": sum(st.lost for st in self.streams.values()) + folded_lost,
                "rejects": dict(self.rejects),
                "end_of_stream": {"matched": self.end_of_stream["matched"],
                                  "unmatched": self.end_of_stream["unmatched"]},
                "streams": streams,
                "rows": rows,
            }
            if self.references:
                out["references"] = self._references_report()
            if any(stream["bd"] for stream in live.values()):  # some model besides the anchor has data
                out["live_rd"] = live
            if self.subscriber is not None:
                sub = self.subscriber
                out["transport"] = {"connected": sub.connected, "connections": sub.connections,
                                    "disconnects": sub.disconnects, "drops": sub.drops, "repairs": sub.repairs}
            if self.recognizer is not None:
                out["classify"] = self._classify_report()
            if self.predictions is not None:
                out["predictions"] = self.predictions.report()
            if self.sinks is not None:
                out["sinks"] = self.sinks.report()
            if self.expired or folded_received or folded_lost:
                out["expired"] = {"streams": self.expired["streams"], "epochs": self.expired["epochs"],
                                  "received": folded_received, "lost": folded_lost,
                                  "rows": self.expired["rows"], "row_frames": self.expired["row_frames"],
                                  "row_bytes": self.expired["row_bytes"],
                                  "decoders": self.expired["decoders"] + self.expired["idle_decoders"]}
            return out


    def _references_report(self) -> dict:
        """Under the lock: reference messages, counted apart from the stream, and the agreement of every pair."""
        r = self.references
        out = {name: r[name] for name in ("received", "bytes", "decoded", "classified", "unclassified", "lost",
                                           "without_frame", "undecodable", "unprocessed_at_stop")}
        out["share_of_stream_bytes"] = share(r["bytes"], self.totals["bytes"])
        out["pairs"] = self.pairs.pairs
        out["pending_pairs"] = self.pairs.pending
        out["unpaired"] = dict(self.pairs.unpaired)
        out["agreement"] = self.agreement.summary()
        return out

    def _classify_report(self) -> dict:
        """How the recognizer kept up: the policy, the queue, the batches it ran and its latency."""
        o, r = self.classifying, self.recognizer
        return {"policy": o.policy, "every": o.every, "queue": o.queue, "batch": o.batch,
                "pending": self.pending_classifications(), "queue_peak": self.classify_queue.peak,
                "batches": r.calls, "batch_mean": round(r.frames / r.calls, 2) if r.calls else None,
                "batch_max": r.largest,
                "latency_ms_p50": round(self.classify_latency.median() * 1000, 2) if len(self.classify_latency)
                else None}


def format_table(report: dict) -> str:
    """The accuracy/bitrate table for the terminal, with what kbit/s was measured on under it."""
    # the share of frames classified, shown once some frame went unclassified: top-1 is over that share
    partial = any(r.get("unclassified") for r in report["rows"])
    head = (f"{'stream':<14} {'model':<20} {'codec':<8} {'QP':>4} {'frames':>6} {'bpp':>8} {'kbit/s':>9} "
            f"{'B/frame':>9} {'top-1':>7} {'proc fps':>8}" + (f" {'classified':>10}" if partial else ""))
    lines = [head, "-" * len(head)]
    clocks: dict[str, list[float]] = {}
    for r in report["rows"]:
        top1 = f"{100 * r['top1']:6.1f}%" if r["top1"] is not None else "    n/a"
        clock = r.get("kbit_s_clock") or "capture"
        mark = "*" if clock == "capture" else " "
        kbps = f"{r['kbit_s']:8.1f}{mark}" if r["kbit_s"] is not None else "     n/a "
        proc = f"{r['processed_fps']:8.1f}" if r.get("processed_fps") is not None else "     n/a"
        clocks.setdefault(clock, []).append(r.get("stream_fps") or 0.0)
        shared = r.get("share_classified")
        cls = (f" {100 * shared:9.1f}%" if shared is not None else "        n/a") if partial else ""
        lines.append(f"{r['stream'][:14]:<14} {r['model'][:20]:<20} {r['codec']:<8} {r['qp']:>4} {r['frames']:>6} "
                     f"{r['bpp']:>8.4f} {kbps} {r['bytes_per_frame']:>9.0f} {top1} {proc}{cls}")
    rejects = ", ".join(f"{k}={v}" for k, v in sorted(report["rejects"].items())) or "none"
    lines.append(f"messages {report['messages']}, decoded {report['decoded']}{classified_words(report)}, "
                 f"lost {report['lost']}, rejected: {rejects}")
    if report["rejects"].get("bad_version"):
        lines.append(f"{report['rejects']['bad_version']} message(s) of a wire version this monitor does not speak: "
                     "a newer capture? upgrade monitors before captures (docs/wire.md)")
    ended = report.get("end_of_stream", {}).get("matched", 0)
    if ended:
        lines.append(f"streams ended by their capture: {ended} (frames missing at their tail are counted as lost)")
    if report["rows"]:
        lines.extend(clock_legend(clocks))
    if report.get("unclassified"):
        lines.append("classified: top-1 is over the classified labelled frames only; kbit/s and loss count every "
                     "frame (see docs/monitor.md)")
    if report.get("references"):
        lines.extend(reference_lines(report))
    if report.get("live_rd"):
        from edgepipe.server.live_rd import report_lines

        lines.extend(report_lines(report["live_rd"]))
    predictions = report.get("predictions")
    if predictions:
        from edgepipe.server.predictions import describe as describe_predictions

        lines.append(describe_predictions(predictions))
    sinks = report.get("sinks")
    if sinks:
        from edgepipe.server.sinks import describe

        lines.extend(describe(sinks))
    return "\n".join(lines)


def agreement_words(agreement: dict) -> str:
    """'top-1 agree 95.0% [90.1, 99.9], top-5 overlap ..., p(ref) ..., KL ... (n pairs)'."""
    def one(name: str, label: str, percent: bool) -> str:
        m = agreement[name]
        if m["mean"] is None:
            return f"{label} n/a"
        scale, unit = (100, "%") if percent else (1, "")
        ci = f" [{scale * m['ci95'][0]:.{1 if percent else 3}f}, {scale * m['ci95'][1]:.{1 if percent else 3}f}]" \
            if m["ci95"] else ""
        return f"{label} {scale * m['mean']:.{1 if percent else 3}f}{unit}{ci}"
    return (f"{one('top1_equal', 'top-1 agree', True)}, {one('top5_overlap', 'top-5 overlap', True)}, "
            f"{one('p_reference', 'p(ref top-1)', False)}, {one('kl', 'KL', False)} ({agreement['pairs']} pairs)")


def reference_lines(report: dict) -> list[str]:
    """Under the table: the reference messages (apart from the stream) and the agreement per row and in all."""
    r = report["references"]
    share_words = f" ({100 * r['share_of_stream_bytes']:.1f}% of the stream's bytes)" \
        if r["share_of_stream_bytes"] is not None else ""
    unpaired = ", ".join(f"{k}={v}" for k, v in r["unpaired"].items() if v) or "none"
    lines = [f"references: {r['received']} received, {r['bytes']} bytes{share_words}, lost {r['lost']}, "
             f"without their frame {r['without_frame']}; pairs {r['pairs']}, pending {r['pending_pairs']}, "
             f"unpaired: {unpaired} (not in kbit/s, frames or loss above)"]
    for row in report["rows"]:
        ref = row.get("reference")
        if ref and ref["agreement"]["pairs"]:
            lines.append(f"  {row['stream'][:14]} {row['model'][:20]} {row['codec']} QP {row['qp']}: "
                         f"{agreement_words(ref['agreement'])}")
    if r["pairs"]:
        lines.append(f"  all: {agreement_words(r['agreement'])}; 95% CIs: normal approximation over frames")
    return lines


def classified_words(report: dict) -> str:
    """', classified N (P%), unclassified M (cause=n, ...)' for the summary line; '' with classification off."""
    words = ""
    if report.get("share_classified") is not None:
        words += f", classified {report['classified']} ({100 * report['share_classified']:.1f}%)"
    if report.get("unclassified"):
        causes = ", ".join(f"{k}={v}" for k, v in report.get("unclassified_by_cause", {}).items())
        words += f", unclassified {report['unclassified']}" + (f" ({causes})" if causes else "")
    return words


def clock_legend(clocks: dict[str, list[float]]) -> list[str]:
    """What the table's kbit/s and proc fps were measured on, one line each."""
    stream = [c for c in clocks if c != "capture"]
    lines = []
    if stream:
        said = "; ".join(CLOCK_MEANINGS.get(c, c) for c in sorted(stream))
        lines.append(f"kbit/s: per second of the stream's own clock: {said}")
    if "capture" in clocks:
        lines.append(f"kbit/s*: {CLOCK_MEANINGS['capture']}")
    lines.append("proc fps: frames per second of capture time, i.e. how fast the pipeline ran (machine speed), "
                 "not the stream's rate")
    return lines


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
    atomic_write(path, json.dumps(json_safe(report), indent=2, allow_nan=False))
