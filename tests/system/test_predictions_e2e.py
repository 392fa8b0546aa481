"""`edgepipe monitor --predictions FILE.jsonl` end to end (issue 14 item 2): a real capture of labelled photos over
loopback into a real monitor process with the real recognizer; the file is read back line by line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from edgepipe.core.datasets import list_labelled_images
from edgepipe.core.labels import class_name
from edgepipe.transport.sockets import free_tcp_endpoint

EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]


def test_cli_writes_one_line_per_classified_frame_with_top5_names_and_labels(tmp_path, small_val_folder):
    endpoint = free_tcp_endpoint()
    report, predictions = tmp_path / "report.json", tmp_path / "predictions.jsonl"
    monitor = subprocess.Popen(EDGEPIPE + ["monitor", "--connect", endpoint, "--report", str(report), "--frames", "12",
                                           "--idle-timeout", "60", "--predictions", str(predictions),
                                           "--classify-policy", "all", "--classify-batch", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cap = subprocess.run(EDGEPIPE + ["capture", "--source", f"folder:{small_val_folder}", "--publish", endpoint,
                                         "--qp", "30", "--gop", "4", "--wait-subscriber", "60", "--stream-id", "lab"],
                             capture_output=True, text=True, timeout=120)
        assert cap.returncode == 0, cap.stderr
        out, err = monitor.communicate(timeout=120)
    finally:
        monitor.kill()
    assert monitor.returncode == 0, err
    rep = json.loads(report.read_text())
    (row,) = rep["rows"]
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]

    # every decoded frame classified, one line each
    assert rep["decoded"] == rep["classified"] == 12 and rep["unclassified"] == 0
    assert sorted(line["seq"] for line in lines) == list(range(12))
    assert rep["predictions"] == {"path": str(predictions), "written": 12, "dropped": 0, "dropped_at_stop": 0,
                                  "errors": {}}
    assert "predictions: 12 lines appended to" in out
    # what each line says of its frame
    assert {(line["stream"], line["codec"], line["qp"], line["model"], line["recognizer"]) for line in lines} == \
        {("lab", "hevc", 30, "none", "efficientnet-lite0")}
    assert len({line["epoch"] for line in lines}) == 1
    assert sum(line["bytes"] for line in lines) == row["bytes"]
    assert [line["keyframe"] for line in sorted(lines, key=lambda x: x["seq"])] == [s % 4 == 0 for s in range(12)]
    # the top-5: five classes, most probable first, named as ImageNet names them
    for line in lines:
        top5 = line["top5"]
        p = [c["p"] for c in top5]
        assert len(top5) == len({c["class"] for c in top5}) == 5
        assert p == sorted(p, reverse=True) and 0 < sum(p) <= 1 + 1e-5
        assert all(c["name"] == class_name(c["class"]) for c in top5)
    # the labels the capture sent, in its order, and top-1 as the report computes it
    items = list_labelled_images(small_val_folder)
    by_seq = sorted(lines, key=lambda x: x["seq"])
    assert [line["label"] for line in by_seq] == [i.label for i in items]
    assert all(line["label_name"] == class_name(line["label"]) for line in lines)
    top1 = np.mean([line["top5"][0]["class"] == line["label"] for line in lines])
    assert row["top1"] == round(top1, 5) and top1 >= 0.75
    assert np.mean([any(c["class"] == line["label"] for c in line["top5"]) for line in lines]) >= top1
