"""The live rate-accuracy curve of each stream and the live BD-rate of each pre-transform against `none` (issue 14
item 3), over a sliding window of frames.

A capture with `--ladder hevc:27,32,37,42 --ab none,ours` sends every (QP, engine) pair in turn, one GOP each, so
one camera's own scene yields a curve per engine. Per stream and operating point (codec, QP, model) the window
keeps, for the last `window_s` seconds of the monitor's clock (at most `max_samples` of each kind; a stream
with a single model so far keeps at most `single_model_samples`, until a second model's frames come):
- the bits of every decoded frame (classified or not: a keyframe's cost belongs to its point) and the stream
  time it stands for;
- the agreement of every reference pair (server/agreement.py): top-1 agreement and top-5 overlap;
- whether the recognizer's top-1 was right, for every classified frame that carries a label.

The curve: per point, the mean bits per frame (the rate axis; kbit/s beside it where frames carry the stream
clock) and the mean of each quality measure. The BD-rate: for each model other than the anchor (`none`) and each
measure, over the (codec, QP) points where both curves have data, at least MIN_POINTS of them, core/bdrate.py's
`compare` gives the BD-rate (cubic, as the headline, and PCHIP) with its overlap and notes, and a bootstrap gives
its 95 % interval: a block bootstrap, `resamples` times from a fixed seed, the 2.5th and 97.5th percentiles of the
cubic BD-rates that are defined. A block is BLOCK_FRAMES consecutive frames of the stream by sequence number (one
GOP of 20; a ladder switches points at GOP boundaries, so it is a visit of the stream to a point), with the bits
and every measure of those frames; each point's blocks are drawn with replacement, each whole. The block comes
from the frame's (epoch, seq), so the monitor, where a pair's measure arrives after later frames, and
`from_predictions` form the same blocks; a caller without sequence numbers gets a block per visit of the stream to
the point, cut after BLOCK_FRAMES frames. Neighbouring frames share their content, and a ladder gives each point different
stretches of the scene: resampled frame by frame, the interval of the person clip's ladder run excluded zero
(+1.4 to +72.9 %) although its P-frame bits per point varied 5-fold with what the scene showed at the time. The rate axis is bits per frame: a ladder gives every point the same frame rate, so this is the ratio of
kbit/s, and it is what a `--predictions` line carries (`bytes`), so the same figures come offline from those
lines (`from_predictions`) whenever every frame was classified and the window held them all.

Cheap: adding a sample is O(1) under the window's own lock; the BD figures are computed at most every
`min_interval_s` (and again only when samples changed), from copies taken under the lock, and cached. Bounded:
at most `max_points` operating points (the least recently fed is dropped) and `max_samples` of each kind per point
(about 0.5 KB a frame: 256 points of 1,024 frames are at most ~130 MB, a ladder of 8 points ~4 MB).
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Iterable

import numpy as np

from edgepipe.core.bdrate import bd_rate, compare

DEFAULT_WINDOW_S = 600.0
ANCHOR = "none"  # the model every other is compared with: no pre-transform
MIN_POINTS = 4  # operating points with data on both curves before a BD-rate is given
RESAMPLES = 200
SEED = 14
MIN_INTERVAL_S = 5.0
# quality measures, as named in the curve and the BD figures: accuracy against labels, agreement with references
MEASURES = ("top1", "top1_agreement", "top5_overlap")
BLOCK_FRAMES = 20  # at most this many consecutive frames of a point form one bootstrap block (a GOP's worth)
MEASURE_WORDS = {"top1": "top-1", "top1_agreement": "top-1 agreement", "top5_overlap": "top-5 overlap"}


class _Point:
    """The window of one (stream, codec, QP, model): (time, bits, stream seconds, block), (time, value, block) per
    measure. `block`: the bootstrap block (module docstring); without a frame's (epoch, seq), a new one at each
    visit of the stream to this point and after BLOCK_FRAMES frames of one visit, and a measure joins the block of
    the frames its point saw last."""

    __slots__ = ("rate", "quality", "block", "in_block")

    def __init__(self, max_samples: int):
        self.rate: deque = deque(maxlen=max_samples)
        self.quality: dict[str, deque] = {m: deque(maxlen=max_samples) for m in MEASURES}
        self.block = 0
        self.in_block = 0

    def add_frame(self, now: float, bits: int, duration: float, new_visit: bool, block: int | None) -> None:
        if new_visit or self.in_block >= BLOCK_FRAMES:
            self.block += 1
            self.in_block = 0
        self.in_block += 1
        self.rate.append((now, bits, duration, self.block if block is None else block))

    def add_quality(self, measure: str, now: float, value: float, block: int | None) -> None:
        self.quality[measure].append((now, value, self.block if block is None else block))

    def grow(self, max_samples: int) -> None:
        if self.rate.maxlen < max_samples:
            self.rate = deque(self.rate, maxlen=max_samples)
            self.quality = {m: deque(q, maxlen=max_samples) for m, q in self.quality.items()}

    def evict(self, oldest: float) -> None:
        for samples in (self.rate, *self.quality.values()):
            while samples and samples[0][0] < oldest:
                samples.popleft()

    def empty(self) -> bool:
        return not self.rate and not any(self.quality.values())


def frame_block(frame: tuple[int, int] | None) -> int | None:
    """The bootstrap block of a frame (epoch, seq): its stretch of BLOCK_FRAMES sequence numbers, as one int64
    (above the visit counters' small numbers). None without a frame."""
    if frame is None:
        return None
    epoch, seq = frame
    return 1 << 62 | (int(epoch) & 0xFFFFFFFF) << 29 | (int(seq) // BLOCK_FRAMES) & 0x1FFFFFFF


class LiveRD:
    def __init__(self, window_s: float = DEFAULT_WINDOW_S, anchor: str = ANCHOR, min_points: int = MIN_POINTS,
                 resamples: int = RESAMPLES, seed: int = SEED, min_interval_s: float = MIN_INTERVAL_S,
                 max_points: int = 256, max_samples: int = 1024, single_model_samples: int = 256):
        if not window_s > 0:
            raise ValueError(f"the window must be a positive number of seconds, got {window_s}")
        self.window_s, self.anchor, self.min_points = window_s, anchor, min_points
        self.resamples, self.seed, self.min_interval_s = resamples, seed, min_interval_s
        self.max_points, self.max_samples = max_points, max_samples
        # a stream with one model so far (no ladder, or the first GOP of one) keeps fewer samples per point: a
        # monitor of many plain cameras holds little; its points grow to max_samples when a second model comes
        self.single_model_samples = min(single_model_samples, max_samples)
        # (stream, codec, qp, model) -> its window, least recently fed first
        self._points: OrderedDict[tuple, _Point] = OrderedDict()
        self._last_fed: dict[str, tuple] = {}  # stream -> the point its last frame went to (a visit ends on a change)
        self._lock = threading.Lock()
        self._changes = 0  # samples added or evicted: the cached BD figures are stale once it moves
        self._cache: tuple[float, int, dict] | None = None  # (monotonic time, changes, {stream: [bd]})
        self.computations = 0  # BD computations run (the cache's effect, for tests)

    # --- feeding (the monitor, under its lock) --------------------------------------------------------------

    def _point(self, stream: str, model: str, qp: int, codec: str) -> _Point:
        key = (stream, codec, qp, model)
        point = self._points.get(key)
        if point is None:
            while len(self._points) >= self.max_points:
                self._points.popitem(last=False)
            mine = [(k, p) for k, p in self._points.items() if k[0] == stream]
            compared = any(k[3] != model for k, _ in mine)
            point = self._points[key] = _Point(self.max_samples if compared else self.single_model_samples)
            if compared:
                for _, other in mine:
                    other.grow(self.max_samples)
        self._points.move_to_end(key)
        self._changes += 1
        return point

    def add_frame(self, stream: str, model: str, qp: int, codec: str, nbytes: int, duration: float | None,
                  now: float, frame: tuple[int, int] | None = None) -> None:
        """A decoded frame of this operating point: its bits (and the stream seconds it stands for, if known);
        `frame` its (epoch, seq), which places it in its bootstrap block."""
        with self._lock:
            key = (stream, codec, qp, model)
            new_visit = self._last_fed.get(stream) != key
            if new_visit and len(self._last_fed) >= self.max_points and stream not in self._last_fed:
                self._last_fed.clear()  # bounded: a forgotten stream's next frame starts a visit, as it would
            self._last_fed[stream] = key
            self._point(stream, model, qp, codec).add_frame(now, 8 * nbytes, duration or 0.0, new_visit,
                                                            frame_block(frame))

    def add_agreement(self, stream: str, model: str, qp: int, codec: str, measures: dict, now: float,
                      frame: tuple[int, int] | None = None) -> None:
        """A reference pair of this operating point measured (server/agreement.py's measures)."""
        with self._lock:
            point, block = self._point(stream, model, qp, codec), frame_block(frame)
            point.add_quality("top1_agreement", now, float(bool(measures["top1_equal"])), block)
            point.add_quality("top5_overlap", now, float(measures["top5_overlap"]), block)

    def add_label(self, stream: str, model: str, qp: int, codec: str, correct: bool, now: float,
                  frame: tuple[int, int] | None = None) -> None:
        """A labelled frame of this operating point classified: was the recognizer's top-1 right."""
        with self._lock:
            self._point(stream, model, qp, codec).add_quality("top1", now, float(bool(correct)), frame_block(frame))

    def evict(self, now: float) -> None:
        """Samples older than the window go; operating points left empty go too."""
        with self._lock:
            self._evict(now)

    def _evict(self, now: float) -> None:
        oldest = now - self.window_s
        for key in list(self._points):
            point = self._points[key]
            before = len(point.rate) + sum(len(q) for q in point.quality.values())
            point.evict(oldest)
            if point.empty():
                del self._points[key]
            if len(point.rate) + sum(len(q) for q in point.quality.values()) != before:
                self._changes += 1

    # --- reading --------------------------------------------------------------------------------------------

    def _copy(self, now: float) -> tuple[int, dict[str, dict[tuple, tuple]]]:
        """Under the lock: per stream, (codec, qp, model) -> (bits, seconds, {measure: values}, blocks of the
        bits, {measure: blocks of its values}) as arrays."""
        with self._lock:
            self._evict(now)
            streams: dict[str, dict[tuple, tuple]] = {}
            for (sid, codec, qp, model), point in self._points.items():
                # block numbers stay int64: as float64 the frame blocks (about 2^62) would run together
                rate = np.array([r[1:3] for r in point.rate], dtype=np.float64).reshape(-1, 2)
                streams.setdefault(sid, {})[(codec, qp, model)] = (
                    rate[:, 0], rate[:, 1],
                    {m: np.array([v[1] for v in q], dtype=np.float64) for m, q in point.quality.items()},
                    np.array([r[3] for r in point.rate], dtype=np.int64),
                    {m: np.array([v[2] for v in q], dtype=np.int64) for m, q in point.quality.items()})
            return self._changes, streams

    def summary(self, now: float | None = None, fresh: bool = False) -> dict[str, dict]:
        """Per stream: the window, the curve (a point per operating point) and the BD figures of each model
        against the anchor. The BD figures are reused for min_interval_s unless `fresh` (the final report)."""
        now = time.time() if now is None else now
        changes, streams = self._copy(now)
        cached = self._cache
        clock = time.monotonic()
        if cached is not None and not fresh and (cached[1] == changes or clock - cached[0] < self.min_interval_s):
            bd = cached[2]
        else:
            bd = {sid: self._bd(points) for sid, points in sorted(streams.items())}
            self.computations += 1
            self._cache = (clock, changes, bd)
        return {sid: {"window_s": self.window_s, "anchor": self.anchor, "points": _curve(points),
                      "bd": bd.get(sid, [])}
                for sid, points in sorted(streams.items())}

    def _bd(self, points: dict[tuple, tuple]) -> list[dict]:
        """Each (codec, model) other than the anchor's against the anchor's, for each measure with data."""
        out = []
        pairs = sorted({(codec, model) for codec, _, model in points if model != self.anchor})
        anchored = {codec for codec, _, model in points if model == self.anchor}
        for codec, model in pairs:
            if codec not in anchored:
                continue  # a stream that never ran the anchor (a plain --engine camera): no comparison to speak of
            for measure in MEASURES:
                test = _usable(points, codec, model, measure)
                anchor = _usable(points, codec, self.anchor, measure)
                if not test and not anchor:
                    continue
                common = sorted(set(test) & set(anchor))
                entry = {"model": model, "anchor": self.anchor, "codec": codec, "measure": measure,
                         "points": len(common), "qps": common}
                if len(common) < self.min_points:
                    entry.update(bd_rate=None, reason=f"not enough points: {len(common)} of the {self.min_points} "
                                                      "operating points needed have data on both curves")
                else:
                    with warnings.catch_warnings():  # a resample with near-tied qualities fits a cubic badly: said
                        warnings.simplefilter("ignore")  # by the interval's width, not by a warning per frame
                        entry.update(self._figure([anchor[q] for q in common], [test[q] for q in common]))
                out.append(entry)
        return out

    def _figure(self, anchor: list[tuple], test: list[tuple]) -> dict:
        """compare() on the means, and the block-bootstrap interval of the cubic BD-rate (module docstring)."""
        ra = np.array([p[0].mean() for p in anchor])
        qa = np.array([p[2].mean() for p in anchor])
        rt = np.array([p[0].mean() for p in test])
        qt = np.array([p[2].mean() for p in test])
        c = compare(ra, qa, rt, qt)
        rng = np.random.default_rng(self.seed)

        def resampled(curve: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
            rates, qualities = [], []
            for bits, bit_blocks, values, value_blocks in curve:
                blocks, index = np.unique(np.concatenate([bit_blocks, value_blocks]), return_inverse=True)
                n = len(blocks)
                sums = {"bits": np.bincount(index[:len(bits)], bits, n), "values": np.bincount(
                    index[len(bits):], values, n)}
                counts = {"bits": np.bincount(index[:len(bits)], minlength=n),
                          "values": np.bincount(index[len(bits):], minlength=n)}
                draw = rng.integers(0, n, (self.resamples, n))  # the same blocks for the bits and the measure
                with np.errstate(invalid="ignore", divide="ignore"):
                    rates.append(sums["bits"][draw].sum(1) / counts["bits"][draw].sum(1))
                    qualities.append(sums["values"][draw].sum(1) / counts["values"][draw].sum(1))
            return np.stack(rates, axis=1), np.stack(qualities, axis=1)

        bra, bqa = resampled(anchor)
        brt, bqt = resampled(test)
        draws = np.full(self.resamples, math.nan)
        for b in range(self.resamples):
            if not (np.isfinite(bra[b]).all() and np.isfinite(brt[b]).all() and np.isfinite(bqa[b]).all()
                    and np.isfinite(bqt[b]).all()):
                continue  # a draw with no frame or no measure at a point: left undefined
            try:
                draws[b] = bd_rate(bra[b], bqa[b], brt[b], bqt[b], "cubic")
            except (ValueError, OverflowError):  # a degenerate resample (a fit out of range): left undefined
                pass
        defined = draws[np.isfinite(draws)]
        ci = [round(float(np.percentile(defined, 2.5)), 3), round(float(np.percentile(defined, 97.5)), 3)] \
            if len(defined) >= 2 else None
        return {"bd_rate": _round(c.rate_cubic), "bd_rate_pchip": _round(c.rate_pchip), "ci95": ci,
                "resamples": self.resamples, "resamples_defined": int(len(defined)),
                "bd_quality": _round(c.quality_cubic, 5), "overlap_iou": round(c.overlap_iou, 4),
                "notes": list(c.notes),
                **({"reason": "; ".join(c.notes) or "undefined"} if math.isnan(c.rate_cubic) else {})}


def _usable(points: dict[tuple, tuple], codec: str, model: str, measure: str) -> dict[int, tuple]:
    """qp -> (bits, their blocks, measure values, their blocks) of the points of (codec, model) with frames and
    samples of the measure."""
    return {qp: (bits, bit_blocks, quality[measure], quality_blocks[measure])
            for (c, qp, m), (bits, _, quality, bit_blocks, quality_blocks) in points.items()
            if c == codec and m == model and len(bits) and len(quality[measure])}


def _round(value: float, digits: int = 3) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def _curve(points: dict[tuple, tuple]) -> list[dict]:
    out = []
    for (codec, qp, model), (bits, seconds, quality, *_) in sorted(points.items(), key=lambda kv: (kv[0][2], kv[0][0],
                                                                                             kv[0][1])):
        timed = seconds > 0
        point = {"model": model, "codec": codec, "qp": qp, "frames": int(len(bits)),
                 "bits_per_frame": round(float(bits.mean()), 1) if len(bits) else None,
                 "kbit_s": round(float(bits[timed].sum() / seconds[timed].sum() / 1000), 2) if timed.any() else None}
        for measure in MEASURES:
            values = quality[measure]
            point[measure] = round(float(values.mean()), 5) if len(values) else None
            point[measure + "_n"] = int(len(values))
        out.append(point)
    return out


def from_predictions(lines: Iterable[dict], **options) -> dict[str, dict]:
    """The same curve and BD figures offline, from `monitor --predictions` lines (one dict each): every line's
    bytes, its reference pair's agreement and its label. No window (every line counts) unless one is given."""
    options.setdefault("window_s", math.inf)
    rd = LiveRD(**options)
    for line in lines:
        key = (line["stream"], line["model"], line["qp"], line["codec"])
        frame = (line["epoch"], line["seq"]) if "epoch" in line and "seq" in line else None
        rd.add_frame(*key, line["bytes"], None, 0.0, frame)
        if line.get("agreement"):
            rd.add_agreement(*key, line["agreement"], 0.0, frame)
        if line.get("label") is not None and line.get("top5"):
            rd.add_label(*key, line["top5"][0]["class"] == line["label"], 0.0, frame)
    return rd.summary(now=0.0, fresh=True)


def _pct(value: float) -> str:
    """A BD-rate bound in words: beyond +1000 % a fit says only that it is huge (a cubic through noisy points)."""
    return f"{value:+.1f}" if value <= 1000 else "> +1000"


def bd_words(entry: dict) -> str:
    """'top-1 agreement -12.3% [-20.1, -3.5] (PCHIP -11.9%, 4 points)' or why there is no figure."""
    what = MEASURE_WORDS.get(entry["measure"], entry["measure"])
    if entry.get("bd_rate") is None:
        return f"{what}: {entry.get('reason', 'undefined')}"
    ci = f" [{_pct(entry['ci95'][0])}, {_pct(entry['ci95'][1])}]" if entry.get("ci95") else ""
    pchip = f"PCHIP {entry['bd_rate_pchip']:+.1f}%, " if entry.get("bd_rate_pchip") is not None else ""
    flag = f"; {'; '.join(entry['notes'])}" if entry.get("notes") else ""
    return f"{what} {entry['bd_rate']:+.1f}%{ci} ({pchip}{entry['points']} points{flag})"


def report_lines(live: dict[str, dict]) -> list[str]:
    """Under the monitor's table: one 'live BD-rate' line per stream and model."""
    lines = []
    for sid, stream in live.items():
        by_model: dict[tuple, list[dict]] = {}
        for entry in stream["bd"]:
            by_model.setdefault((entry["codec"], entry["model"]), []).append(entry)
        window = "every frame" if math.isinf(stream["window_s"]) else f"the last {stream['window_s']:g} s"
        for (codec, model), entries in by_model.items():
            lines.append(f"live BD-rate {sid[:14]} {model} vs {stream['anchor']} ({codec}, {window}; 95% CI: "
                         f"bootstrap over GOPs): " + "; ".join(bd_words(e) for e in entries))
    return lines
