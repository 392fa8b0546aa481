"""The live status line of capture and monitor (issue 12): where it goes (terminal, log, nowhere),
what it says, from real runs over loopback (real images, real HEVC, a real recognizer)."""
from __future__ import annotations

import logging
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time

import pytest

from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.ops.status import StatusReporter, capture_line, capture_sample, choose_mode, monitor_line, monitor_sample
from edgepipe.server.classify import Recognizer
from edgepipe.server.monitor import Monitor
from edgepipe.transport.sockets import Subscriber, free_tcp_endpoint

from field_helpers import wait_for

EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]


class Terminal:
    def isatty(self):
        return True


class Pipe:
    def isatty(self):
        return False


@pytest.mark.parametrize("quiet, verbose, every, stream, expected", [
    (False, False, None, Terminal(), ("tty", 2.0)),  # a terminal: by default, in place
    (False, False, 7.0, Terminal(), ("tty", 7.0)),
    (False, False, None, Pipe(), (None, 0.0)),  # a journal is not filled by default
    (False, False, 3.0, Pipe(), ("log", 3.0)),  # ... unless asked
    (False, True, None, Pipe(), ("log", 5.0)),  # -v: log lines
    (False, True, None, Terminal(), ("log", 5.0)),
    (True, False, None, Terminal(), (None, 0.0)),  # -q: never
    (True, True, None, Pipe(), (None, 0.0)),
])
def test_where_the_status_line_goes(quiet, verbose, every, stream, expected):
    assert choose_mode(quiet, verbose, every, stream) == expected


def test_lines_from_a_real_capture_and_monitor(small_val_folder):
    """Samples before and after a real run of 12 labelled images: the lines carry what the run did."""
    from edgepipe.recognition import Classifier

    classifier = Classifier("efficientnet-lite0")
    endpoint = free_tcp_endpoint()
    sub = Subscriber(endpoint)
    mon = Monitor(Recognizer.from_classifier(classifier), sub)
    stop = threading.Event()
    thread = threading.Thread(target=mon.run, args=(stop,), daemon=True)
    thread.start()
    loop = CaptureLoop(CaptureSettings(source=f"folder:{small_val_folder}", publish=endpoint, qp=30, gop=4, fps=10,
                                       wait_subscriber_s=10, stream_id="lab"))
    try:
        cap0, mon0 = capture_sample(loop), monitor_sample(mon)
        stats = loop.run()
        # 12 frames and the end of stream, fully accounted, and the 12 frames classified beside the decoding loop
        assert wait_for(lambda: mon.settled >= 13 and mon.classified >= 12, 30)
        cap1, mon1 = capture_sample(loop), monitor_sample(mon)
    finally:
        stop.set()
        thread.join(10)
        loop.close()
        sub.close()
    report = mon.report()
    row = report["rows"][0]
    cline, mline = capture_line(cap0, cap1), monitor_line(mon0, mon1)
    # kbit/s of the interval is on the stream clock: 12 frames at --fps 10 are 1.2 s of stream
    kbit = stats.bytes_sent * 8 / 1000 / 1.2
    assert re.fullmatch(r"capture lab: [\d.]+ frames/s, ([\d.]+) kbit/s, queues 0/0/0 of 4, dropped 0, "
                        r"latency p50 \d+ ms, monitors 1, sent 12", cline), cline
    assert float(re.search(r"([\d.]+) kbit/s", cline).group(1)) == pytest.approx(kbit, abs=0.1)
    m = re.fullmatch(r"monitor: [\d.]+ frames/s, ([\d.]+) kbit/s, queue \d+, classify queue 0, lost 0, rejected 0, "
                     r"top-1 ([\d.]+)%, latency p50 \d+ ms, decoded 12, classified 12", mline)
    assert m, mline
    assert float(m.group(1)) == pytest.approx(row["kbit_s"], abs=0.1)
    assert float(m.group(2)) == pytest.approx(100 * row["top1"], abs=0.05)
    # nothing new: the monitor says it is idle, and why
    assert "(idle: no message for" in monitor_line(mon1, monitor_sample(mon))


def test_log_mode_writes_plain_lines_and_a_failing_sample_does_not_stop_it(caplog):
    calls = []

    def sample():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a sample that fails once")
        return {"n": len(calls)}

    caplog.set_level(logging.INFO, logger="edgepipe.status")
    reporter = StatusReporter(sample, lambda prev, cur: f"status {prev['n']}->{cur['n']}", "log", 0.05)
    with reporter:
        assert wait_for(lambda: reporter.lines >= 3, 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "edgepipe.status"]
    assert lines[:2] == ["status 1->3", "status 3->4"]


