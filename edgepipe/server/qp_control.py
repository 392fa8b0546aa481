"""The closed loop (issue 14 item 4): from the agreement of reference pairs, ask the capture for the coarsest HEVC QP
that holds an agreement floor. Pure and clock-injected: the monitor feeds it pairs and ticks, it answers with the
QP to ask for (or None), and the service sends that over the control channel (transport/control.py, verb `qp`).

Rules, per stream:
- Judge only pairs coded at the QP the capture is coding now (the pair's own QP, from its header), and only once
  `min_pairs` of them came since the last change, over at least `min_seconds` of the stream (a count alone means
  2 s of a stream that references every frame, and the scene changes slower than that). The measure is the mean of every pair at that QP over the last
  `memory_s` seconds, all the loop's stays there counted (at most `window` pairs per QP): the measure follows the
  scene as much as the QP, and a window of the last few dozen pairs chased each dip of the scene down to the
  finest QPs (measured on the camera clips: 3.5-4.9 times the bits of the best fixed QP, docs/results).
- Above `target + band`: one `step` coarser (fewer bits). Below `target`: one `step` finer. Between: hold (the
  dead band). Never beyond [low, high].
- Time-sharing (`share`, the default): the best fixed QP holds the floor with a surplus, the next coarser one
  fails it, and a mix of the two can sit on the floor for fewer bits than the finer alone. So the loop also keeps
  the stream's mean over every pair of the last `memory_s` (whatever its QP, what the stream gave) and, looking one
  stay ahead (the mean at the next judgement if the next `min_seconds` of pairs measure what that QP remembers),
  moves to the failing coarser neighbour while that mean stays above the floor + band, and stays there while the
  finer neighbour holds and that mean stays at or over the floor (measured on the camera clips with
  bench/closed_loop_sim.py: docs/results).
- At most one change per `min_interval_s`; after a request, pairs of any other QP are in flight and ignored until
  the capture's frames come at the QP asked for (or, after `answer_timeout_s`, the request counts as unanswered
  and the capture's QP as it is).
- The coarser QP is not asked for while its own memory (at least `min_pairs` pairs in the last `memory_s`) is below
  the floor, unless time-sharing pays for it: evidence, not a timer, stops the swing between two QPs whose
  agreement straddles the band; once that memory has aged out the QP may be tried again.
- Silence: `silence_s` without a pair (from the first pair on) asks for `safe` (the finest, `low`, by default) once
  per silence; pairs resume the loop where the capture is.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import MISSING, dataclass, field, fields

log = logging.getLogger(__name__)

MEASURES = ("top5_overlap", "top1_agreement")
DEFAULT_MEASURE = "top5_overlap"


@dataclass(frozen=True)
class LoopSettings:
    target: float
    measure: str = DEFAULT_MEASURE
    band: float = 0.01
    low: int = 22
    high: int = 42
    step: int = 2
    min_pairs: int = 20
    min_seconds: float = 10.0
    window: int = 4096  # pairs remembered per QP, at most
    memory_s: float = 240.0
    min_interval_s: float = 5.0
    silence_s: float = 30.0
    safe: int | None = None  # None: low, the finest
    answer_timeout_s: float = 30.0
    share: bool = True  # time-share the two QPs that bracket the floor, on the stream's mean over memory_s

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"unknown measure {self.measure!r}: one of {', '.join(MEASURES)}")
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"the target agreement is a share, 0 to 1: got {self.target}")
        if not 0.0 <= self.band < 1.0:
            raise ValueError(f"the dead band is a share, 0 to 1: got {self.band}")
        if not 0 <= self.low <= self.high <= 51:
            raise ValueError(f"the QP range {self.low}:{self.high} is not within 0:51 (low first)")
        if self.step < 1 or self.min_pairs < 1 or self.window < self.min_pairs:
            raise ValueError("step and min_pairs must be at least 1, and the window at least min_pairs")
        if self.min_seconds < 0:
            raise ValueError(f"the seconds before a QP is judged cannot be negative: got {self.min_seconds}")
        if not self.memory_s > 0:
            raise ValueError(f"the memory is a positive number of seconds: got {self.memory_s}")
        if self.safe is not None and not self.low <= self.safe <= self.high:
            raise ValueError(f"the safe QP {self.safe} is outside {self.low}:{self.high}")

    @property
    def safe_qp(self) -> int:
        return self.low if self.safe is None else self.safe


# the defaults by field name: the monitor's flags and the bench scripts start from these, not from copies
LOOP_DEFAULTS = {f.name: f.default for f in fields(LoopSettings) if f.default is not MISSING}


class _Memory:
    """The pairs of one QP over the last seconds, at most `maxlen`, with their running sum (a judged pair must not
    cost a pass over thousands)."""

    __slots__ = ("pairs", "total", "maxlen")

    def __init__(self, maxlen: int):
        self.pairs: deque = deque()
        self.total = 0.0
        self.maxlen = maxlen

    def add(self, now: float, value: float) -> None:
        if len(self.pairs) == self.maxlen:
            self.total -= self.pairs.popleft()[1]
        self.pairs.append((now, value))
        self.total += value

    def since(self, oldest: float) -> tuple[float | None, int]:
        """Forget the pairs before `oldest`; (mean, count) of the rest, (None, 0) without any."""
        while self.pairs and self.pairs[0][0] < oldest:
            self.total -= self.pairs.popleft()[1]
        if not self.pairs:
            self.total = 0.0  # no rounding residue carried into the next stay
            return None, 0
        return self.total / len(self.pairs), len(self.pairs)


@dataclass
class Change:
    """A QP the controller asks for, and why: `coarser`, `finer` or `fallback`."""

    qp: int
    reason: str
    at: float
    from_qp: int | None
    measured: float | None = None
    pairs: int = 0

    def as_dict(self) -> dict:
        return {"t": round(self.at, 3), "from": self.from_qp, "to": self.qp, "reason": self.reason,
                "measured": None if self.measured is None else round(self.measured, 4), "pairs": self.pairs}


@dataclass
class QpController:
    settings: LoopSettings
    started: float = 0.0
    qp: int | None = None  # the QP the capture codes at, as its latest pair says
    model: str | None = None  # the engine that made it (its model id): each engine's QPs are remembered apart
    frozen: bool = False  # an engine trial (server/engine_trial.py) is comparing engines at this QP: no QP change
    asked: int | None = None  # the QP last asked for and not yet seen in a pair
    asked_at: float = float("-inf")
    last_change: float = float("-inf")
    last_pair: float | None = None
    silent: bool = False  # the fallback was asked for in this silence
    fresh: int = 0  # pairs at the current QP since the last change (or since the capture moved)
    fresh_since: float = 0.0  # when the first of them came
    memory: dict = field(default_factory=dict)  # (model, qp) -> its _Memory, the last memory_s seconds
    stream: _Memory | None = None  # every judged pair of the stream, whatever its QP, the last memory_s seconds
    counts: Counter = field(default_factory=Counter)  # pairs used/ignored, changes by reason, unanswered
    trace: deque = field(default_factory=lambda: deque(maxlen=1000))  # the Changes asked for, latest last

    # --- input -------------------------------------------------------------------------------------------------

    def observe(self, qp: int, measures: dict, now: float, model: str | None = None) -> Change | None:
        """One reference pair coded at `qp` by `model` (server/agreement.py's measures); the QP to ask for, or
        None."""
        s = self.settings
        self.last_pair = now
        self.silent = False
        if self.asked is not None:
            if qp == self.asked:
                self.asked = None  # the capture obeyed: judge from here
            elif now - self.asked_at < s.answer_timeout_s:
                self.counts["pairs_in_flight"] += 1
                return None
            else:
                self.counts["unanswered"] += 1
                self.asked = None
        if qp != self.qp or model != self.model:
            self.qp, self.model = qp, model
            self.fresh = 0
        memory = self.memory.get((model, qp))
        if memory is None:
            memory = self.memory[(model, qp)] = _Memory(s.window)
        value = _value(s.measure, measures)
        memory.add(now, value)
        if self.stream is None:
            self.stream = _Memory(4 * s.window)
        self.stream.add(now, value)
        if self.fresh == 0:
            self.fresh_since = now
        self.fresh += 1
        self.counts["pairs_judged"] += 1
        return self._judge(now)

    def remembered(self, qp: int, now: float) -> tuple[float | None, int]:
        """(mean, pairs) of the measure at `qp` with the current engine over the last memory_s seconds; (None, 0)
        without any."""
        memory = self.memory.get((self.model, qp))
        return (None, 0) if memory is None else memory.since(now - self.settings.memory_s)

    def served(self, now: float) -> float | None:
        """The mean of the measure over every pair of the last memory_s seconds, whatever its QP: what the stream
        gave, the quantity the shared rule holds at the floor."""
        return None if self.stream is None else self.stream.since(now - self.settings.memory_s)[0]

    def _known(self, qp: int, now: float) -> float | None:
        """The mean `qp` remembers, once it has at least min_pairs pairs in the memory; else None."""
        mean, pairs = self.remembered(qp, now)
        return mean if pairs >= self.settings.min_pairs else None

    def agreement_per_qp(self, now: float) -> float | None:
        """What one QP finer buys at the current QP with the current engine, from the memory of a neighbour (the
        finer one first); None when neither is remembered."""
        here = self._known(self.qp, now) if self.qp is not None else None
        if here is None:
            return None
        step = self.settings.step
        finer, coarser = self._known(self.qp - step, now), self._known(self.qp + step, now)
        if finer is not None:
            return (finer - here) / step
        return None if coarser is None else (here - coarser) / step

    def tick(self, now: float) -> Change | None:
        """Call every second or so: the fallback when pairs stopped coming."""
        s = self.settings
        if self.last_pair is None or self.silent or now - self.last_pair < s.silence_s:
            return None
        self.silent = True
        if self.qp == s.safe_qp and self.asked is None:
            return None  # already at the safe QP
        return self._ask(s.safe_qp, "fallback", now, None)

    # --- decisions ---------------------------------------------------------------------------------------------

    def _judge(self, now: float) -> Change | None:
        s = self.settings
        if (self.fresh < s.min_pairs or now - self.fresh_since < s.min_seconds
                or now - self.last_change < s.min_interval_s or self.qp is None):
            return None
        if self.frozen:
            self.counts["held_engine_trial"] += 1
            return None
        measured, _ = self.remembered(self.qp, now)
        qp = self.qp
        served = self.served(now) if s.share else None
        if measured < s.target:
            finer = self._known(qp - s.step, now)
            if served is not None and self._ahead(served, measured) >= s.target and finer is not None \
                    and finer >= s.target:
                self.counts["held_sharing"] += 1  # the finer neighbour holds and the stream has a surplus: spend it
                return None
            if qp <= s.low:
                self.counts["held_at_low"] += 1
                return None
            return self._ask(max(s.low, qp - s.step), "finer", now, measured)
        if measured > s.target + s.band:
            up = min(s.high, qp + s.step)
            if up == qp:
                self.counts["held_at_high"] += 1
                return None
            known = self._known(up, now)
            if known is not None and known < s.target:
                if served is None or self._ahead(served, known) < s.target + s.band:
                    self.counts["held_coarser_failed"] += 1  # it failed within the memory: not again yet
                    return None
                self.counts["shared"] += 1  # it fails alone, but the stream's surplus pays for a stay there
            return self._ask(up, "coarser", now, measured)
        return None

    def _ahead(self, served: float, at: float) -> float:
        """The stream's mean at the next judgement if the next stay's pairs measure `at`: the newest of the memory
        are then that stay's (at least min_seconds of them), so the shared rule looks one stay ahead instead of
        finding the floor crossed after the fact."""
        s = self.settings
        return served + (at - served) * min(1.0, max(s.min_seconds, s.min_interval_s) / s.memory_s)

    def _ask(self, qp: int, reason: str, now: float, measured: float | None) -> Change:
        change = Change(qp, reason, now - self.started, self.qp, measured, self.fresh)
        self.asked, self.asked_at, self.last_change = qp, now, now
        self.fresh = 0
        self.counts[reason] += 1
        self.trace.append(change)
        return change

    def summary(self) -> dict:
        s = self.settings
        now = self.last_pair if self.last_pair is not None else 0.0
        remembered = {qp: self.remembered(qp, now) for qp in sorted(q for m, q in self.memory if m == self.model)}
        served = self.served(now)
        return {"target": s.target, "measure": s.measure, "band": s.band, "range": [s.low, s.high], "step": s.step,
                "safe": s.safe_qp, "memory_s": s.memory_s, "share": s.share, "qp": self.qp, "asked": self.asked,
                "served": None if served is None else round(served, 4),
                "remembered": {str(qp): {"mean": round(m, 4), "pairs": n} for qp, (m, n) in remembered.items()
                               if m is not None},
                "changes": sum(self.counts[r] for r in ("coarser", "finer", "fallback")),
                "counts": dict(self.counts), "trace": [c.as_dict() for c in self.trace]}


def _value(measure: str, measures: dict) -> float:
    if measure == "top1_agreement":
        return float(bool(measures["top1_equal"]))
    return float(measures[measure])


class ClosedLoop:
    """The monitor's side of the loop: a QpController per stream (created at its first pair), fed by the Monitor's
    on_pair hook, ticked by a thread every `tick_s`, and each change asked for through `send(stream, qp)` (the
    control client's request_qp; False: not sent now). Requests that could not be sent are counted and retried at
    the next tick while the controller still wants that QP."""

    def __init__(self, settings: LoopSettings, send, clock=None, tick_s: float = 0.5, max_streams: int = 64,
                 trials=None, send_engine=None):
        """`trials`: engine_trial.TrialSettings to compare the capture's engines too, each asked for through
        `send_engine(stream, spec)` (the control client's request_engine)."""
        import threading
        import time

        self.settings, self._send, self.tick_s, self.max_streams = settings, send, tick_s, max_streams
        self.trials, self._send_engine = trials, send_engine
        self.engine_trials: dict = {}  # stream -> engine_trial.EngineTrial
        self.engine_sent = Counter()
        self.engine_unsent = Counter()
        self.clock = clock or time.monotonic
        self.controllers: dict[str, QpController] = {}
        self.sent = Counter()  # stream -> requests sent
        self.unsent = Counter()  # stream -> requests that could not be sent (retried while still wanted)
        self.ignored = 0  # pairs of streams beyond max_streams
        self._unsent_qp: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgepipe-qp-loop", daemon=True)

    def on_pair(self, key: tuple, measures: dict, now: float | None = None) -> None:
        """The Monitor's hook, one completed reference pair: key is its row (stream, model, qp, codec)."""
        stream, model, qp, codec = key
        if codec != "hevc" or qp is None or qp < 0:
            return  # the loop moves an HEVC QP: pairs of other codecs (or CRF, qp -1) say nothing about one
        t = self.clock() if now is None else now
        with self._lock:
            c = self.controllers.get(stream)
            if c is None:
                if len(self.controllers) >= self.max_streams:
                    self.ignored += 1
                    return
                c = self.controllers[stream] = QpController(self.settings, started=t)
            trial = self._trial(stream, t)
            if trial is not None:
                trial.pair(model, int(qp), _value(self.settings.measure, measures), t)
                c.frozen = trial.active
            change = c.observe(int(qp), measures, t, model)
        if change is not None:
            self._ask(stream, change)

    def on_frame(self, key: tuple, nbytes: int, keyframe: bool = False, now: float | None = None) -> None:
        """The Monitor's hook, every decoded frame: its row key, bytes and keyframe flag (an engine trial compares
        the bytes of whole GOPs)."""
        stream, model, qp, codec = key
        if self.trials is None or codec != "hevc" or qp is None or qp < 0:
            return
        t = self.clock() if now is None else now
        with self._lock:
            if stream in self.controllers:  # streams the loop steers: created at their first pair
                self._trial(stream, t).frame(model, int(qp), nbytes, t, keyframe)

    def _trial(self, stream: str, t: float):
        """Under the lock: the stream's engine trial (None without --target-engines)."""
        if self.trials is None:
            return None
        trial = self.engine_trials.get(stream)
        if trial is None:
            from edgepipe.server.engine_trial import EngineTrial

            trial = self.engine_trials[stream] = EngineTrial(self.trials, started=t)
        return trial

    def tick(self, now: float | None = None) -> None:
        t = self.clock() if now is None else now
        with self._lock:
            changes = [(sid, c.tick(t)) for sid, c in self.controllers.items()]
            retries = [(sid, qp) for sid, qp in self._unsent_qp.items()
                       if self.controllers[sid].asked == qp]
            engines = []
            asking = {sid for sid, change in changes if change is not None}
            for sid, trial in self.engine_trials.items():
                c = self.controllers[sid]
                if not trial.active and (sid in asking or c.asked is not None):
                    continue  # a QP change is on its way: a trial started at the old QP would be aborted by it
                spec = trial.poll(t, c.agreement_per_qp(t))
                c.frozen = trial.active
                if spec is not None:
                    engines.append((sid, spec))
        for sid, change in changes:
            if change is not None:
                self._ask(sid, change)
        for sid, spec in engines:
            ok = self._send_engine(sid, spec)
            log.info("closed loop %s: asking for engine %s (%s)", sid, spec, "sent" if ok else "not sent")
            with self._lock:
                (self.engine_sent if ok else self.engine_unsent)[sid] += 1
        for sid, qp in retries:
            if self._send(sid, qp):
                with self._lock:
                    self.sent[sid] += 1
                    self._unsent_qp.pop(sid, None)

    def _ask(self, stream: str, change: Change) -> None:
        log.info("closed loop %s: asking for QP %d (%s; %s over %d pairs at QP %s, target %.3f)", stream, change.qp,
                 change.reason, "no pairs" if change.measured is None else f"{self.settings.measure} "
                 f"{change.measured:.3f}", change.pairs, change.from_qp, self.settings.target)
        ok = self._send(stream, change.qp)
        with self._lock:
            if ok:
                self.sent[stream] += 1
                self._unsent_qp.pop(stream, None)
            else:
                self.unsent[stream] += 1
                self._unsent_qp[stream] = change.qp

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.tick()

    def start(self) -> ClosedLoop:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def summary(self) -> dict:
        with self._lock:
            out = {sid: {**c.summary(), "requests_sent": self.sent[sid], "requests_unsent": self.unsent[sid]}
                   for sid, c in sorted(self.controllers.items())}
            for sid, trial in self.engine_trials.items():
                out[sid]["engine_trials"] = {**trial.summary(), "requests_sent": self.engine_sent[sid],
                                             "requests_unsent": self.engine_unsent[sid]}
            return out


def summary_lines(loops: dict) -> list[str]:
    """Under the monitor's table: one line per stream the closed loop steered."""
    lines = []
    for sid, s in loops.items():
        counts = s["counts"]
        served = "n/a" if s.get("served") is None else format(s["served"], ".3f")
        lines.append(f"closed loop {sid[:14]}: {s['measure'].replace('_', ' ')} >= {s['target']:g} (band "
                     f"{s['band']:g}, memory {s['memory_s']:g} s, {'time-shared' if s.get('share') else 'per QP'}, "
                     f"stream mean {served}), QP {s['range'][0]}:{s['range'][1]} step {s['step']}: QP now {s['qp']}; "
                     f"{s['changes']} change(s) asked (coarser {counts.get('coarser', 0)}, finer "
                     f"{counts.get('finer', 0)}, fallback {counts.get('fallback', 0)}), {s['requests_sent']} sent, "
                     f"{s['requests_unsent']} unsent")
        trials = s.get("engine_trials")
        if trials is not None:
            counts = trials["counts"]
            aborted = sum(n for k, n in counts.items() if k.startswith("aborted_"))
            lines.append(f"engine trials {sid[:14]}: {' vs '.join(trials['engines'])}: engine now "
                         f"{trials['engine'] or trials['model']}; {counts.get('trials', 0)} trial(s): other engine won "
                         f"{counts.get('b_won', 0)}, kept {counts.get('a_kept', 0)}, aborted {aborted}")
    return lines
