"""Engine trials (server/engine_trial.py, issue 14 item 4): A-B-A-B-A at one QP, the verdict by bits at equal
agreement, a drifting or jumping scene that does not fool it, aborts back to A, and the closed loop holding its QP
still meanwhile."""
from __future__ import annotations

import math
import random

import pytest

from edgepipe.server.engine_trial import EngineTrial, TrialSettings
from edgepipe.server.qp_control import ClosedLoop, LoopSettings

MODELS = {"none": "none", "ours": "ours-1234abcd"}
FPS, PAIR_EVERY, SWITCH_DELAY_S = 25, 5, 1.0


def settings(**kw) -> TrialSettings:
    base = dict(engines=("none", "ours"), models=("none", "ours-1234abcd"), every_s=600.0, window_s=20.0,
                cycles=2, margin=0.03, min_pairs=20)
    base.update(kw)
    return TrialSettings(**base)


class Capture:
    """Obeys engine requests SWITCH_DELAY_S later, from an IDR (it re-opens its encoder), like a real capture; a
    GOP is one second."""

    def __init__(self, engine: str = "none", qp: int = 34):
        self.engine, self.qp, self.pending, self.asked = engine, qp, None, []

    def ask(self, spec: str, now: float) -> None:
        self.asked.append((round(now, 2), spec))
        self.pending = (now + SWITCH_DELAY_S, spec)

    def step(self, now: float, i: int) -> bool:
        """Whether frame i is a keyframe."""
        if self.pending is not None and now >= self.pending[0]:
            self.engine, self.pending = self.pending[1], None
            return True
        return i % FPS == 0


def run(trial: EngineTrial, capture: Capture, seconds: float, scene, t0: float = 0.0,
        agreement_per_qp: float | None = None, qp_at=None) -> float:
    """Frames at FPS, a pair every PAIR_EVERY frames, a poll every second; scene(t, engine) -> (bytes, measure)."""
    n = int(seconds * FPS)
    for i in range(n):
        t = t0 + i / FPS
        keyframe = capture.step(t, i)
        if qp_at is not None:
            capture.qp = qp_at(t)
        nbytes, measure = scene(t, capture.engine)
        model = MODELS[capture.engine]
        trial.frame(model, capture.qp, int(nbytes * (5 if keyframe else 1)), t, keyframe)
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
    assert [spec for _, spec in cap.asked] == ["ours", "none", "ours", "none", "ours"]  # A B A B A, then B won
    assert cap.engine == "ours" and trial.counts["b_won"] == 1
    verdict = trial.trace[-1]
    assert verdict["verdict"] == "b" and verdict["why"] == "fewer bits" and verdict["bytes_ratio"] == 0.8
    assert verdict["cycles"] == 2 and not trial.active


def test_an_engine_that_costs_bits_loses_and_the_capture_is_back_on_a():
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, flat(1000, 1100, 0.8, 0.8))
    assert [spec for _, spec in cap.asked] == ["ours", "none", "ours", "none"] and cap.engine == "none"
    assert trial.counts["a_kept"] == 1 and trial.trace[-1]["verdict"] == "a"


def test_a_scene_that_drifts_over_the_trial_does_not_decide_it():
    """Bytes rise 1 % a second whichever engine runs: each B window costs more than the A before it and less than
    the A after it; against their mean it costs the same, where A-then-B would have called B 20 % dearer."""
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, lambda t, engine: (1000 * (1 + 0.01 * t), 0.8))
    assert trial.counts["a_kept"] == 1 and cap.engine == "none"
    assert abs(math.log(trial.trace[-1]["bytes_ratio"])) < 0.03


def test_a_scene_that_jumps_in_one_window_is_not_a_win():
    """B is no better, but one of its windows falls on an easy stretch (bytes halved for 20 s): the mean score
    says B saves, its spread says the scene did it."""
    trial, cap = EngineTrial(settings(cycles=3)), Capture()
    run(trial, cap, 300, lambda t, engine: (500 if 62 <= t < 84 else 1000, 0.8))
    verdict = trial.trace[-1]
    assert verdict["verdict"] == "a" and verdict["why"] == "not shown"
    assert math.log(verdict["bytes_ratio"]) < -0.03 and math.log(verdict["bytes_ratio"]) + 2 * verdict["log_bytes_se"] > 0
    assert cap.engine == "none"


