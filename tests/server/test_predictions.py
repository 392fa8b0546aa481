"""`monitor --predictions FILE.jsonl` (issue 14 item 2): the writer beside the monitor, with real frames and real
HEVC, and failing disks (/dev/full, a file size limit). End to end over loopback: tests/system/test_predictions_e2e.py."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.labels import class_name
from edgepipe.recognition import TopK
from edgepipe.server.classify import Recognizer
from edgepipe.server.monitor import Monitor, format_table
from edgepipe.server.predictions import PredictionWriter, parse_predictions_path, prediction_record
from edgepipe.transport.protocol import FrameHeader

from field_helpers import decode_frames, hevc_messages


@pytest.fixture(scope="module")
def clip(video_clip):
    return decode_frames(video_clip, 10, (192, 108))


def fixed_top5(frames: np.ndarray) -> TopK:
    """A recognizer that always answers classes 7, 3, 1, 0, 2 (a stand-in: the writer is under test here)."""
    n = len(frames)
    return TopK(np.tile([7, 3, 1, 0, 2], (n, 1)), np.tile(np.float32([0.5, 0.2, 0.1, 0.1, 0.05]), (n, 1)))


def test_a_line_per_classified_frame_with_its_top5_named(tmp_path, clip):
    path = tmp_path / "p.jsonl"
    path.write_text('{"an": "earlier run"}\n')  # appended to, never overwritten
    writer = PredictionWriter(path)
    mon = Monitor(Recognizer(fixed_top5, name="fixed"))
    mon.predictions = writer
    msgs = hevc_messages(clip, "cam", 4, gop=5, qp=31, model="ours-abc")
    for m in msgs:
        mon.handle(m)
    writer.close()
    first, *lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert first == {"an": "earlier run"} and len(lines) == 10
    header = FrameHeader.unpack(msgs[3][0])
    assert lines[3] == {"stream": "cam", "epoch": 4, "seq": 3, "codec": "hevc", "qp": 31, "model": "ours-abc",
                        "recognizer": "fixed", "keyframe": False, "bytes": len(msgs[3][1]),
                        "capture_time": header.capture_time,
                        "top5": [{"class": c, "name": class_name(c), "p": p} for c, p in
                                 [(7, 0.5), (3, 0.2), (1, 0.1), (0, 0.1), (2, 0.05)]]}
    assert [line["keyframe"] for line in lines] == [s % 5 == 0 for s in range(10)]
    assert mon.report()["predictions"] == {"path": str(path), "written": 10, "dropped": 0, "dropped_at_stop": 0,
                                           "errors": {}}
    assert f"predictions: 10 lines appended to {path}" in format_table(mon.report())


def test_a_label_is_written_with_its_name_and_a_recognizer_without_probabilities_gives_null():
    header = FrameHeader("cam", 5, 12.5, "jpeg", 224, 224, 90, True, 217)
    record = prediction_record(header, 1000, "per-frame", np.array([217]), None)
    assert record["label"] == 217 and record["label_name"] == class_name(217) == "English springer"
    assert record["top5"] == [{"class": 217, "name": "English springer", "p": None}]
    unlabelled = prediction_record(FrameHeader("cam", 5, 12.5, "jpeg", 224, 224, 90, True), 1, "r", [0], [1.0])
    assert "label" not in unlabelled and "label_name" not in unlabelled


def test_a_full_disk_is_counted_logged_once_and_the_monitor_goes_on(tmp_path, clip, caplog):
    path = tmp_path / "p.jsonl"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC
    writer = PredictionWriter(path)
    mon = Monitor(Recognizer(fixed_top5))
    mon.predictions = writer
    caplog.set_level(logging.WARNING, logger="edgepipe.server.predictions")
    for m in hevc_messages(clip, "cam", 4, gop=5):
        assert mon.handle(m) is not None
    writer.close()
    rep = mon.report()
    assert rep["decoded"] == rep["classified"] == 10
    assert rep["predictions"]["written"] == 0 and rep["predictions"]["errors"] == {"ENOSPC": 10}
    warnings = [r.getMessage() for r in caplog.records if r.name == "edgepipe.server.predictions"]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
    assert "not written: ENOSPC=10" in format_table(rep)


def test_a_line_cut_by_a_file_size_limit_is_taken_back(tmp_path):
    """RLIMIT_FSIZE: the kernel writes part of the line that crosses the limit, then refuses (EFBIG). The part is
    truncated away: every line in the file is whole JSON (in a child process: the limit applies to all its files)."""
    path = tmp_path / "p.jsonl"
    code = textwrap.dedent(f"""
        import json, resource
        from edgepipe.server.predictions import PredictionWriter, prediction_record
        from edgepipe.transport.protocol import FrameHeader
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        writer = PredictionWriter({str(path)!r})
        for seq in range(10):
            header = FrameHeader("cam", seq, 1.0 + seq, "hevc", 192, 108, 30, seq == 0, -1, "none", 1)
            writer.offer(prediction_record(header, 100, "r", [1, 2, 3, 4, 5], [0.5, 0.2, 0.1, 0.1, 0.05]))
        writer.close()
        print(json.dumps(writer.report()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    text = path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # all whole: a cut line would not parse
    assert text.endswith("\n") and len(text) <= 2000
    assert report["written"] == len(lines) >= 1 and report["errors"] == {"EFBIG": 10 - len(lines)}
    assert [line["seq"] for line in lines] == list(range(len(lines)))


@pytest.mark.parametrize("spec, message", [
    ("{tmp}", "is a folder; give a file"),
    ("{tmp}/missing/p.jsonl", "folder {tmp}/missing does not exist"),
    ("/proc/edgepipe-predictions.jsonl", "cannot create the file"),
])
def test_unusable_paths_are_refused_before_anything_starts(tmp_path, spec, message):
    spec, message = (x.replace("{tmp}", str(tmp_path)) for x in (spec, message))
    with pytest.raises(EdgepipeError, match=message):
        parse_predictions_path(spec)


def test_the_check_leaves_no_file_behind(tmp_path):
    assert parse_predictions_path(str(tmp_path / "p.jsonl")) == tmp_path / "p.jsonl"
    assert not (tmp_path / "p.jsonl").exists()
