"""Classification beside the decoding loop: a bounded queue, one worker thread, recognizer calls batched across
frames and streams, and a declared policy for what is classified when the recognizer cannot keep up.

The decoding loop accounts every decoded frame at once (bitrate, loss, its row), then offers it here; the
recognizer's answer is added to the frame's row when it comes. A decoded frame ends in exactly one of
`classified` or `unclassified` (by cause, below), never in `lost`: `decoded = classified + unclassified` once
the monitor has stopped (and `+ pending` while it runs).

Policies (`--classify-policy`):
- `keyframes-first`: offering never waits. When the queue is full, a frame of a better rank takes the place of
  the oldest queued frame of the worst rank; a frame that finds no worse one is not queued. Ranks, best first:
  reference frames and the coded frames they belong to (`rank(..., reference=True)`: a pair is only measured
  when both halves are classified), keyframes, every Nth frame
  of a stream (`seq % N == 0`, `--classify-every`), the rest. The worker takes the best rank first.
- `all`: every frame is classified; the decoding loop waits for room in the queue, so a recognizer that cannot
  keep up slows decoding, then the receive queue fills and a live capture drops (counted lost at both ends).
  For labelled replays (the demo), where every frame must count in top-1.

Unclassified causes: `skipped_under_load` (shed by the policy), `recognizer_unavailable` (a recognizer server
away), `recognizer_error` (the recognizer failed on a batch; logged), `at_stop` (still queued or in a batch when
the monitor stopped and `stop_timeout_s` ran out, or stopped while `all` waited for room).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.recognition import TopK

log = logging.getLogger(__name__)

POLICIES = ("keyframes-first", "all")
RANKS = ("reference", "keyframe", "every_nth", "other")  # best first: the order frames are kept and taken in
CAUSES = ("skipped_under_load", "recognizer_unavailable", "recognizer_error", "at_stop")


@dataclass(frozen=True)
class ClassifyOptions:
    """How the monitor classifies. The library's default is `all` (every frame, as before batching); the
    `monitor` command's is `keyframes-first`, so a live camera is never slowed by its recognizer."""

    policy: str = "all"
    every: int = 5  # keyframes-first: every Nth frame of a stream ranks above the rest
    queue: int = 32  # decoded frames waiting for the recognizer
    batch: int = 16  # frames per recognizer call, at most
    queue_bytes: int = 64 * 1024 * 1024  # ... and their pixels, in bytes (32 frames of 720p are 88 MB)
    stop_timeout_s: float = 10.0  # at stop, queued frames are classified for at most this long

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise EdgepipeError(f"unknown classify policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        for name in ("every", "queue", "batch", "queue_bytes"):
            if getattr(self, name) < 1:
                raise EdgepipeError(f"classify {name} must be at least 1, got {getattr(self, name)}")
        if self.batch > self.queue:
            raise EdgepipeError(f"--classify-batch {self.batch} is larger than --classify-queue {self.queue}: "
                                "a batch is taken from that queue")

    @property
    def waits(self) -> bool:
        """Whether offering a frame waits for room instead of shedding."""
        return self.policy == "all"

    def rank(self, header, reference: bool = False) -> int:
        """Index into RANKS: what the policy keeps first under load."""
        if reference:
            return 0
        if header.keyframe:
            return 1
        return 2 if header.seq % self.every == 0 else 3


class Pending:
    """A decoded frame on its way to the recognizer; `settled` once it is counted classified or unclassified."""

    __slots__ = ("header", "nbytes", "key", "image", "rank", "settled", "pair")

    def __init__(self, header, nbytes: int, key: tuple, image: np.ndarray, rank: int, pair: str | None = None):
        self.header, self.nbytes, self.key, self.image, self.rank = header, nbytes, key, image, rank
        self.settled = False
        self.pair = pair  # "coded" or "reference": a half of a reference pair (server/pairs.py); None: neither


class Recognizer:
    """What the monitor classifies with: `batch` maps uint8 RGB frames (N, H, W, 3) of one size to a TopK (or to
    top-1 indices (N,)); `prepare`, when the classifier has one, is the per-frame part of its view (the centre
    crop), so frames of different sizes can share a batch. `classify` groups frames by prepared shape."""

    def __init__(self, batch: Callable[[np.ndarray], TopK | np.ndarray],
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None, name: str = "recognizer"):
        self.batch, self.prepare, self.name = batch, prepare, name
        self.calls = 0  # batch calls made
        self.frames = 0  # frames in them
        self.largest = 0  # the largest batch

    @classmethod
    def from_classifier(cls, classifier, k: int = 5) -> Recognizer:
        """A Classifier or TritonClassifier: top-k with probabilities, its view's crop done before batching."""
        return cls(lambda frames: classifier.topk(frames, k), classifier.prepare, classifier.name)

    @classmethod
    def per_frame(cls, classify: Callable[[np.ndarray], int]) -> Recognizer:
        """A function of one frame -> ImageNet index (the interface before batching): called frame by frame."""
        return cls(lambda frames: np.array([int(classify(f)) for f in frames], np.int64),
                   name=getattr(classify, "__name__", "recognizer"))

    def classify(self, images: list[np.ndarray]) -> TopK:
        """TopK for `images`, in their order: one batch call per shape of the prepared frames."""
        inputs = [self.prepare(im) for im in images] if self.prepare is not None else images
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x.shape, []).append(i)
        classes = probs = None
        for idx in groups.values():
            out = self._call(np.stack([inputs[i] for i in idx]))
            if classes is None:
                classes = np.zeros((len(images), out.classes.shape[1]), np.int64)
                probs = None if out.probs is None else np.zeros(classes.shape, np.float32)
            classes[idx] = out.classes
            if probs is not None and out.probs is not None:
                probs[idx] = out.probs
        return TopK(classes, probs)

    def _call(self, batch: np.ndarray) -> TopK:
        out = self.batch(batch)
        if not isinstance(out, TopK):
            out = TopK(np.asarray(out, np.int64).reshape(len(batch), 1), None)
        if len(out) != len(batch):
            raise ValueError(f"the recognizer answered {len(out)} results for a batch of {len(batch)} frames")
        self.calls += 1
        self.frames += len(batch)
        self.largest = max(self.largest, len(batch))
        return out


