"""`edgepipe relay` as systemd runs it: READY=1, WATCHDOG=1 while the proxy runs, STOPPING=1 and a whole report
on SIGTERM within the socket linger; a relay restart that the captures and monitors ride out by themselves,
with the loss counted at both ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.server.service import MonitorService
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import NotifySocket, PacedSource, Running, decode_frames, wait_for


def start_relay(cameras: str, monitors: str, notify: NotifySocket, report) -> subprocess.Popen:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"}
    return subprocess.Popen([sys.executable, "-m", "edgepipe.cli", "relay", "--cameras", cameras, "--monitors",
                             monitors, "--metrics", "127.0.0.1:0", "--report", str(report)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_relay(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)  # a hang fails here; the stop itself is the socket linger
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_a_relay_restart_is_ridden_out_and_its_loss_counted_at_both_ends(tmp_path, video_clip):
    frames = decode_frames(video_clip, 40, (192, 108))
    cameras, monitors = free_tcp_endpoint(), free_tcp_endpoint()
    notify = [NotifySocket(tmp_path / "first.notify"), NotifySocket(tmp_path / "second.notify")]
    reports = [tmp_path / "first.json", tmp_path / "second.json"]
    relay = start_relay(cameras, monitors, notify[0], reports[0])
    capture = monitor = None
    runs = []
    try:
        assert wait_for(lambda: "READY=1" in notify[0].lines(), 30), relay.stderr.read()
        monitor = MonitorService(monitors, None)
        capture = CaptureService(CaptureSettings(source="paced", publish="pub+connect:" + cameras, gop=10,
                                                 stream_id="yard"), source=PacedSource(frames, fps=25))
        runs = [Running(monitor.run), Running(capture.run)]
        assert wait_for(lambda: monitor.monitor.decoded >= 20, 30)
        assert wait_for(lambda: "WATCHDOG=1" in notify[0].lines(), 10)
        err = stop_relay(relay)
        assert notify[0].lines()[-1] == "STOPPING=1"
        first = json.loads(reports[0].read_text())  # whole, and what went through it
        assert first["frames"] >= 20 and first["streams"][0]["stream"] == "yard"
        assert "relay: forwarded" in err
        unsubscribed = capture.loop.stats.frames_unsubscribed
        assert wait_for(lambda: capture.loop.stats.frames_unsubscribed > unsubscribed + 5, 10)  # sent to nobody
        relay = start_relay(cameras, monitors, notify[1], reports[1])  # the same ports: both ends come back
        decoded = monitor.monitor.decoded
        assert wait_for(lambda: monitor.monitor.decoded >= decoded + 20, 30), relay.stderr.read()
        stats = runs[1].stop()  # the capture ends: its end of stream closes the epoch at the monitor
        runs = runs[:1]
        assert wait_for(lambda: monitor.monitor.end_of_stream["matched"] == 1, 15)
        stop_relay(relay)
    finally:
        for r in runs:
            r.stop()
        if relay.poll() is None:
            relay.kill()
        for s in (capture, monitor):
            if s is not None:
                s.close()
        for n in notify:
            n.close()
    runs = []
    (stream,) = monitor.report()["streams"]
    assert stream["received"] + stream["lost"] == stats.frames_sent  # exact across the restart
    assert stream["lost"] > 0 and stats.frames_unsubscribed > 0  # the loss, seen at both ends
    second = json.loads(reports[1].read_text())
    assert second["streams"][0]["ends"] == 1


def test_the_relay_refuses_plain_text_beyond_loopback_before_it_binds():
    result = subprocess.run([sys.executable, "-m", "edgepipe.cli", "relay", "--cameras", "tcp://0.0.0.0:0",
                             "--monitors", "tcp://127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "relay: refusing plain text on tcp://0.0.0.0:0" in result.stderr
