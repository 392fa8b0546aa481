"""The edge loop: source -> pre-transform engine -> encoder -> ZeroMQ, as four overlapping stages.

Each stage is a thread joined to the next by a bounded queue; the heavy work in every stage (OpenCV,
ONNX Runtime / TensorRT, libx265, ZeroMQ) releases the GIL, so the loop runs at the rate of its
slowest stage rather than the sum. Drop policy: a live source drops frames *before* inference when
the pipeline is full (counted by cause); after encoding only as the last resort below, since a
P-frame needs every frame before it. Files and folders are replayed losslessly: their reader waits.

Network backpressure: when a subscriber's queue is full the sender waits up to `send_stall_s`
(live sources; files wait as long as it takes) while the queues behind it fill and the reader drops
before inference. If the network is still stuck, that encoded frame is dropped, an IDR is forced,
and every frame that depends on the dropped one is dropped too (counted by cause), so no P-frame
ever goes out after a missing reference. Keyframe requests (from monitors over the back channel, or
after such a drop) are coalesced and forced at most every `keyframe_min_interval_s`.

Stream clock: every frame goes out with its time on the stream's own clock (wire version 3), so a
monitor measures kbit/s per second of *video*, not per second of processing: a video file's
timestamps; for folders and still images frame index / rate, the rate being --fps or
frames.DEFAULT_FPS; for a live camera the capture clock. Each frame also carries the stream time
since the previous frame sent, so frames dropped on the way count as time, not as bits.

Threads: each stage's library gets the thread count of one budget (`--threads`, edge/threads.py), so the
stages' own pools do not fight for the cores: the source's decoder and OpenCV's pool, the engine's intra-op
threads, x265's workers. `budget` is what was applied.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.options import flag
from edgepipe.edge.engine_runs import OrderedRuns
from edgepipe.edge.ladder import Ladder, load_engines, make_ladder
from edgepipe.edge.references import REFERENCE_CODEC, REFERENCE_QUALITY, REFERENCE_VIEWS, ReferencePolicy
from edgepipe.edge.stats import CaptureStats
from edgepipe.edge.threads import THREADS_HELP, ThreadBudget, capture_budget, runs_concurrently
from edgepipe.engines import Engine, describe_specs, load_engine
from edgepipe.media.codecs import CODECS, HEVC_ENCODERS, STREAM_CODECS, X265_PRESETS, StreamEncoder
from edgepipe.media.frames import DEFAULT_FPS, Frame, ReadStatus
from edgepipe.media.sources import Source, open_source, parse_size, set_opencv_threads
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.sockets import Publisher

log = logging.getLogger(__name__)
JOIN_SLICE_S = 0.2  # the main thread waits for the stages in slices, so it runs signal handlers

FINITE_SOURCE_WAIT_S = 10.0  # how long a file or folder waits for the first monitor by default

_END = object()  # travels down the queues once the source ends or a stop is asked for


def _setting_help() -> str:
    """What --qp means for each stream codec, as the codecs register it."""
    settings = ((name, CODECS[name].setting) for name in STREAM_CODECS)
    return "; ".join(f"{name} {s.meaning} ({s.low}-{s.high})" for name, s in settings)


def setting(default: Any, *name: str, **spec: Any) -> Any:
    """A field with a default that is also a `capture` flag (core/options.py)."""
    return field(default=default, metadata=flag(*name, **spec))


@dataclass
class CaptureSettings:
    """What the capture loop is asked to do: one field per setting. The fields with a flag are the options of
    `edgepipe capture` (commands/capture.py makes them from here, help text included); the others are tuning
    without a flag. The command checks its flags before it builds this (endpoints, codec ranges, stream id)."""

    source: str = field(metadata=flag(help="/dev/video0 or an index, rtsp://..., a video file, or folder:PATH."))
    publish: str = field(metadata=flag(help="ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:5555; or to dial out to a "
                                            "relay, pub+connect:tcp://relay:5555 (docs/relay.md)."))
    engine: str = setting("none", help=f"Pre-transform: {describe_specs()}.")
    codec: str = setting("hevc", choices=STREAM_CODECS, help="hevc: a video stream (a GOP, keyframes on request); "
                                                            "the others code each frame as a still image.")
    # HEVC QP; for jpeg the quality, for jpeg2000 the compression x1000 (the wire carries it whole: version 5)
    qp: int | None = setting(32, help=f"The codec's one setting: {_setting_help()}.")
    crf: float | None = setting(None, help="HEVC constant rate factor (0-51) instead of a fixed QP.")
    gop: int = setting(30, min=0, help="Frames per keyframe; 0 = intra-only.")
    preset: str = setting("ultrafast", choices=X265_PRESETS,
                          help="libx265 preset (hevc_nvenc always runs its low-latency p1).")
    # the command resolves "auto" (an NVIDIA encoder where one opens) before the loop sees it
    encoder: str = setting("libx265", choices=(*HEVC_ENCODERS, "auto"),
                           help="auto: hevc_nvenc where an NVIDIA encoder opens, else libx265.")
    frames: int | None = setting(None, min=1, help="Stop after N frames.")
    # (width, height); the flag's WIDTHxHEIGHT is parsed here (media/sources.parse_size)
    size: tuple[int, int] | None = setting(None, type=str, help="Resize frames to WIDTHxHEIGHT (made even; each "
                                                                "side 16-8192).")
    crop: bool = setting(False, help="Centre-crop to the --size aspect before resizing.")
    realtime: bool = setting(False, help="Pace files and folders at the source's frame rate (or --fps).")
    # rate of sources without one (folders, images): clock and pacing; None: DEFAULT_FPS
    fps: float | None = setting(None, min=0, min_open=True,
                                help="Frame rate of sources without timestamps (folders, still images): the stream "
                                     "clock that kbit/s is measured on, and the --realtime pace [default: 25]. Video "
                                     "files use their own timestamps, cameras the capture clock.")
    loop: bool = setting(False, help="Replay a file or folder forever.")
    stream_id: str | None = setting(None, help="Name of this camera in the stream header [default: "
                                               "cam-<hostname>].")  # None: default_stream_id(), unique per host
    queue_size: int = 4
    # None: a finite source (a file or folder without --loop) waits up to FINITE_SOURCE_WAIT_S for
    # the first monitor, so its frames do not go out to nobody; a live or looping source never waits.
    # 0: never wait (then frames sent with nobody subscribed are counted: frames_unsubscribed).
    wait_subscriber_s: float | None = setting(None, "--wait-subscriber", min=0,
                                              help="Wait up to S seconds for a monitor to join before sending; 0 = "
                                                   "do not wait [default: 10 for files and folders without --loop, "
                                                   "0 for live sources].")
    send_stall_s: float = 0.5  # live sources: longest wait on a full subscriber before dropping
    keyframe_min_interval_s: float = 0.5  # forced IDRs at most this often, however many requests come
    # every Nth frame's source image also goes out as a reference (edge/references.py)
    reference_every: int = setting(0, min=0, metavar="N",
                                   help="Send every Nth source frame (before the pre-transform) again as a JPEG q95 "
                                        "reference, so a monitor measures its recognizer's agreement without labels; "
                                        "counted apart from the stream's bytes; 0 = off.")
    # skip references that would take their rate over this
    reference_budget_kbit: float | None = setting(None, "--reference-budget", min=0, min_open=True, metavar="KBITS",
                                                  help="Skip a reference when the references' running kbit/s (stream "
                                                       "clock) would exceed KBITS.")
    # references cost at most this share of the stream's bytes (edge/references.py)
    reference_share: float = setting(0.05, min=0, max=1, metavar="FRACTION",
                                     help="Skip a reference when the references' bytes would pass this share of "
                                          "the stream's bytes so far; 0 = no cap.")
    # what a reference shows: the recognizer's default view (the centre square at 224), or the whole frame
    reference_view: str = setting("centre-crop", choices=REFERENCE_VIEWS,
                                  help="What a reference shows: the centre square at 224, as the monitor's "
                                       "recognizer sees a frame by default (a fraction of a large frame's bytes), "
                                       "or the whole frame (native: for a monitor with --recognizer-view native "
                                       "or tiles).")
    threads: str = setting("auto", metavar="POLICY", help=THREADS_HELP)  # the budget per stage (edge/threads.py)
    # the operating-point ladder (edge/ladder.py): settings x engines, one point per GOP in turn
    ladder: str | None = setting(None, metavar="CODEC:Q1,Q2,...",
                                 help="Cycle the codec's setting per GOP (for still codecs per --gop frames), e.g. "
                                      "hevc:27,32,37,42, so a monitor draws this scene's rate-accuracy curve; each "
                                      "GOP starts with an IDR at its setting. Sets --codec (or must match it).")
    ab: str | None = setting(None, metavar="ENGINE,ENGINE",
                             help="Cycle these pre-transforms too (e.g. none,ours; each loaded once at start): "
                                  "every (setting, engine) pair takes a GOP in turn, in a fixed order, and each "
                                  "frame carries the engine that made it. Replaces --engine.")
    # the closed loop (issue 14 item 4): monitors may move the HEVC QP within MIN:MAX over the control socket
    allow_remote_qp: str | None = setting(None, metavar="MIN:MAX",
                                          help="Obey QP requests from monitors on --control (monitor "
                                               "--target-agreement), within MIN:MAX, e.g. 22:42: the new QP takes "
                                               "effect at the next GOP, each change logged and counted. HEVC at a "
                                               "fixed --qp only. Without it every QP request is refused and "
                                               "counted.")
    allow_remote_engine: str | None = setting(None, metavar="ENGINE,ENGINE",
                                              help="Obey pre-transform requests from monitors on --control, among "
                                                   "these (each loaded once at start; --engine is the first run), "
                                                   "e.g. none,ours: the new one takes effect at the next GOP, with "
                                                   "an IDR, each change logged and counted. Without it every "
                                                   "engine request is refused and counted.")

    def __post_init__(self) -> None:
        if isinstance(self.size, str):  # the flag's WIDTHxHEIGHT
            self.size = parse_size(self.size)
        if not self.stream_id:
            self.stream_id = default_stream_id()


def stream_clock(source: Source, fps: float | None) -> tuple[float, str]:
    """(nominal frames/s, clock name of transport.CLOCKS) of a source: a video's own timestamps, a
    live camera's capture clock, else --fps or DEFAULT_FPS (folders, still images)."""
    if getattr(source, "timestamps", False):
        return source.fps or fps or DEFAULT_FPS, "timestamps"
    if source.live:
        return source.fps or fps or DEFAULT_FPS, "live"
    return (fps, "fps") if fps else (DEFAULT_FPS, "default-fps")


