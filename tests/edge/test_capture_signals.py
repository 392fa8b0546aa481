"""A stop signal that the kernel hands to a stage thread (an ONNX Runtime or x265 worker: any thread that does not
block it may get a process-directed signal) still stops the capture: the main thread waits for the stages in
slices and runs the handler. It waited in one unbounded join, so a `--loop` capture never saw its Ctrl-C (a hung
test_hostile run on a loaded machine)."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.transport.sockets import free_tcp_endpoint

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def test_a_sigint_delivered_to_a_stage_thread_stops_a_looping_capture(video_clip):
    settings = CaptureSettings(source=str(video_clip), publish=free_tcp_endpoint(), size=(96, 96), loop=True,
                               wait_subscriber_s=0, stream_id="sig")
    loop = CaptureLoop(settings)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    seen: dict = {}

    def deliver():
        while not getattr(loop, "_threads", None) or not all(t.ident for t in loop._threads):
            time.sleep(0.05)
        time.sleep(0.5)  # the stages are running and the main thread is waiting for them
        reader = loop._threads[0]
        seen["sent_at"] = time.monotonic()
        signal.pthread_kill(reader.ident, signal.SIGINT)  # to the reader thread, not the main one
        if not stop.wait(20):  # the old join would wait for ever: end the test instead of hanging CI
            seen["timed_out"] = True
            loop._abort.set()

    sender = threading.Thread(target=deliver, daemon=True)
    sender.start()
    try:
        stats = loop.run(stop)
    finally:
        loop.close()
    sender.join(30)
    assert "timed_out" not in seen, "the main thread never ran the SIGINT handler"
    assert time.monotonic() - seen["sent_at"] < 10
    assert stats.frames_sent > 0
