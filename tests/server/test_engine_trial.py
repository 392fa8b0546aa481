"""Engine trials (server/engine_trial.py, issue 14 item 4): A-B-A at one QP, the verdict by bits at equal agreement,
a drifting scene that does not fool it, aborts back to A, and the closed loop holding its QP still meanwhile."""
from __future__ import annotations

import math

import pytest

from edgepipe.server.engine_trial import EngineTrial, TrialSettings
from edgepipe.server.qp_control import ClosedLoop, LoopSettings

MODELS = {"none": "none", "ours": "ours-1234abcd"}
FPS, PAIR_EVERY, SWITCH_DELAY_S = 25, 5, 1.0


def settings(**kw) -> TrialSettings:
    base = dict(engines=("none", "ours"), models=("none", "ours-1234abcd"), every_s=600.0, window_s=20.0,
                margin=0.03, min_pairs=20)
    base.update(kw)
    return TrialSettings(**base)


class Capture:
    """Obeys engine requests one GOP (SWITCH_DELAY_S) later, like a real capture."""

    def __init__(self, engine: str = "none", qp: int = 34):
        self.engine, self.qp, self.pending, self.asked = engine, qp, None, []

    def ask(self, spec: str, now: float) -> None:
        self.asked.append((round(now, 2), spec))
        self.pending = (now + SWITCH_DELAY_S, spec)

    def step(self, now: float) -> None:
        if self.pending is not None and now >= self.pending[0]:
            self.engine, self.pending = self.pending[1], None


def run(trial: EngineTrial, capture: Capture, seconds: float, scene, t0: float = 0.0,
        agreement_per_qp: float | None = None, qp_at=None) -> float:
    """Frames at FPS, a pair every PAIR_EVERY frames, a poll every second; scene(t, engine) -> (bytes, measure)."""
    n = int(seconds * FPS)
    for i in range(n):
        t = t0 + i / FPS
        capture.step(t)
        if qp_at is not None:
            capture.qp = qp_at(t)
        nbytes, measure = scene(t, capture.engine)
        model = MODELS[capture.engine]
        trial.frame(model, capture.qp, int(nbytes), t)
        if i % PAIR_EVERY == 0:
            trial.pair(model, capture.qp, measure, t)
        if i % FPS == 0:
            spec = trial.poll(t, agreement_per_qp)
            if spec is not None:
                capture.ask(spec, t)
    return t0 + n / FPS


def flat(bytes_none: float, bytes_ours: float, m_none: float, m_ours: float):
    def scene(t, engine):
        return (bytes_none, m_none) if engine == "none" else (bytes_ours, m_ours)
    return scene


def test_an_engine_that_saves_bits_at_equal_agreement_wins_and_stays():
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, flat(1000, 800, 0.8, 0.8))
    assert [spec for _, spec in cap.asked] == ["ours", "none", "ours"]  # A-B-A, then the verdict
    assert cap.engine == "ours" and trial.counts["b_won"] == 1
    verdict = trial.trace[-1]
    assert verdict["verdict"] == "b" and verdict["rule"] == "dominance" and verdict["bytes_ratio"] == 0.8
    assert verdict["pairs"][1] >= 20 and not trial.active


def test_an_engine_that_costs_bits_loses_and_the_capture_is_back_on_a():
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, flat(1000, 1100, 0.8, 0.8))
    assert [spec for _, spec in cap.asked] == ["ours", "none"] and cap.engine == "none"
    assert trial.counts["a_kept"] == 1 and trial.trace[-1]["verdict"] == "a"


def test_a_scene_that_drifts_over_the_trial_does_not_decide_it():
    """Bytes rise 1 % a second whichever engine runs: B (in the middle) costs more than A before and less than A
    after; A-B-A cancels it, where A-then-B would have called B 20 % dearer."""
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, lambda t, engine: (1000 * (1 + 0.01 * t), 0.8))
    assert trial.counts["a_kept"] == 1 and cap.engine == "none"
    assert abs(math.log(trial.trace[-1]["bytes_ratio"])) < 0.03


def test_more_agreement_is_converted_into_bits_at_the_loops_exchange_rate():
    """+0.03 agreement for 5 % more bytes: with one QP buying 0.005 of agreement here, that agreement is worth
    0.03 / 0.005 = 6 QPs, ln2 more bits: B wins. With no rate known it must dominate, and does not."""
    scene = flat(1000, 1050, 0.80, 0.83)
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, scene, agreement_per_qp=0.005)
    assert cap.engine == "ours" and trial.trace[-1]["rule"] == "exchange" and trial.trace[-1]["score"] < -0.03
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, scene, agreement_per_qp=None)
    assert cap.engine == "none" and trial.trace[-1]["rule"] == "dominance"


def test_a_qp_change_during_a_trial_ends_it_back_on_a():
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, flat(1000, 800, 0.8, 0.8), qp_at=lambda t: 34 if t < 55 else 36)
    assert trial.counts["aborted_qp_changed"] == 1 and trial.counts["b_won"] == 0
    assert cap.engine == "none" and cap.asked[-1][1] == "none"


def test_no_trial_before_the_qp_settles_and_at_most_one_per_spacing():
    trial, cap = EngineTrial(settings(every_s=300.0)), Capture()
    end = run(trial, cap, 19, flat(1000, 1100, 0.8, 0.8))
    assert cap.asked == []  # not yet window_s of A at this QP
    run(trial, cap, 400, flat(1000, 1100, 0.8, 0.8), t0=end)
    starts = [t for t, spec in cap.asked if spec == "ours"]
    assert len(starts) == 2 and starts[1] - starts[0] >= 300


@pytest.mark.parametrize("kw, phrase", [
    (dict(engines=("none",), models=("none",)), "two engines or more"),
    (dict(models=("none", "none")), "the same model"),
    (dict(window_s=0.0), "window must be positive"),
    (dict(margin=1.0), "the margin is a share"),
])
def test_bad_settings_are_one_line(kw, phrase):
    with pytest.raises(ValueError, match=phrase):
        settings(**kw)


def test_the_closed_loop_holds_its_qp_still_while_a_trial_runs():
    """Two loops fed the same pairs, one with trials: inside the dead band both hold and the trial starts; then far
    above it the loop without trials steps coarser, the one in a trial holds, and its request went out through
    send_engine."""
    asked = {"trial": [], "plain": []}
    loop_settings = LoopSettings(target=0.85, band=0.1, min_pairs=5, min_seconds=1.0, min_interval_s=1.0, memory_s=10)
    engines = []
    loops = {"trial": ClosedLoop(loop_settings, lambda sid, qp: asked["trial"].append(qp) or True, trials=settings(),
                                 send_engine=lambda sid, spec: engines.append(spec) or True),
             "plain": ClosedLoop(loop_settings, lambda sid, qp: asked["plain"].append(qp) or True)}
    key = ("cam", "none", 34, "hevc")
    for i in range(int(75 * FPS)):
        t = i / FPS
        measure = 0.9 if t < 60 else 0.99
        for loop in loops.values():
            loop.on_frame(key, 1000, t)
            if i % PAIR_EVERY == 0:
                loop.on_pair(key, {"top5_overlap": measure, "top1_equal": True}, t)
            if i % FPS == 0:
                loop.tick(t)
    assert engines == ["ours"] and loops["trial"].engine_trials["cam"].active
    assert asked["plain"] == [36] and asked["trial"] == []
    assert loops["trial"].controllers["cam"].counts["held_engine_trial"] > 0
    summary = loops["trial"].summary()["cam"]["engine_trials"]
    assert summary["phase"] == "b" and summary["requests_sent"] == 1
