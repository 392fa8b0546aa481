"""The capture applies its budget: each library reads back what it was given, the start-up line and the
--stats JSON say it, and OpenCV's process-wide pool is put back when the loop closes."""
from __future__ import annotations

import json
import threading
import time

import cv2
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.media.codecs import hevc
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.sockets import Subscriber, free_tcp_endpoint

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


@pytest.fixture
def encoders(monkeypatch):
    """The options of every HEVC encoder the capture opens."""
    opened = []
    init = hevc.HevcEncoder.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self.options)

    monkeypatch.setattr(hevc.HevcEncoder, "__init__", spy)
    return opened


def test_the_loop_gives_each_library_its_threads(small_val_folder, encoders):
    before = cv2.getNumThreads()
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=free_tcp_endpoint(), engine="ours",
                               frames=3, size=(64, 64), wait_subscriber_s=0, threads="3,encoder=2,source=1,spin=off")
    loop = CaptureLoop(settings)
    try:
        # the engine's 2 cores as 2 frames at once, a thread each (ONNX Runtime may run frames side by side)
        assert (loop.budget.engine, loop.budget.engine_frames, loop.budget.encoder, loop.budget.source) == (1, 2, 2, 1)
        options = loop.engine._session.get_session_options()
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert cv2.getNumThreads() == 1
        assert loop.run().frames_sent == 3
    finally:
        loop.close()
    assert len(encoders) == 1 and ":pools=2:frame-threads=1" in encoders[0]["x265-params"]
    assert cv2.getNumThreads() == before  # process-wide: put back


def test_defaults_leave_every_library_alone(small_val_folder, encoders):
    before = cv2.getNumThreads()
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=free_tcp_endpoint(), engine="ours",
                               frames=2, size=(64, 64), wait_subscriber_s=0, threads="defaults")
    loop = CaptureLoop(settings)
    try:
        assert loop.engine._session.get_session_options().intra_op_num_threads == 0
        assert cv2.getNumThreads() == before
        loop.run()
    finally:
        loop.close()
    assert "pools" not in encoders[0]["x265-params"]


def test_the_command_says_the_budget_and_writes_it(small_val_folder, tmp_path, encoders):
    stats = tmp_path / "stats.json"
    result = CliRunner().invoke(cli, ["capture", "--source", f"folder:{small_val_folder}", "--publish",
                                      free_tcp_endpoint(), "--frames", "2", "--size", "64x64", "--wait-subscriber",
                                      "0", "--threads", "2,engine=1", "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    assert "threads: engine 1, encoder 2, source 1 of 2 cores (2,engine=1)" in result.output
    budget = json.loads(stats.read_text())["threads"]
    assert budget["policy"] == "2,engine=1" and budget["cores"] == 2 and budget["heavy"] == "encoder"
    assert (budget["engine"], budget["encoder"], budget["source"], budget["opencv"]) == (1, 2, 1, 1)
    assert ":pools=2:" in encoders[0]["x265-params"]


def sent_by_capture(folder, threads: str) -> tuple[list[tuple[int, bool, bytes]], int]:
    """What a capture of 10 photos through `ours` puts on the wire (seq, keyframe, payload), read as it goes."""
    endpoint = free_tcp_endpoint()
    sub = Subscriber(endpoint)
    got: list[list[bytes]] = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            parts = sub.recv(timeout_ms=50)
            if parts is not None:
                got.append(parts)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    settings = CaptureSettings(source=f"folder:{folder}", publish=endpoint, engine="ours", frames=10, size=(64, 64),
                               gop=4, wait_subscriber_s=10, threads=threads)
    loop = CaptureLoop(settings)
    try:
        frames_at_once = loop.budget.engine_frames
        stats = loop.run()
        deadline = time.monotonic() + 10
        while len(got) < stats.frames_sent + 1 and time.monotonic() < deadline:  # and the end of stream
            time.sleep(0.02)
    finally:
        stop.set()
        reader.join(5)
        loop.close()
        sub.close()
    headers = [(FrameHeader.unpack(p[0]), p[1]) for p in got]
    return [(h.seq, h.keyframe, payload) for h, payload in headers if not h.end_of_stream], frames_at_once


def test_frames_side_by_side_put_the_same_bytes_on_the_wire_in_the_same_order(small_val_folder):
    side_by_side, at_once = sent_by_capture(small_val_folder, "3")  # 3 cores: the engine's 2 as 2 frames
    one_by_one, one = sent_by_capture(small_val_folder, "3,engine-frames=1")
    assert (at_once, one) == (2, 1)
    assert len(side_by_side) == 10 and [seq for seq, _, _ in side_by_side] == list(range(10))
    assert side_by_side == one_by_one