def test_noisy_agreement_does_not_hide_fewer_bits():
    """The agreement swings +-0.05 with the scene every few seconds, the same for both engines; B's bits are 20 %
    lower. Its agreement is not shown to be lower, so the bits decide."""
    trial, cap = EngineTrial(settings(cycles=4)), Capture()
    run(trial, cap, 300, lambda t, engine: (800 if engine == "ours" else 1000, 0.8 + 0.05 * math.sin(t / 1.3)))
    verdict = trial.trace[-1]
    assert verdict["verdict"] == "b" and verdict["why"] == "fewer bits" and cap.engine == "ours"
    assert verdict["agreement_se"] > 0


def test_more_agreement_is_converted_into_bits_at_the_loops_exchange_rate():
    """+0.03 agreement for 5 % more bytes: with one QP buying 0.005 of agreement here, that agreement is worth
    0.03 / 0.005 = 6 QPs, ln2 more bits: B wins. With no rate known it must dominate, and does not."""
    scene = flat(1000, 1050, 0.80, 0.83)
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, scene, agreement_per_qp=0.005)
    assert cap.engine == "ours" and trial.trace[-1]["why"] == "more agreement"
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, scene, agreement_per_qp=None)
    assert cap.engine == "none" and trial.trace[-1]["bits_per_agreement"] is None


def test_a_qp_change_during_a_trial_ends_it_back_on_a():
    trial, cap = EngineTrial(settings()), Capture()
    run(trial, cap, 200, flat(1000, 800, 0.8, 0.8), qp_at=lambda t: 34 if t < 55 else 36)
    assert trial.counts["aborted_qp_changed"] == 1 and trial.counts["b_won"] == 0
    assert cap.engine == "none" and cap.asked[-1][1] == "none"


def test_no_trial_before_the_qp_settles_and_at_most_one_per_spacing():
    trial, cap = EngineTrial(settings(every_s=300.0)), Capture()
    end = run(trial, cap, 19, flat(1000, 1000, 0.8, 0.8))
    assert cap.asked == []  # not yet window_s of A at this QP
    run(trial, cap, 700, flat(1000, 1000, 0.8, 0.8), t0=end)
    assert trial.counts["trials"] == 2 and cap.asked[4][1] == "ours"  # the second trial's first B window
    assert 600 <= cap.asked[4][0] - cap.asked[0][0] < 700  # twice every_s: the first was not won


@pytest.mark.parametrize("b_agreement, why", [(0.7, "b worse"), (0.8, "not shown")])
def test_an_engine_that_does_not_win_is_tried_less_and_less_often(b_agreement, why):
    """B loses a tenth of the agreement at equal bits, or is the same: each trial it does not win doubles the
    wait, up to 8 times (every trial costs the floor its B windows)."""
    trial, cap = EngineTrial(settings(every_s=100.0)), Capture()
    run(trial, cap, 2000, flat(1000, 1000, 0.8, b_agreement))
    verdicts = [t for t in trial.trace if t["verdict"] == "a"]
    assert [v["why"] for v in verdicts] == [why] * len(verdicts) and len(verdicts) >= 3
    assert [v["next_in_s"] for v in verdicts][:4] == [200.0, 400.0, 800.0, 800.0][:len(verdicts)]


def test_a_win_brings_the_wait_back():
    """B is the same for 1,000 s (not shown: the wait grows), then 20 % cheaper: it wins, and the wait is back to
    every_s for the trial after, which (now B is A) keeps the cheaper engine."""
    trial, cap = EngineTrial(settings(every_s=100.0)), Capture()
    run(trial, cap, 3000, lambda t, engine: (800 if engine == "ours" and t > 1000 else 1000, 0.8))
    whys = [(v["why"], v["next_in_s"]) for v in trial.trace if "why" in v]
    assert whys[0] == ("not shown", 200.0) and ("fewer bits", 100.0) in whys
    assert cap.engine == "ours"


