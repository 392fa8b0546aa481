"""The closed loop's second dimension (issue 14 item 4, "and pre-transform"): which of the capture's engines holds
the agreement floor for fewer bits. Pure and clock-injected, like server/qp_control.py: the loop feeds it every
frame's bytes and every reference pair, it answers with the engine to ask the capture for (its spec, as the
capture's --allow-remote-engine names it), or None.

On a camera the scene moves the bits and the agreement far more than an engine does (the person clip's GOPs cost
1x to 5x one another, docs/results), so two engines are compared only on the same stretch of the scene, at the
same QP, in a trial A-B-A:
- A: the engine running, over the last `window_s` seconds at the QP of now;
- B: the other engine, asked for, over `window_s` seconds from its first frame;
- A again, asked back, over `window_s` seconds from its first frame.
A is the mean of its two windows, so a scene that drifts steadily over the trial weighs on A and B alike.

B wins when it holds more agreement per bit: its log bytes per frame against A's, less the agreement it gains
converted into bits at the loop's own exchange rate, must be below -`margin`. The rate: one QP finer costs about
ln 2 / 6 more log bits (HEVC's quantiser step doubles every 6 QPs) and buys the agreement the QP controller
remembers between this QP and its neighbour, with this engine. Without that rate (no neighbour remembered, or one
that bought nothing) B must dominate: at least `margin` fewer bytes at no less agreement, or more agreement at no
more bytes. A win leaves the capture on B; otherwise it stays on A.

A trial starts when the QP and the engine have not changed for `window_s` (A's first window is then all at this
QP), at most once per `every_s` per stream, and holds the QP controller still while it runs. A QP change, silence (`window_s` without a frame) or a window that has not
`min_pairs` pairs after 3 x `window_s` ends it without a verdict, back on A.
"""
from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import MISSING, dataclass, field, fields

HEVC_QP_PER_DOUBLING = 6.0


@dataclass(frozen=True)
class TrialSettings:
    engines: tuple[str, ...]  # the specs the capture allows (--allow-remote-engine), in any order
    models: tuple[str, ...]   # their model ids, as frames carry them, in the same order
    every_s: float = 600.0
    window_s: float = 60.0
    margin: float = 0.03
    min_pairs: int = 20

    def __post_init__(self) -> None:
        if len(self.engines) < 2 or len(self.engines) != len(self.models):
            raise ValueError("an engine trial needs two engines or more, each with its model id")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"two of the engines {', '.join(self.engines)} are the same model")
        if not (self.window_s > 0 and self.every_s >= 0):
            raise ValueError("the trial's window must be positive and its spacing not negative")
        if not 0 <= self.margin < 1 or self.min_pairs < 1:
            raise ValueError("the margin is a share (0 to 1) and min_pairs at least 1")

    def spec_of(self, model: str) -> str | None:
        return self.engines[self.models.index(model)] if model in self.models else None


# the defaults by field name: the monitor's flags start from these
TRIAL_DEFAULTS = {f.name: f.default for f in fields(TrialSettings) if f.default is not MISSING}


@dataclass
class _Window:
    """What one engine gave at one QP from `start` on: bytes per frame and the measure of its pairs."""

    model: str
    start: float | None = None  # its first frame (None: not seen yet)
    frames: int = 0
    nbytes: int = 0
    pairs: int = 0
    total: float = 0.0

    @property
    def bytes_per_frame(self) -> float:
        return self.nbytes / self.frames if self.frames else math.nan

    @property
    def mean(self) -> float:
        return self.total / self.pairs if self.pairs else math.nan