def budget_engine(settings: CaptureSettings, ladder: Ladder | None) -> str:
    """The engine the thread budget plans for: with a ladder or remote engines its heaviest kind of engine (one
    that is not `none`), since the engines take turns on the same cores."""
    engines = budget_engines(settings, ladder)
    return next((e for e in engines if e != "none"), engines[0])


def remote_engine_specs(settings: CaptureSettings) -> tuple[str, ...] | None:
    """--allow-remote-engine as a tuple of specs, or None; one line when it does not go with the other settings."""
    if not settings.allow_remote_engine:
        return None
    specs = tuple(part.strip() for part in settings.allow_remote_engine.split(","))
    if any(not spec for spec in specs):
        raise EdgepipeError(f"--allow-remote-engine {settings.allow_remote_engine!r}: an empty item; "
                            "give engines separated by commas, e.g. none,ours")
    if len(set(specs)) != len(specs):
        raise EdgepipeError(f"--allow-remote-engine {settings.allow_remote_engine!r}: an engine is given twice")
    if settings.engine not in specs:
        raise EdgepipeError(f"--engine {settings.engine} is not in --allow-remote-engine "
                            f"{settings.allow_remote_engine}: the engine the capture starts with must be one of them")
    if settings.ladder or settings.ab:
        raise EdgepipeError("--allow-remote-engine and --ladder/--ab are exclusive: the ladder sets the engine of "
                            "each GOP")
    return specs


