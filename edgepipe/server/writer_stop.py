"""How the monitor's writer threads (sinks, --predictions) stop: finish what is queued, within a bound."""
from __future__ import annotations

import queue
import threading
import time


def drain_and_stop(pending: queue.Queue, thread: threading.Thread, stop: threading.Event, timeout_s: float) -> int:
    """Let `thread` write what `pending` holds for at most `timeout_s`, then stop it. Returns how many items were
    left unwritten (taken out of the queue, for the caller to count); the thread may still be alive after a
    stuck write, which the caller checks before closing its files."""
    deadline = time.monotonic() + timeout_s
    while not pending.empty() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    stop.set()
    thread.join(max(0.1, deadline - time.monotonic()))
    left = 0
    while True:
        try:
            pending.get_nowait()
        except queue.Empty:
            return left
        left += 1
