"""The closed loop's second dimension (issue 14 item 4, "and pre-transform"): which of the capture's engines holds
the agreement floor for fewer bits. Pure and clock-injected, like server/qp_control.py: the loop feeds it every
frame's bytes and every reference pair, it answers with the engine to ask the capture for (its spec, as the
capture's --allow-remote-engine names it), or None.

On a camera the scene moves the bits and the agreement far more than an engine does (the person clip's GOPs cost
1x to 5x one another, docs/results), so two engines are compared only on the same stretch of the scene, at the
same QP, in short alternating windows: A (the engine running) over the last `window_s` seconds, then B, A, B, ...,
A, each `window_s` from its first frame, `cycles` B windows in all. Each B window is compared with the mean of
the two A windows around it, so a scene that changes steadily over a window weighs on A and B alike, and the
cycles' spread says how much the scene still moved the comparison.

Per cycle, B's log bytes per frame against its A neighbours', and its agreement against theirs; over the cycles,
each a mean and a 95 % interval (Student's t: the cycles are few). B wins when either
- it saves bits: the mean log ratio is below -`margin` and the interval's upper end below zero, and its agreement
  is not shown to be lower by more than the agreement those bits are worth; or
- it gains agreement: the interval of the agreement gain is above zero, and even at the interval's unfavourable
  ends (the least gain, the most bits) the gain is worth `margin` more than the bits it costs.
"Worth" is the loop's own exchange rate: one QP finer costs about ln 2 / 6 more log bits (HEVC's quantiser step
doubles every 6 QPs) and buys the agreement the QP controller remembers between this QP and its neighbour, with
this engine; without it (no neighbour remembered, or one that bought nothing) B saving bits may not be shown to
lose any agreement, and B gaining agreement may not cost bits on the mean. The agreement of a window is a few
dozen noisy pairs, so it only bounds the verdict; converting it all into bits at that rate let the scene decide
(bench/closed_loop_sim.py, docs/monitor.md). A win leaves the capture on
B, otherwise it goes back to A; the QP loop then holds the floor with whichever engine runs. A trial whose B is
shown worse at one look after `early_cycles` cycles ends there, back on A: B's windows are what a trial costs the floor
(bench/closed_loop_sim.py with the real `ours` on the car clip), and the remaining cycles could not make it a win.

A trial starts when the QP and the engine have not changed for `window_s` (A's first window is then all at this
QP), at most once per `every_s` per stream, and holds the QP controller still while it runs. After each trial that
B did not win the wait doubles, up to eight times `every_s`; a win brings it back to `every_s`. Whichever way a
trial ends its B windows cost the floor (on the person clip `ours` was "not shown" either way in 15 of 16 trials,
and those trials are what let the floor slip, bench/closed_loop_sim.py), and a scene that changes enough for B to
win is still tried again within eight times `every_s`. A QP change, silence (`window_s` without a frame) or a
window that has not `min_pairs` pairs after 3 x `window_s` ends it without a verdict, back on A.
"""
from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import MISSING, dataclass, field, fields

HEVC_QP_PER_DOUBLING = 6.0


T_95_SMALL = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def _mean_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1) / n)


def t_95(df: int) -> float:
    """Student's t two-sided 95 % quantile for df degrees of freedom (a table to 5, then the Cornish-Fisher
    expansion, within 0.6 % from there): the cycles are few, and a normal 1.96 would call noise a win."""
    if df in T_95_SMALL:
        return T_95_SMALL[df]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class TrialSettings:
    engines: tuple[str, ...]  # the specs the capture allows (--allow-remote-engine), in any order
    models: tuple[str, ...]   # their model ids, as frames carry them, in the same order
    every_s: float = 900.0
    window_s: float = 15.0
    cycles: int = 6
    margin: float = 0.03
    min_pairs: int = 20
    early_cycles: int = 3  # after this many cycles a B shown worse ends the trial (0: never)

    def __post_init__(self) -> None:
        if len(self.engines) < 2 or len(self.engines) != len(self.models):
            raise ValueError("an engine trial needs two engines or more, each with its model id")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"two of the engines {', '.join(self.engines)} are the same model")
        if not (self.window_s > 0 and self.every_s >= 0):
            raise ValueError("the trial's window must be positive and its spacing not negative")
        if not 0 <= self.margin < 1 or self.min_pairs < 1 or self.cycles < 2:
            raise ValueError("the margin is a share (0 to 1), min_pairs at least 1 and cycles at least 2")
        if self.early_cycles == 1 or self.early_cycles < 0:
            raise ValueError("the early stop needs 2 cycles or more to show anything (0: never)")

    def spec_of(self, model: str) -> str | None:
        return self.engines[self.models.index(model)] if model in self.models else None


# the defaults by field name: the monitor's flags start from these
TRIAL_DEFAULTS = {f.name: f.default for f in fields(TrialSettings) if f.default is not MISSING}


@dataclass
class _Window:
    """What one engine gave at one QP from `start` on: bytes per frame and the measure of its pairs."""

    model: str
    start: float | None = None  # its first keyframe (None: not seen yet)
    closed: bool = False  # at the first keyframe after window_s: a window holds whole GOPs, as bits go by GOP
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