def budget_engines(settings: CaptureSettings, ladder: Ladder | None) -> list[str]:
    """Every engine the capture loads: the ladder's, those a monitor may switch to, else --engine."""
    if ladder is not None:
        return list(ladder.engines)
    return list(remote_engine_specs(settings) or (settings.engine,))


def loop_budget(settings: CaptureSettings, ladder: Ladder | None) -> ThreadBudget:
    """The loop's thread budget (edge/threads.py), for the heaviest engine it loads."""
    return capture_budget(settings.threads, budget_engine(settings, ladder), settings.codec, settings.encoder,
                          settings.source)


def default_stream_id() -> str:
    """`cam-<hostname>`: two cameras left on the default never merge into one stream at a monitor."""
    import socket

    host = socket.gethostname().split(".")[0] or "localhost"
    return f"cam-{host}"[:64]


def remote_qp_range(settings: CaptureSettings) -> tuple[int, int] | None:
    """--allow-remote-qp MIN:MAX as (MIN, MAX), or None; one line when it does not go with the other settings."""
    if not settings.allow_remote_qp:
        return None
    from edgepipe.transport.control import parse_qp_range

    try:
        low, high = parse_qp_range(settings.allow_remote_qp, "--allow-remote-qp")
    except ValueError as exc:
        raise EdgepipeError(str(exc)) from None
    if settings.codec != "hevc":
        raise EdgepipeError(f"--allow-remote-qp moves the HEVC QP; --codec is {settings.codec}")
    if settings.crf is not None:
        raise EdgepipeError("--allow-remote-qp and --crf are exclusive: a monitor moves a fixed QP")
    if settings.ladder or settings.ab:
        raise EdgepipeError("--allow-remote-qp and --ladder/--ab are exclusive: the ladder sets the QP of each GOP")
    return low, high


