"""A hostile peer at the relay: a subscription flood from the monitors' side is capped (the monitors' side is
reset, the topics unsubscribed upstream), and the real monitor and camera carry on once it stops."""
from __future__ import annotations

import subprocess
import sys

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.relay.proxy import RelayLimits
from edgepipe.relay.service import RelayService
from edgepipe.server.service import MonitorService
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import PacedSource, Running, decode_frames, wait_for

FLOODER = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.SNDHWM, 0)
sock.connect(sys.argv[1])
for i in range(int(sys.argv[2])):
    sock.setsockopt(zmq.SUBSCRIBE, b"%05d" % i + bytes(995))
time.sleep(60)
"""


def test_a_subscription_flood_at_the_relay_is_capped_and_the_real_streams_carry_on(video_clip):
    frames = decode_frames(video_clip, 30, (192, 108))
    limits = RelayLimits(max_topic_bytes=32 * 1024)
    relay = RelayService(free_tcp_endpoint(), free_tcp_endpoint(), limits=limits)
    cams, mons = relay.bound
    relay_run = Running(relay.run)
    monitor = MonitorService(mons, None)
    capture = CaptureService(CaptureSettings(source="paced", publish="pub+connect:" + cams, gop=10, stream_id="gate"),
                             source=PacedSource(frames, fps=25))
    runs = [Running(monitor.run), Running(capture.run)]
    flooder = None
    try:
        assert wait_for(lambda: monitor.monitor.decoded >= 10, 20), _state("before the flood", monitor, relay)
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, mons, "2000"])
        assert wait_for(lambda: relay.relay.resets >= 1, 20), _state("no reset", monitor, relay)
        flooder.kill()
        flooder.wait()
        decoded = monitor.monitor.decoded
        assert wait_for(lambda: monitor.monitor.decoded >= decoded + 20, 30), \
            _state(f"the stream is not back (decoded {decoded} at the flooder's kill)", monitor, relay)
        # A flooder that reconnected between the reset and its kill holds topics until its death reaches the relay
        # as unsubscriptions (a clean-clone run once read 26 live topics a moment too early); wait for that.
        wait_for(lambda: relay.report()["subscriptions"]["topics_live"] <= 2, 10)
        report = relay.report()
        live_at_capture = len(capture.publisher.topics)
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait()
        for r in runs:
            r.stop()
        relay_run.stop()
        for s in (capture, monitor, relay):
            s.close()
    subs = report["subscriptions"]
    assert subs["floods"] >= 1 and subs["resets"] >= 1, subs
    assert subs["topics_live"] <= 2, subs  # the flood's topics unsubscribed; the monitor's b"" back
    assert live_at_capture <= 2, live_at_capture  # upstream too: the camera holds the real subscription only
    streams = monitor.report()["streams"]
    assert len(streams) == 1 and streams[0]["stream"] == "gate" and streams[0]["received"] > 0, streams


def _state(what: str, monitor, relay) -> str:
    """What a failed wait saw (this test failed twice in full runs on a loaded 2-core machine, never alone)."""
    return f"{what}: monitor decoded {monitor.monitor.decoded}, relay {relay.report()}"