@dataclass(frozen=True)
class _Score:
    """The cycles so far, B against its A neighbours: log bytes and agreement gain (means and standard errors), and
    what they show at 95 %."""
    rate: float | None  # log bits per unit of agreement at this QP (the loop's exchange rate), None if unknown
    bits: float
    bits_se: float
    gain: float
    gain_se: float
    cycles: int
    saves_bits: bool
    gains_agreement: bool
    worse: bool


@dataclass
class EngineTrial:
    """One stream's trials. `frame` and `pair` take what comes; `poll` says which engine to ask for."""

    settings: TrialSettings
    started: float = 0.0
    model: str | None = None  # the engine of the latest frame
    qp: int | None = None     # and its QP
    qp_since: float = 0.0     # when that QP (or engine) started
    last_trial: float = float("-inf")
    spacing: int = 1  # every_s times this until the next trial: doubled (to 8) each time B did not win
    last_frame: float | None = None
    qp_trial: int | None = None
    windows: list = field(default_factory=list)  # the trial's windows, A B A B ... A; empty: no trial
    window_since: float = 0.0  # when the window in progress was asked for
    # (t, model, qp, nbytes or None, measure or None, keyframe) over the last 2 x window_s: A's first window
    history: deque = field(default_factory=deque)
    counts: Counter = field(default_factory=Counter)
    trace: deque = field(default_factory=lambda: deque(maxlen=200))  # the trials' verdicts, latest last

    @property
    def active(self) -> bool:
        return bool(self.windows)

    # --- input -------------------------------------------------------------------------------------------------

    def frame(self, model: str, qp: int, nbytes: int, now: float, keyframe: bool = False) -> None:
        self.last_frame = now
        if (model, qp) != (self.model, self.qp):
            self.model, self.qp, self.qp_since = model, qp, now
        self._remember(now, model, qp, nbytes, None, keyframe)
        if not self.windows or qp != self.qp_trial or self.windows[-1].model != model:
            return
        window, s = self.windows[-1], self.settings
        if window.start is None:
            if not keyframe:
                return  # frames of the engine before its first keyframe: a GOP begun before the switch
            window.start = now
        elif not window.closed and now - window.start >= s.window_s \
                and (keyframe or now - window.start >= 2 * s.window_s):
            window.closed = True  # whole GOPs (a stream without keyframes: after twice the window)
        if not window.closed:
            window.frames += 1
            window.nbytes += nbytes

    def pair(self, model: str, qp: int, value: float, now: float) -> None:
        self._remember(now, model, qp, None, value, False)
        if self.windows and qp == self.qp_trial and self.windows[-1].model == model \
                and self.windows[-1].start is not None:
            self.windows[-1].pairs += 1
            self.windows[-1].total += value

    def _remember(self, now: float, model: str, qp: int, nbytes: int | None, value: float | None,
                  keyframe: bool) -> None:
        self.history.append((now, model, qp, nbytes, value, keyframe))
        while self.history and self.history[0][0] < now - 2 * self.settings.window_s:
            self.history.popleft()

    # --- decisions ---------------------------------------------------------------------------------------------

    def poll(self, now: float, agreement_per_qp: float | None = None) -> str | None:
        """The engine to ask for now, or None. `agreement_per_qp`: what one QP finer buys at this QP with the engine
        running (from the QP controller's memory), None when unknown."""
        s = self.settings
        if not self.windows:
            return self._maybe_start(now)
        if self.last_frame is None or now - self.last_frame > s.window_s or self.qp != self.qp_trial:
            return self._abort("silence" if self.qp == self.qp_trial else "qp_changed", now)
        window = self.windows[-1]
        if now - self.window_since > 3 * s.window_s:
            return self._abort("too_few_pairs", now)
        if not window.closed or window.pairs < s.min_pairs:
            return None
        if len(self.windows) == 2 * s.cycles + 1:
            return self._verdict(now, agreement_per_qp)
        # One early look, after early_cycles whole cycles (a B window with its closing A): looking after every
        # cycle would test the same trial again and again, and call an equal engine worse far more than 1 in 20.
        done = (len(self.windows) - 1) // 2
        if len(self.windows) % 2 and done == s.early_cycles and self._score(agreement_per_qp).worse:
            return self._verdict(now, agreement_per_qp)
        a, b = self.windows[0].model, self.windows[1].model
        self.windows.append(_Window(b if len(self.windows) % 2 else a))
        self.window_since = now
        return s.spec_of(self.windows[-1].model)

    def _maybe_start(self, now: float) -> str | None:
        s = self.settings
        if (self.model not in s.models or self.qp is None or now - self.qp_since < s.window_s
                or now - self.last_trial < s.every_s * self.spacing or now - self.started < s.window_s):
            return None
        a = self._last_whole_gops(now)
        if a is None or a.pairs < s.min_pairs:
            return None
        others = [m for m in s.models if m != self.model]
        b_model = others[self.counts["trials"] % len(others)]  # with more than two engines, each in turn
        self.counts["trials"] += 1
        self.last_trial, self.qp_trial, self.window_since = now, self.qp, now
        self.windows = [a, _Window(b_model)]
        return s.spec_of(b_model)

    def _last_whole_gops(self, now: float) -> _Window | None:
        """A's first window: the frames of the engine and QP of now from a keyframe at least window_s ago up to the
        latest keyframe (whole GOPs), and the pairs since that first keyframe; None: no such stretch remembered."""
        mine = [h for h in self.history if h[1] == self.model and h[2] == self.qp]
        keys = [h[0] for h in mine if h[5]]
        starts = [t for t in keys if t <= now - self.settings.window_s]
        if not starts or keys[-1] <= starts[-1]:
            return None
        first, last = starts[-1], keys[-1]
        a = _Window(self.model, start=first, closed=True)
        for t, _m, _q, nbytes, value, _k in mine:
            if nbytes is not None and first <= t < last:
                a.frames += 1
                a.nbytes += nbytes
            if value is not None and t >= first:
                a.pairs += 1
                a.total += value
        return a if a.frames else None

    def _end(self, now: float, record: dict) -> None:
        a, b = self.windows[0].model, self.windows[1].model
        self.trace.append({"t": round(now - self.started, 3), "qp": self.qp_trial, "a": a, "b": b, **record})
        self.windows = []

    def _abort(self, cause: str, now: float) -> str | None:
        self.counts[f"aborted_{cause}"] += 1
        back = self.windows[0].model
        self._end(now, {"windows": len(self.windows), "verdict": f"aborted: {cause}"})
        return self.settings.spec_of(back) if self.model != back else None

    def _score(self, agreement_per_qp: float | None) -> _Score:
        """The cycles so far: B's log bytes and agreement gain against its A neighbours, and what they show."""
        s = self.settings
        w = self.windows
        rate = math.log(2) / HEVC_QP_PER_DOUBLING / agreement_per_qp if agreement_per_qp and agreement_per_qp > 0 \
            else None  # log bits per unit of agreement, at this QP with this engine
        log_bits, gains = [], []
        for i in range(1, len(w) - 1, 2):  # each B window against the mean of the A windows around it
            before, b, after = w[i - 1], w[i], w[i + 1]
            log_bits.append(math.log(b.bytes_per_frame / ((before.bytes_per_frame + after.bytes_per_frame) / 2)))
            gains.append(b.mean - (before.mean + after.mean) / 2)
        t = t_95(len(log_bits) - 1)
        bits, bits_se = _mean_se(log_bits)
        gain, gain_se = _mean_se(gains)
        tolerance = s.margin / rate if rate is not None else 0.0  # agreement worth `margin` of bits
        saves_bits = bits < -s.margin and bits + t * bits_se < 0 and gain + t * gain_se >= -tolerance
        least_gain, most_bits = gain - t * gain_se, bits + t * bits_se
        gains_agreement = least_gain > 0 and (most_bits - least_gain * rate < -s.margin if rate is not None
                                              else bits <= 0)
        worse = (gain + t * gain_se < -tolerance and bits > -s.margin) or (bits - t * bits_se > s.margin and gain <= 0)
        return _Score(rate, bits, bits_se, gain, gain_se, len(gains), saves_bits, gains_agreement, worse)

    def _verdict(self, now: float, agreement_per_qp: float | None) -> str | None:
        s, w = self.settings, self.windows
        score = self._score(agreement_per_qp)
        rate, bits, bits_se, gain, gain_se = score.rate, score.bits, score.bits_se, score.gain, score.gain_se
        saves_bits, gains_agreement, worse = score.saves_bits, score.gains_agreement, score.worse
        wins = saves_bits or gains_agreement
        early = score.cycles < s.cycles
        self.spacing = 1 if wins else min(8, self.spacing * 2)
        if early:
            self.counts["ended_early"] += 1
        self.counts["b_won" if wins else "a_kept"] += 1
        a_model, b_model = w[0].model, w[1].model
        self._end(now, {"bytes_ratio": round(math.exp(bits), 4), "log_bytes_se": round(bits_se, 4),
                        "agreement_gain": round(gain, 4), "agreement_se": round(gain_se, 4), "cycles": score.cycles,
                        "bits_per_agreement": None if rate is None else round(rate, 2),
                        "verdict": "b" if wins else "a",
                        "why": "fewer bits" if saves_bits else "more agreement" if gains_agreement else
                        ("b worse, ended early" if early else "b worse") if worse else "not shown",
                        "next_in_s": s.every_s * self.spacing})
        self.last_trial = now
        return s.spec_of(b_model) if wins else s.spec_of(a_model) if self.model != a_model else None

    def summary(self) -> dict:
        return {"engines": list(self.settings.engines), "models": list(self.settings.models), "model": self.model,
                "engine": None if self.model is None else self.settings.spec_of(self.model),
                "active": self.active, "counts": dict(self.counts), "trace": list(self.trace)}