@dataclass
class EngineTrial:
    """One stream's trials. `frame` and `pair` take what comes; `poll` says which engine to ask for."""

    settings: TrialSettings
    started: float = 0.0
    model: str | None = None  # the engine of the latest frame
    qp: int | None = None     # and its QP
    qp_since: float = 0.0     # when that QP (or engine) started
    last_trial: float = float("-inf")
    last_frame: float | None = None
    phase: str = "idle"       # idle, b (the other engine's window), a (A's second window)
    qp_trial: int | None = None
    a_before: _Window | None = None
    b: _Window | None = None
    a_after: _Window | None = None
    phase_since: float = 0.0
    history: deque = field(default_factory=deque)  # (t, model, qp, nbytes or None, measure or None), A's window
    counts: Counter = field(default_factory=Counter)
    trace: deque = field(default_factory=lambda: deque(maxlen=200))  # the trials' verdicts, latest last

    @property
    def active(self) -> bool:
        return self.phase != "idle"

    # --- input -------------------------------------------------------------------------------------------------

    def frame(self, model: str, qp: int, nbytes: int, now: float) -> None:
        self.last_frame = now
        if (model, qp) != (self.model, self.qp):
            self.model, self.qp, self.qp_since = model, qp, now
        self._remember(now, model, qp, nbytes, None)
        window = self._window_for(model, qp, now)
        if window is not None:
            window.frames += 1
            window.nbytes += nbytes

    def pair(self, model: str, qp: int, value: float, now: float) -> None:
        self._remember(now, model, qp, None, value)
        window = self._window_for(model, qp, now)
        if window is not None and window.start is not None:
            window.pairs += 1
            window.total += value

    def _remember(self, now: float, model: str, qp: int, nbytes: int | None, value: float | None) -> None:
        self.history.append((now, model, qp, nbytes, value))
        while self.history and self.history[0][0] < now - self.settings.window_s:
            self.history.popleft()

    def _window_for(self, model: str, qp: int, now: float) -> _Window | None:
        """The trial window this frame or pair belongs to, started at its first frame; None: none."""
        if self.phase == "idle" or qp != self.qp_trial:
            return None
        window = self.b if self.phase == "b" else self.a_after
        if window.model != model:
            return None
        if window.start is None:
            window.start = now
        return window if now - window.start <= self.settings.window_s else None

    # --- decisions ---------------------------------------------------------------------------------------------

    def poll(self, now: float, agreement_per_qp: float | None = None) -> str | None:
        """The engine to ask for now, or None. `agreement_per_qp`: what one QP finer buys at this QP with the engine
        running (from the QP controller's memory), None when unknown."""
        s = self.settings
        if self.phase == "idle":
            return self._maybe_start(now)
        if self.last_frame is None or now - self.last_frame > s.window_s or self.qp != self.qp_trial:
            return self._abort("silence" if self.qp == self.qp_trial else "qp_changed", now)
        window = self.b if self.phase == "b" else self.a_after
        if now - self.phase_since > 3 * s.window_s:
            return self._abort("too_few_pairs", now)
        if window.start is None or now - window.start < s.window_s or window.pairs < s.min_pairs:
            return None
        if self.phase == "b":
            self.phase, self.phase_since = "a", now
            return s.spec_of(self.a_before.model)
        return self._verdict(now, agreement_per_qp)

    def _maybe_start(self, now: float) -> str | None:
        s = self.settings
        if (self.model not in s.models or self.qp is None or now - self.qp_since < s.window_s
                or now - self.last_trial < s.every_s or now - self.started < s.window_s):
            return None
        a = _Window(self.model, start=now - s.window_s)
        for _t, model, qp, nbytes, value in self.history:
            if model == self.model and qp == self.qp:
                if nbytes is not None:
                    a.frames += 1
                    a.nbytes += nbytes
                if value is not None:
                    a.pairs += 1
                    a.total += value
        if a.pairs < s.min_pairs or not a.frames:
            return None
        others = [m for m in s.models if m != self.model]
        b_model = others[self.counts["trials"] % len(others)]  # with more than two engines, each in turn
        self.counts["trials"] += 1
        self.phase, self.phase_since, self.last_trial, self.qp_trial = "b", now, now, self.qp
        self.a_before, self.b, self.a_after = a, _Window(b_model), _Window(self.model)
        return s.spec_of(b_model)

    def _abort(self, cause: str, now: float) -> str | None:
        self.counts[f"aborted_{cause}"] += 1
        back = self.a_before.model
        self.trace.append({"t": round(now - self.started, 3), "qp": self.qp_trial, "a": back, "b": self.b.model,
                           "verdict": f"aborted: {cause}"})
        self.phase = "idle"
        return self.settings.spec_of(back) if self.model != back else None

    def _verdict(self, now: float, agreement_per_qp: float | None) -> str | None:
        s = self.settings
        before, b, after = self.a_before, self.b, self.a_after
        a_bytes = (before.bytes_per_frame + after.bytes_per_frame) / 2
        a_mean = (before.mean + after.mean) / 2
        log_bits = math.log(b.bytes_per_frame / a_bytes)
        gain = b.mean - a_mean
        if agreement_per_qp is not None and agreement_per_qp > 0:
            log_bits_per_agreement = math.log(2) / HEVC_QP_PER_DOUBLING / agreement_per_qp
            score = log_bits - gain * log_bits_per_agreement
            wins = score < -s.margin
            rule = "exchange"
        else:
            score = None
            wins = (log_bits <= math.log(1 - s.margin) and gain >= 0) or (gain > 0 and log_bits <= 0)
            rule = "dominance"
        self.counts["b_won" if wins else "a_kept"] += 1
        self.trace.append({"t": round(now - self.started, 3), "qp": self.qp_trial, "a": before.model, "b": b.model,
                           "bytes_ratio": round(b.bytes_per_frame / a_bytes, 4), "a_mean": round(a_mean, 4),
                           "b_mean": round(b.mean, 4), "pairs": [before.pairs, b.pairs, after.pairs],
                           "rule": rule, "score": None if score is None else round(score, 4),
                           "verdict": "b" if wins else "a"})
        self.phase = "idle"
        self.last_trial = now
        return s.spec_of(b.model) if wins else None

    def summary(self) -> dict:
        return {"engines": list(self.settings.engines), "models": list(self.settings.models), "model": self.model,
                "phase": self.phase, "counts": dict(self.counts), "trace": list(self.trace)}
