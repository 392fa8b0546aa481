"""Frames through the engine several at a time: handed on in order, never more at once than allowed, an engine
that may not overlap runs alone, and a failed run raises where it is handed on."""
from __future__ import annotations

import random
import threading
import time

import pytest

from edgepipe.edge.engine_runs import OrderedRuns, run_in_order


class Tracker:
    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.threads: set[str] = set()

    def run(self, value, seconds):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.current_thread().name)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1
        return value * 10


@pytest.mark.parametrize("at_once", [1, 2, 3])
def test_results_come_back_in_order_and_at_most_at_once_overlap(at_once):
    t, rng = Tracker(), random.Random(at_once)
    runs = OrderedRuns(at_once)
    out = []
    try:
        for i in range(30):  # run times out of order: a later frame often finishes first
            out += runs.submit(lambda i=i: t.run(i, rng.uniform(0, 0.004)), i)
            assert runs.in_flight < at_once
        out += runs.drain()
    finally:
        runs.close()
    assert out == [(i, i * 10) for i in range(30)]
    assert t.most == at_once
    if at_once == 1:
        assert t.threads == {threading.current_thread().name}  # one at a time: on the caller's thread


def test_a_run_that_may_not_overlap_waits_for_those_in_flight():
    t = Tracker()
    runs = OrderedRuns(2)
    try:
        first = runs.submit(lambda: t.run(1, 0.05), "a")
        alone = runs.submit(lambda: t.run(2, 0.0), "b", alone=True)
    finally:
        runs.close()
    assert first == [] and alone == [("a", 10), ("b", 20)]
    assert t.most == 1


def test_a_failed_run_raises_where_it_is_handed_on():
    def boom():
        raise RuntimeError("engine failed")

    runs = OrderedRuns(2)
    handed_on = []
    try:
        with pytest.raises(RuntimeError, match="engine failed"):
            handed_on += runs.submit(boom, "a")  # raises here if done already, else from the next call
            handed_on += runs.submit(lambda: 1, "b")
            handed_on += runs.drain()
    finally:
        runs.close()
    assert handed_on == []  # nothing after the failed frame was handed on before it


def test_run_in_order_and_bad_counts():
    assert run_in_order(lambda v: v + 1, range(10), 3) == list(range(1, 11))
    with pytest.raises(ValueError):
        OrderedRuns(0)
