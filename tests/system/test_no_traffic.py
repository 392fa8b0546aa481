"""A monitor that received nothing says so, with what it saw and the likely causes, and exits 3
(issue 12): nothing listening, a silent capture, a capture that had already finished, CURVE keys
that do not match. Real processes and sockets on loopback."""
from __future__ import annotations

import subprocess
import sys

from edgepipe.commands.monitor import NOTHING_ARRIVED
from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.ops.service import SecurityOptions, ServiceOptions
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.security import write_keypair
from edgepipe.transport.sockets import Publisher, free_tcp_endpoint

from field_helpers import Feeder, PacedSource, Running, decode_frames

EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]
CAUSES = ("a wrong endpoint", "the capture is not running", "CURVE keys that do not match",
          "a capture that finished before this monitor joined")


def monitor(endpoint: str, *extra: str, idle: str = "2") -> subprocess.CompletedProcess:
    return subprocess.run(EDGEPIPE + ["monitor", "--connect", endpoint, "--no-classify", "--idle-timeout", idle,
                                      *extra], capture_output=True, text=True, timeout=120)


def says_nothing_arrived(result: subprocess.CompletedProcess, endpoint: str, seen: str) -> None:
    assert result.returncode == NOTHING_ARRIVED == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert f"monitor: no frame arrived from {endpoint}" in result.stderr
    assert seen in result.stderr, result.stderr
    assert all(cause in result.stderr for cause in CAUSES), result.stderr
    assert result.stdout == ""  # no empty table


def test_nothing_listening(tmp_path):
    endpoint = free_tcp_endpoint()
    result = monitor(endpoint, "--report", str(tmp_path / "r.json"))
    says_nothing_arrived(result, endpoint, "no connection to " + endpoint + " was ever made: nothing listens there")
    assert (tmp_path / "r.json").exists()  # the report is still written


def test_a_capture_that_sends_nothing():
    endpoint = free_tcp_endpoint()
    silent = Publisher(endpoint)  # bound, accepts the monitor, never sends
    try:
        result = monitor(endpoint)
    finally:
        silent.close()
    says_nothing_arrived(result, endpoint, f"connected to {endpoint}, but nothing was sent to this monitor")


def test_a_capture_that_had_finished(video_clip):
    """Only a capture's end-of-stream message came: its frames went out before the monitor joined."""
    feeder = Feeder()
    proc = subprocess.Popen(EDGEPIPE + ["monitor", "--connect", feeder.endpoint, "--no-classify", "--idle-timeout",
                                        "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        feeder.wait_subscriber(60)
        end = FrameHeader("cam", 120, 1e9, "hevc", 192, 108, 30, False, epoch=4, end_of_stream=True)
        feeder.send([end.pack(), b""])
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        feeder.close()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    says_nothing_arrived(result, feeder.endpoint, "only 1 end-of-stream message(s) arrived: a capture finished")


def test_curve_keys_that_do_not_match(tmp_path, video_clip):
    keys = tmp_path / "keys"
    for name in ("capture", "monitor", "stranger"):
        write_keypair(keys, name)
    endpoint = free_tcp_endpoint()
    camera = PacedSource(decode_frames(video_clip, 5, (96, 54)), fps=10)
    settings = CaptureSettings(source="paced", publish=endpoint, qp=30, gop=10, wait_subscriber_s=0, stream_id="cam")
    service = CaptureService(settings, ServiceOptions(security=SecurityOptions(
        key=str(keys / "capture.key_secret"), allow=(str(keys / "monitor.key"),))), source=camera)
    running = Running(service.run)
    try:  # the monitor's key is allowed, but the capture's public key it was given is someone else's
        result = monitor(endpoint, "--key", str(keys / "monitor.key_secret"), "--server-key",
                         str(keys / "stranger.key"), idle="3")
    finally:
        running.stop()
        service.close()
    says_nothing_arrived(result, endpoint, "the CURVE handshake failed")
    assert "--server-key is not the capture's public key" in result.stderr


def test_a_monitor_that_got_frames_exits_0(small_val_folder):
    endpoint = free_tcp_endpoint()
    proc = subprocess.Popen(EDGEPIPE + ["monitor", "--connect", endpoint, "--no-classify", "--frames", "12",
                                        "--idle-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        cap = subprocess.run(EDGEPIPE + ["capture", "--source", f"folder:{small_val_folder}", "--publish", endpoint,
                                         "--wait-subscriber", "60", "-q"], capture_output=True, text=True, timeout=120)
        assert cap.returncode == 0, cap.stderr
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "no frame arrived" not in err and "decoded 12" in out
