"""The capture applies its budget: each library reads back what it was given, the start-up line and the
--stats JSON say it, and OpenCV's process-wide pool is put back when the loop closes."""
from __future__ import annotations

import json

import cv2
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.media.codecs import hevc
from edgepipe.transport.sockets import free_tcp_endpoint

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
        assert (loop.budget.engine, loop.budget.encoder, loop.budget.source) == (2, 2, 1)
        options = loop.engine._session.get_session_options()
        assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
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