class CaptureLoop:
    def __init__(self, settings: CaptureSettings, source: Source | None = None,
                 engine: Engine | dict[str, Engine] | None = None, publisher: Publisher | None = None):
        """`engine`: the loaded pre-transform, or with a ladder its engines by spec (None: loaded here)."""
        self.settings = settings
        self.stats = CaptureStats()
        self.references = ReferencePolicy(settings.reference_every, settings.reference_budget_kbit,
                                          settings.reference_view, settings.reference_share)
        self.stats.references_on = self.references.enabled
        # Open everything before any thread starts, so bad input fails here with one clear line.
        self.ladder: Ladder | None = make_ladder(settings.ladder, settings.ab, settings.codec, settings.qp,
                                                 settings.crf, settings.engine, settings.gop)
        self.budget = loop_budget(settings, self.ladder)
        self.source = source or open_source(settings.source, settings.size, settings.crop, settings.loop,
                                            threads=self.budget.source)
        self.remote_engines = remote_engine_specs(settings)
        specs = budget_engines(settings, self.ladder)
        if isinstance(engine, dict):
            self.engines = engine
        elif len(specs) == 1:
            self.engines = {specs[0]: engine or load_engine(specs[0], self.budget.engine_threads())}
        else:
            self.engines = load_engines(specs, self.budget.engine_threads())
        missing = [e for e in specs if e not in self.engines]
        if missing:
            raise EdgepipeError(f"the engine {missing[0]!r} was not loaded")
        # which engines may run frames side by side (asked of their kind, as the budget does); the others run alone
        self._concurrent = {spec: runs_concurrently(spec) for spec in self.engines}
        if self.ladder is not None:
            self.stats.ladder_points = [(p.quality, p.engine, self.engines[p.engine].model_id)
                                        for p in self.ladder.points]
        self.operating_point = None  # with a ladder, the point being coded now (its setting and engine)
        # the closed loop: the QP range monitors may ask for (None: refused), the QP asked for and not yet applied,
        # and the QP being coded now (changed by the encoder stage at a GOP boundary)
        self.remote_qp = remote_qp_range(settings)
        self._qp_wanted: int | None = None
        self.qp_now = settings.qp
        self.stats.remote_qp = self.remote_qp
        self.stats.qp_now = settings.qp
        # the engine running now (without a ladder; a monitor may change it at a GOP boundary), and one asked for
        self.engine_spec = settings.engine if self.ladder is None else self.ladder.engines[0]
        self._engine_wanted: str | None = None
        self.stats.remote_engines = self.remote_engines
        self.stats.engine_now = self.engine_spec if self.remote_engines is not None else None
        self._own_publisher = publisher is None
        self.publisher = publisher or Publisher(settings.publish)
        self.epoch = int(time.time() * 1000) & 0xFFFFFFFF  # a restart starts a new accounting period
        self._keyframe_wanted = threading.Event()
        self._abort = threading.Event()  # set on errors: every stage stops at once
        self._stop: threading.Event = threading.Event()
        self.errors: list[BaseException] = []
        self.queues: dict[str, queue.Queue] = {}  # name -> queue, for metrics (queue depths)
        self.frames_handled = 0  # frames out of the encoder, sent or dropped: the watchdog's "frames flow"
        self.forced_keyframes = 0
        self.rate, self.clock = stream_clock(self.source, settings.fps)
        self._threads: list[threading.Thread] = []  # the stage threads of run(), joined by close()
        # OpenCV's pool is process-wide: set for the loop's life, put back by close()
        self._opencv_before = set_opencv_threads(self.budget.opencv)

    @property
    def engine(self) -> Engine:
        """The engine running now (with a ladder: the first point's until the ladder moves)."""
        return self.engines[self.engine_spec]

    def request_keyframe(self) -> None:
        """Thread-safe: the next encoded frame will be an IDR frame (e.g. after loss at the monitor)."""
        self.stats.keyframe_requests += 1
        self._keyframe_wanted.set()

    def request_qp(self, qp: int) -> None:
        """Thread-safe: code at `qp` from the next GOP boundary (a monitor's request, already range-checked by the
        control server; checked again here)."""
        if self.remote_qp is None or not self.remote_qp[0] <= qp <= self.remote_qp[1]:
            self.stats.qp_refused("not_allowed" if self.remote_qp is None else "out_of_range")
            return
        self.stats.qp_request()
        self._qp_wanted = qp

    def request_engine(self, spec: str) -> None:
        """Thread-safe: run the pre-transform `spec` from the next GOP boundary (a monitor's request, already checked
        by the control server against --allow-remote-engine; checked again here)."""
        if self.remote_engines is None or spec not in self.remote_engines:
            self.stats.engine_refused("not_allowed" if self.remote_engines is None else "unknown")
            return
        self.stats.engine_request()
        self._engine_wanted = spec

    def _cancelled(self) -> bool:
        return self._stop.is_set() or self._abort.is_set()

    # --- stages ---------------------------------------------------------------------------------

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._abort.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self._abort.is_set():
                    return _END

    def _read(self, stop: threading.Event, out: queue.Queue) -> None:
        s, src = self.settings, self.source
        interval = 1.0 / self.rate if s.realtime and not src.live else 0.0
        next_due = time.monotonic()
        produced = 0
        live_start: float | None = None
        while not stop.is_set() and not self._abort.is_set():
            if s.frames is not None and produced >= s.frames:
                break
            t0 = time.perf_counter()
            status, frame = src.read()
            if status is ReadStatus.EOS:
                break
            if status is ReadStatus.TIMEOUT:
                continue
            self.stats.timed("source", time.perf_counter() - t0)
            produced += 1
            if frame.media_time is None:  # the source has no clock of its own: the stream clock is derived
                if src.live:
                    live_start = frame.capture_time if live_start is None else live_start
                    frame.media_time = max(0.0, frame.capture_time - live_start)
                else:
                    frame.media_time = frame.index / self.rate
            if src.live:
                try:
                    out.put_nowait(frame)
                except queue.Full:
                    self.stats.drop("pipeline_full_before_inference")
            elif not self._put(out, frame):
                return
            if interval:
                next_due += interval
                time.sleep(max(0.0, next_due - time.monotonic()))
        self._put(out, _END)

    def _infer(self, inp: queue.Queue, out: queue.Queue) -> None:
        runs = OrderedRuns(self.budget.engine_frames)  # frames side by side where the engine allows, in order
        try:
            self._infer_frames(inp, out, runs)
        finally:
            runs.close()  # after the runs in flight: close() must not close an engine under one

    def _run_engine(self, engine: Engine, image: np.ndarray, share: int) -> np.ndarray:
        t0 = time.perf_counter()
        result = engine.run(image[np.newaxis])[0]
        # runs overlap: each counts 1/share of its time, so the stage's busy time stays wall time when it is full
        self.stats.timed("engine", (time.perf_counter() - t0) / share)
        return result

    def _infer_frames(self, inp: queue.Queue, out: queue.Queue, runs: OrderedRuns) -> None:
        n = 0  # frames through this stage: with a ladder, block n // GOP takes the next operating point
        ladder = self.ladder
        gop = max(1, self.settings.gop)
        while (frame := self._get(inp)) is not _END:
            point = ladder.index(n) if ladder is not None else None
            wanted = self._engine_wanted
            if wanted is not None and point is None and n % gop == 0:
                self._engine_wanted = None  # a later request (set while this runs) waits for the next boundary
                if wanted != self.engine_spec:
                    self._engine_changed(self.engine_spec, wanted)
                    self.engine_spec = wanted
            n += 1
            spec = self.engine_spec if point is None else ladder.points[point].engine
            self.references.keep(frame)  # the answer we want to keep: before the pre-transform
            concurrent = self._concurrent[spec]
            done = runs.submit(partial(self._run_engine, self.engines[spec], frame.image,
                                       runs.at_once if concurrent else 1), (frame, point, spec), alone=not concurrent)
            if not self._hand_on(done, out):
                return
        if self._hand_on(runs.drain(), out):
            self._put(out, _END)

    def _hand_on(self, done: list, out: queue.Queue) -> bool:
        for (frame, point, spec), image in done:
            frame.image = image
            if not self._put(out, (frame, point, spec)):
                return False
        return True

    def _encode(self, inp: queue.Queue, out: queue.Queue) -> None:
        s = self.settings
        codec = CODECS[s.codec]
        encoder: StreamEncoder | None = None
        # frames whose packets have not come out yet (none with zerolatency), with their operating points, QPs and
        # engines
        pending: list[tuple[Frame, int | None, int | None, str]] = []
        last_forced = float("-inf")
        current: int | None = None  # the ladder's operating point being coded
        engine_coded: str | None = None  # the engine of the frames being coded (a change starts a GOP)
        opened = 0  # frames into the current encoder: a GOP boundary where opened % gop == 0
        while (item := self._get(inp)) is not _END:
            frame, point, spec = item
            t0 = time.perf_counter()
            h, w = frame.image.shape[:2]
            switched = reopen = point is not None and point != current
            if point is None and engine_coded is not None and spec != engine_coded:
                reopen = encoder is not None  # a monitor changed the engine: its first frame is an IDR
            engine_coded = spec
            wanted = self._qp_wanted
            if wanted is not None and point is None and (s.gop <= 1 or opened % s.gop == 0):
                self._qp_wanted = None  # a later request (set while this runs) waits for the next boundary
                if wanted != self.qp_now:
                    self._qp_changed(self.qp_now, wanted)
                    self.qp_now = wanted
                    reopen = encoder is not None  # the new QP from an IDR: the encoder re-opens, as for a ladder
            quality = self.qp_now if point is None else self.ladder.points[point].quality
            items: list = []
            if switched:
                if current is not None:
                    self._switched(point)
                current = point
                self.operating_point = self.ladder.points[point]
            if codec.stream_encoder is not None:  # a video codec: inter coding, a GOP, keyframes on request
                if encoder is None or (encoder.width, encoder.height) != (w, h) or reopen:
                    if encoder is not None and reopen:  # the old point's last packets, then an IDR at the new
                        items += [(*pending.pop(0), p.data, p.keyframe) for p in encoder.flush() if pending]
                    encoder = codec.stream_encoder(w, h, qp=quality if s.crf is None else None, crf=s.crf,
                                                   gop=s.gop, preset=s.preset, encoder=s.encoder, fps=self.rate,
                                                   pool_threads=self.budget.encoder)
                    opened = 0
                force = self._keyframe_wanted.is_set() and t0 - last_forced >= s.keyframe_min_interval_s
                if force:
                    self._keyframe_wanted.clear()
                    last_forced = t0
                    self.forced_keyframes += 1
                pending.append((frame, point, quality, spec))
                opened += 1
                packets = encoder.encode(frame.image, force_keyframe=force)
                if any(p.keyframe for p in packets):
                    self._keyframe_wanted.clear()  # a GOP keyframe answers any request as well
                items += [(*pending.pop(0), p.data, p.keyframe) for p in packets]
            else:
                items = [(frame, point, quality, spec, codec.encode(frame.image, quality, None), True)]  # a still
            self.stats.timed("encoder", time.perf_counter() - t0)
            for item in items:
                if not self._put(out, item):
                    return
        if encoder is not None:  # flush: frames still inside the encoder go out before the end
            for p in encoder.flush():
                if pending:
                    self._put(out, (*pending.pop(0), p.data, p.keyframe))
        self._put(out, _END)

    def _qp_changed(self, old: int | None, new: int) -> None:
        """A monitor's QP request applied at a GOP boundary: counted and logged."""
        n = self.stats.qp_change(new)
        log.info("remote QP: change %d, QP %s -> %d at the next GOP (asked by a monitor)", n, old, new)

    def _engine_changed(self, old: str, new: str) -> None:
        """A monitor's engine request applied at a GOP boundary: counted and logged."""
        n = self.stats.engine_change(new)
        log.info("remote engine: change %d, %s -> %s at the next GOP (asked by a monitor)", n, old, new)

    def _switched(self, point: int) -> None:
        """The ladder moved to `point` at a GOP boundary: counted and logged."""
        p = self.ladder.points[point]
        n = self.stats.ladder_switch()
        log.info("ladder: switch %d to %s %s %d, engine %s", n, self.ladder.codec,
                 CODECS[self.ladder.codec].setting.meaning, p.quality, p.engine)

    def _send(self, inp: queue.Queue) -> None:
        s = self.settings
        seq = 0
        # the codec's own setting, whole: wire version 5's field holds every codec's (versions before it, an
        # i8, made a JPEG 2000 rate x1000 of 200 read 127)
        qp = -1 if s.crf is not None else int(s.qp if s.qp is not None else -1)
        # live: bounded wait on a full subscriber; files and folders: lossless, wait until stopped
        timeout = s.send_stall_s if self.source.live else None
        inter_coded = CODECS[s.codec].stream_encoder is not None and s.gop != 0
        broken = False  # an encoded frame was dropped: frames referring to it must not go out
        cancel = _Cancel(self._cancelled)
        size = (1, 1)
        last_sent: float | None = None  # media time of the previous frame sent
        while (item := self._get(inp)) is not _END:
            frame, point, quality, spec, payload, keyframe = item
            t0 = time.perf_counter()
            h, w = size = frame.image.shape[:2]
            media = frame.media_time  # set by _read for every frame (the source's clock or a derived one)
            # stream time since the previous frame sent: frames dropped on the way count as time
            duration = 1.0 / self.rate if last_sent is None else max(0.0, media - last_sent)
            # the setting this frame was coded at (the ladder's point, or a QP a monitor moved), and the engine
            # that really made it
            frame_qp = -1 if s.crf is not None else int(quality)
            model_id = self.engines[spec].model_id
            header = FrameHeader(s.stream_id, seq, frame.capture_time, s.codec, w, h, frame_qp, keyframe,
                                 frame.label, model_id, self.epoch, media_time=media,
                                 duration=duration, clock=self.clock)
            seq += 1  # dropped frames keep their seq: the monitor counts them as lost, exactly
            self.frames_handled += 1
            unsubscribed = self.publisher.unsubscribed
            source_image = self.references.take(frame)
            doomed = broken and not keyframe  # refers to a dropped frame: it will not go out
            still = None if doomed else self._reference_still(header, source_image, duration, len(payload))
            header.has_reference = still is not None
            if doomed:
                self.stats.drop("reference_dropped_after_encode")
            elif self.publisher.send(header, payload, timeout=timeout, cancel=cancel):
                broken = False
                last_sent = media
                self.stats.sent(len(payload), keyframe, unsubscribed=self.publisher.unsubscribed > unsubscribed,
                                stream_s=duration, latency_s=time.time() - frame.capture_time, point=point)
                if still is not None:  # right after its coded frame: a monitor pairs them in order
                    self._send_reference(header, *still, timeout, cancel)
            else:
                self.stats.drop("network_hwm_after_encode")
                if still is not None:  # its reference goes with it, counted
                    self.stats.reference_skipped("frame_dropped")
                if inter_coded:
                    broken = True
                    self._keyframe_wanted.set()  # resume with an IDR as soon as the network lets us
            self.publisher.poll_subscriptions()
            self.stats.timed("send", time.perf_counter() - t0)
        # the end of this epoch: `seq` frames were numbered, so a monitor counts a lost tail exactly
        end = FrameHeader(s.stream_id, seq, time.time(), s.codec, size[1], size[0], qp, False, -1,
                          self.engine.model_id, self.epoch)
        self.stats.end_of_stream = "sent" if self.publisher.send_end(end) else "unsent"
        if self.stats.end_of_stream == "unsent":
            log.warning("could not send the end-of-stream message within the linger (a stuck monitor): "
                        "frames still queued for it may not arrive, and it cannot count them")

    def _reference_still(self, header: FrameHeader, image: np.ndarray | None, duration: float,
                         coded_bytes: int) -> tuple[bytes, tuple[int, int]] | None:
        """The JPEG of the reference's view of the source frame, and its (height, width), when this seq is due a
        reference and its share and budget allow it, else None."""
        if image is None or not self.references.due(header.seq):
            return None
        refs = self.references
        stream_bytes, stream_s = self.stats.bytes_sent + coded_bytes, self.stats.stream_s + duration

        def cause(nbytes: int) -> str | None:
            if refs.over_share(self.stats.reference_bytes, nbytes, stream_bytes):
                return "over_share"
            if refs.over_budget(self.stats.reference_bytes, nbytes, stream_s):
                return "over_budget"
            return None

        # judged first at the previous reference's size, so the many skips of a tight cap cost no crop and encode
        # (with --reference-every 1 and the default 5 % share, most due references are skipped)
        why = cause(refs.last_bytes)
        if why is None:
            picture = refs.picture(image)
            still = refs.encode(picture)
            refs.last_bytes = len(still)
            why = cause(len(still))
        if why is not None:
            self.stats.reference_skipped(why)
            return None
        return still, picture.shape[:2]

    def _send_reference(self, coded: FrameHeader, still: bytes, size: tuple[int, int], timeout, cancel) -> None:
        h, w = size
        header = FrameHeader(coded.stream_id, coded.seq, coded.capture_time, REFERENCE_CODEC, w, h,
                             REFERENCE_QUALITY, True, coded.label, coded.model_id, coded.epoch,
                             media_time=coded.media_time, duration=0.0, clock=coded.clock, reference=True)
        if self.publisher.send(header, still, timeout=timeout, cancel=cancel):
            self.stats.reference_sent(len(still))
        else:
            self.stats.reference_skipped("network_hwm")

    # --- driver ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> CaptureStats:
        """Run until the source ends, `frames` are done, or `stop` is set; then drain and flush."""
        stop = stop or threading.Event()
        self._stop = stop
        wait = self.settings.wait_subscriber_s
        if wait is None:
            wait = 0.0 if (self.source.live or self.settings.loop) else FINITE_SOURCE_WAIT_S
        if wait > 0 and not self._wait_for_subscriber(wait, stop):
            log.warning("no monitor subscribed within %.1f s; sending anyway (frames nobody gets are counted as "
                        "frames_unsubscribed)", wait)
        n = self.settings.queue_size
        q_infer, q_encode, q_send = queue.Queue(n), queue.Queue(n), queue.Queue(n)
        self.queues = {"inference": q_infer, "encode": q_encode, "send": q_send}
        stages = [
            ("reader", self._read, (stop, q_infer)),
            ("engine", self._infer, (q_infer, q_encode)),
            ("encoder", self._encode, (q_encode, q_send)),
            ("sender", self._send, (q_send,)),
        ]
        threads = [threading.Thread(target=self._guard, args=(fn, args), name=f"edgepipe-{name}", daemon=True)
                   for name, fn, args in stages]
        self.stats.started = time.monotonic()
        self._threads = threads
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    # in slices: a signal the kernel hands to another thread (an ORT or x265 worker) must not wait
                    # for a stage to end before the main thread runs its handler (a --loop capture never ended)
                    t.join(JOIN_SLICE_S)
        except KeyboardInterrupt:  # a second stop request while draining: stop now, but cleanly
            log.warning("stopping now: frames still in the pipeline are dropped (counted as aborted_at_stop)")
            self._abort.set()
            stop.set()
            self._join()
        self._count_in_flight()
        if self.errors:
            raise self.errors[0]
        return self.stats

    def _wait_for_subscriber(self, seconds: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            if self.publisher.wait_for_subscriber(min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False
        return False

    def _join(self) -> None:
        """Wait for every stage thread, whatever further stop requests come: the engine and the
        encoder must not be closed under a running thread (ONNX Runtime aborts the process)."""
        for t in self._threads:
            while t.is_alive():
                try:
                    t.join(JOIN_SLICE_S)
                except KeyboardInterrupt:
                    self._abort.set()
                    log.warning("already stopping")

    def _count_in_flight(self) -> None:
        """Frames read but neither sent nor dropped (an abort left them in a queue or a stage)."""
        with self.stats._lock:
            produced = self.stats.stages["source"].count if "source" in self.stats.stages else 0
            accounted = self.stats.frames_sent + sum(self.stats.drops.values())
        if produced > accounted:
            self.stats.drop("aborted_at_stop", produced - accounted)

    def _guard(self, fn, args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # a failing stage stops the whole loop, and run() re-raises it
            log.error("capture stage %s failed: %s", threading.current_thread().name, exc)
            self.errors.append(exc)
            self._abort.set()

    def close(self) -> None:
        """After run(): the stage threads are gone before the source and the engine close."""
        self._abort.set()
        self._join()
        self.references.clear()
        self.source.close()
        for engine in self.engines.values():
            engine.close()
        if self._own_publisher:
            self.publisher.close()
        set_opencv_threads(self._opencv_before)


class _Cancel:
    """Event-like view of "stop or abort" for Publisher.send."""

    def __init__(self, fn):
        self.is_set = fn