def as_recognizer(classify) -> Recognizer | None:
    """None, a Recognizer, a classifier object (Classifier, TritonClassifier) or a function of one frame."""
    if classify is None or isinstance(classify, Recognizer):
        return classify
    if hasattr(classify, "topk") and hasattr(classify, "prepare"):
        return Recognizer.from_classifier(classify)
    if callable(classify):
        return Recognizer.per_frame(classify)
    raise TypeError(f"cannot classify with {classify!r}")


class ClassifyQueue:
    """Decoded frames waiting for the recognizer, bounded in frames and in bytes, kept by rank."""

    def __init__(self, max_frames: int, max_bytes: int):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._ranks: list[deque[Pending]] = [deque() for _ in RANKS]
        self.frames = 0
        self.bytes = 0
        self.peak = 0  # most frames held at once
        self._cond = threading.Condition()

    def offer(self, item: Pending, wait: bool, stop: threading.Event | None = None) -> tuple[bool, list[Pending]]:
        """Queue `item`; returns (queued, frames shed to make room). Full: wait for room when `wait` (False if
        `stop` comes first), else shed the oldest frames of a worse rank, else refuse `item`."""
        n = item.image.nbytes
        shed: list[Pending] = []
        with self._cond:
            while self._full(n):
                if wait:
                    if stop is not None and stop.is_set():
                        return False, shed
                    self._cond.wait(0.05)
                    continue
                victim = self._worst_below(item.rank)
                if victim is None:
                    return False, shed
                shed.append(self._pop(victim, last=False))
            self._ranks[item.rank].append(item)
            self.frames += 1
            self.bytes += n
            self.peak = max(self.peak, self.frames)
            self._cond.notify_all()
            return True, shed

    def take(self, max_n: int, timeout: float, holder: list[Pending]) -> list[Pending]:
        """Up to `max_n` frames, best rank first and oldest first within a rank, also put in `holder` (the
        worker's batch in hand) under the same lock, so `drain` sees every frame not yet counted."""
        with self._cond:
            if not self.frames:
                self._cond.wait(timeout)
            items = []
            for rank in range(len(RANKS)):
                while self._ranks[rank] and len(items) < max_n:
                    items.append(self._pop(rank, last=False))
            if items:
                holder[:] = items
                self._cond.notify_all()
            return items

    def release(self, holder: list[Pending]) -> None:
        with self._cond:
            holder.clear()

    def drain(self, holder: list[Pending] | None = None) -> list[Pending]:
        """Everything queued, and what `holder` holds, removed from both."""
        with self._cond:
            items = [item for q in self._ranks for item in q] + list(holder or [])
            for q in self._ranks:
                q.clear()
            if holder is not None:
                holder.clear()
            self.frames = self.bytes = 0
            self._cond.notify_all()
            return items

    def _full(self, n: int) -> bool:
        # an empty queue takes any frame (the receive queue already bounds what one frame can be)
        return self.frames > 0 and (self.frames >= self.max_frames or self.bytes + n > self.max_bytes)

    def _worst_below(self, rank: int) -> int | None:
        for worse in range(len(RANKS) - 1, rank, -1):
            if self._ranks[worse]:
                return worse
        return None

    def _pop(self, rank: int, last: bool) -> Pending:
        item = self._ranks[rank].pop() if last else self._ranks[rank].popleft()
        self.frames -= 1
        self.bytes -= item.image.nbytes
        return item

    def __len__(self) -> int:
        return self.frames


class ClassifyWorker:
    """One thread: takes up to `batch` frames from the queue and hands them to `process` (which classifies
    and counts them), until stopped."""

    def __init__(self, queue: ClassifyQueue, process: Callable[[list[Pending]], None], batch: int):
        self.queue, self.process, self.batch = queue, process, batch
        self.inflight: list[Pending] = []  # the batch being classified now
        self._finish = threading.Event()  # stop once the queue is empty
        self._abort = threading.Event()  # stop after the batch in hand
        self._thread = threading.Thread(target=self._run, name="edgepipe-classify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._abort.is_set():
                items = self.queue.take(self.batch, 0.05, self.inflight)
                if not items:
                    if self._finish.is_set():
                        return
                    continue
                self.process(items)
                self.queue.release(self.inflight)
        except BaseException:  # a bug, not a recognizer failure (those are counted by process): say so
            log.exception("the classify thread failed; frames left in its queue are counted unclassified at stop")

    def stop(self, timeout: float) -> list[Pending]:
        """Classify what is queued for at most `timeout` seconds; returns the frames left (queued, or in a
        batch that has not finished), for the caller to count."""
        self._finish.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
        left = self.queue.drain(self.inflight)  # a batch still being classified is counted now, its answer ignored
        self._thread.join(1.0)  # a recognizer call still running ends on its own (the thread is a daemon)
        return left

    @property
    def in_flight(self) -> int:
        return len(self.inflight)