def test_terminal_mode_rewrites_in_place_and_a_log_message_clears_it_first():
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        reporter = StatusReporter(lambda: {}, lambda prev, cur: "status line", "tty", 0.05, stream=stream)
        with reporter:
            assert wait_for(lambda: reporter.lines >= 2, 10)
            logging.getLogger("edgepipe.test").warning("a warning")
            assert wait_for(lambda: reporter.lines >= 4, 10)
        stream.flush()
    finally:
        root.removeHandler(handler)
        stream.close()
    with os.fdopen(read, newline="") as f:  # keep the carriage returns
        text = f.read()
    assert text.startswith("\rstatus line\x1b[K\rstatus line\x1b[K")
    assert "\r\x1b[Ka warning\n\rstatus line\x1b[K" in text  # cleared, then the warning on a line of its own
    assert text.endswith("\r\x1b[K")  # stop leaves a clean line for what follows


def _capture_args(folder, endpoint, *extra):
    return ["capture", "--source", f"folder:{folder}", "--publish", endpoint, "--qp", "30", "--realtime",
            "--fps", "8", "--wait-subscriber", "0", "--stream-id", "lab", *extra]


def _run_with_stderr_on_a_terminal(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Runs `edgepipe ARGS` with stderr on a pseudo-terminal; returns (exit status, what it wrote there)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(EDGEPIPE + args, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_capture_on_a_terminal_shows_the_line_in_place(small_val_folder):
    """12 images at 8 frames/s: 1.5 s; a line every 0.5 s, rewritten in place on the terminal."""
    code, err = _run_with_stderr_on_a_terminal(_capture_args(small_val_folder, free_tcp_endpoint(),
                                                             "--status-every", "0.5"))
    assert code == 0, err
    assert re.search(r"\rcapture lab: [\d.]+ frames/s, [\d.]+ kbit/s, queues [\d/]+ of 4, dropped 0", err), err
    assert "\x1b[K" in err and "capture: sent 12 frames" in err


def test_quiet_capture_on_a_terminal_says_only_its_result(small_val_folder):
    code, err = _run_with_stderr_on_a_terminal(_capture_args(small_val_folder, free_tcp_endpoint(), "-q"))
    assert code == 0, err
    assert "frames/s, " not in err.split("capture: sent")[0]  # no status line, no start-up line
    assert "->" not in err
    assert "capture: sent 12 frames" in err


def test_without_a_terminal_the_line_is_a_log_line_only_when_asked(small_val_folder):
    plain = subprocess.run(EDGEPIPE + _capture_args(small_val_folder, free_tcp_endpoint()), capture_output=True,
                           text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert "edgepipe.status" not in plain.stderr and "\r" not in plain.stderr
    asked = subprocess.run(EDGEPIPE + _capture_args(small_val_folder, free_tcp_endpoint(), "--status-every", "0.5"),
                           capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0, asked.stderr
    lines = [l for l in asked.stderr.splitlines() if "edgepipe.status" in l]
    assert lines and all(re.search(r"INFO edgepipe.status: capture lab: [\d.]+ frames/s", l) for l in lines), \
        asked.stderr
    assert "\r" not in asked.stderr
    verbose = subprocess.run(EDGEPIPE[:3] + ["-v"] + _capture_args(small_val_folder, free_tcp_endpoint(),
                                                                   "--status-every", "0.5"),
                             capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 0, verbose.stderr
    assert any("INFO edgepipe.status: capture lab:" in l for l in verbose.stderr.splitlines()), verbose.stderr


def test_the_capture_counts_the_subscriptions_that_take_its_stream_and_the_relay_line():
    from edgepipe.ops.status import relay_line, subscriptions_taking
    from edgepipe.transport.protocol import stream_bucket, stream_topic
    from edgepipe.transport.topics import StreamSelection

    mine = StreamSelection(shard=(stream_bucket("door") % 4, 4)).topics()
    other = StreamSelection(shard=((stream_bucket("door") + 1) % 4, 4)).topics()
    topics = {b"": 2, stream_topic("door"): 1, stream_topic("gate"): 1, **{t: 1 for t in mine + other}}
    assert subscriptions_taking(topics, "door") == 2 + 1 + 1  # everything, by name, its shard's bucket
    line = relay_line({"t": 0.0, "frames": 0, "bytes": 0},
                      {"t": 2.0, "frames": 50, "bytes": 250_000, "streams": 2, "cameras": 2, "monitors": 3,
                       "topics": 129})
    assert line == ("relay: 25.0 frames/s in, 1.00 Mbit/s, streams 2, cameras 2, monitors 3, topics 129, "
                    "forwarded 50")
