"""Frames through the engine several at a time, handed on in the order they came (issue 13 item 1).

On a CPU, one frame on two ONNX Runtime threads ran 1.2-1.7 x as fast as on one: the threads wait for each other
at every operator. Two frames at once, one thread each, ran 1.5-2.1 x (docs/benchmarks.md, "Frames at once"). So where an
engine's run() may be called from several threads at once (an ONNX Runtime session on the CPU may), the capture's
engine stage keeps up to `at_once` frames in flight and passes each on only after every frame before it.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class OrderedRuns:
    """Runs `fn()` calls up to `at_once` at a time; results come back in submission order.

    submit() returns the (item, result) pairs that are done and due: with `at_once` = 1 the call's own, at once;
    otherwise the oldest once `at_once` are in flight. drain() waits for the rest. A run that raised raises its
    exception from the call that hands it on. close() waits for runs in flight (an engine must not be closed
    under one) and drops those not started.
    """

    def __init__(self, at_once: int, name: str = "edgepipe-engine"):
        if at_once < 1:
            raise ValueError(f"at_once must be >= 1, got {at_once}")
        self.at_once = at_once
        self._pool = ThreadPoolExecutor(at_once, thread_name_prefix=name) if at_once > 1 else None
        self._pending: deque[tuple[Any, Future]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, fn: Callable[[], Any], item: Any, alone: bool = False) -> list[tuple[Any, Any]]:
        """Start fn() for `item`. alone: fn may not overlap another run (an engine that is not thread-safe):
        the runs in flight finish first, then fn runs on the calling thread."""
        if self._pool is None or alone:
            done = self.drain()
            done.append((item, fn()))
            return done
        self._pending.append((item, self._pool.submit(fn)))
        done = []
        while len(self._pending) >= self.at_once or (self._pending and self._pending[0][1].done()):
            first, future = self._pending.popleft()
            done.append((first, future.result()))
        return done

    def drain(self) -> list[tuple[Any, Any]]:
        """Every run in flight, waited for, in order."""
        done = []
        while self._pending:
            item, future = self._pending.popleft()
            done.append((item, future.result()))
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


def run_in_order(fn: Callable[[Any], Any], items, at_once: int) -> list:
    """fn(item) for every item, up to `at_once` at a time; the results in the items' order (the benchmark's
    "engine alone" under the budget the capture gives it)."""
    runs = OrderedRuns(at_once)
    try:
        out = [r for item in items for _, r in runs.submit(lambda item=item: fn(item), item)]
        return out + [r for _, r in runs.drain()]
    finally:
        runs.close()