@pytest.mark.parametrize("kw, phrase", [
    (dict(engines=("none",), models=("none",)), "two engines or more"),
    (dict(models=("none", "none")), "the same model"),
    (dict(window_s=0.0), "window must be positive"),
    (dict(margin=1.0), "the margin is a share"),
    (dict(cycles=1), "cycles at least 2"),
    (dict(early_cycles=1), "2 cycles or more"),
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
            loop.on_frame(key, 1000, i % FPS == 0, t)
            if i % PAIR_EVERY == 0:
                loop.on_pair(key, {"top5_overlap": measure, "top1_equal": True}, t)
            if i % FPS == 0:
                loop.tick(t)
    assert engines == ["ours"] and loops["trial"].engine_trials["cam"].active
    assert asked["plain"] == [36] and asked["trial"] == []
    assert loops["trial"].controllers["cam"].counts["held_engine_trial"] > 0
    summary = loops["trial"].summary()["cam"]["engine_trials"]
    assert summary["active"] and summary["requests_sent"] == 1


def test_a_trial_whose_engine_is_shown_worse_ends_early_back_on_a():
    """Six cycles asked, B loses a tenth of the agreement at equal bits (noisy enough to need cycles): after three
    it is shown worse and the trial ends there, on A; with the early stop off it runs all six, same verdict."""
    def noisy(worse_by: float):
        rng = random.Random(7)  # each pair's measure wobbles, whichever engine runs

        def scene(t, engine):
            return 1000, (0.8 if engine == "none" else 0.8 - worse_by) + rng.gauss(0.0, 0.15)
        return scene

    early, cap = EngineTrial(settings(cycles=6, early_cycles=3)), Capture()
    run(early, cap, 400, noisy(0.1))
    verdict = early.trace[0]
    assert verdict["verdict"] == "a" and verdict["why"] == "b worse, ended early" and verdict["cycles"] == 3
    assert early.counts["ended_early"] == 1 and cap.engine == "none"
    assert [spec for _, spec in cap.asked][:6] == ["ours", "none", "ours", "none", "ours", "none"]
    full, cap = EngineTrial(settings(cycles=6, early_cycles=0)), Capture()
    run(full, cap, 600, noisy(0.1))
    assert full.trace[0]["why"] == "b worse" and full.trace[0]["cycles"] == 6 and "ended_early" not in full.counts
    assert full.trace[0]["t"] > verdict["t"] + 100  # three more B and A windows of 20 s
    # an engine that is no worse is never stopped early: all six cycles, then the usual verdict
    same, cap = EngineTrial(settings(cycles=6, early_cycles=3)), Capture()
    run(same, cap, 600, noisy(0.0))
    assert same.trace[0]["cycles"] == 6 and same.trace[0]["verdict"] == "a" and "ended_early" not in same.counts


def test_no_trial_starts_in_the_tick_that_asks_for_a_new_qp():
    """Live (bench/live_trial.sh), a trial started in the same tick as a QP request, and the new QP ended it two seconds
    later as `aborted: qp_changed`. No trial starts now in a tick that sends a QP change, nor while one is on its
    way (asked, not yet seen in the frames)."""
    from edgepipe.server.qp_control import Change

    class Controller:
        def __init__(self):
            self.change, self.frozen, self.asked = None, False, None

        def tick(self, t):
            return self.change

        def agreement_per_qp(self, t):
            return None

    class Trial:
        active = False

        def __init__(self):
            self.polls = []

        def poll(self, t, per_qp):
            self.polls.append(t)
            return "ours"

    asked, engines = [], []
    loop = ClosedLoop(LoopSettings(target=0.85), lambda sid, qp: asked.append(qp) or True, trials=settings(),
                      send_engine=lambda sid, spec: engines.append(spec) or True)
    controller, trial = Controller(), Trial()
    loop.controllers["cam"], loop.engine_trials["cam"] = controller, trial
    controller.change = Change(qp=36, reason="coarser", at=10.0, from_qp=34)
    loop.tick(10.0)
    assert asked == [36] and trial.polls == [] and engines == []
    controller.change, controller.asked = None, 36  # asked, not yet answered by frames at QP 36
    loop.tick(11.0)
    assert trial.polls == [] and engines == []
    controller.asked = None  # the capture obeyed
    loop.tick(12.0)
    assert trial.polls == [12.0] and engines == ["ours"]
