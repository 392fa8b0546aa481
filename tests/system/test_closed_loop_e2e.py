"""The closed loop end to end (issue 14 item 4): a real `edgepipe capture` of real images at HEVC QP 42 with
--reference-every 1 and --allow-remote-qp, a real `edgepipe monitor --target-agreement 1.0` (a floor that QP 42
on 96x96 images cannot hold) on loopback with the real recognizer. The loop must move the QP finer; every change
is counted on both sides (the monitor's requests, the capture's obeyed requests and changes) and the frames the
monitor decoded carry the new QPs. Assertions are on counts and directions, not on times."""
from __future__ import annotations

import json

import pytest

from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import run_monitor_and_capture

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")

START_QP = 42


def test_the_loop_moves_the_capture_qp_finer_to_reach_the_floor_and_both_sides_count_each_change(tmp_path,
                                                                                                small_val_folder):
    data, control = free_tcp_endpoint(), free_tcp_endpoint()
    report, stats = tmp_path / "report.json", tmp_path / "stats.json"
    # paced (6 frames/s, 72 frames: 12 s of stream) so the monitor's requests come while the capture runs
    cap, out, err = run_monitor_and_capture(
        ["-v", "monitor", "--connect", data, "--control", control, "--report",
         str(report), "--idle-timeout", "8", "--classify-policy", "all",
         "--target-agreement", "1.0", "--target-pairs", "4", "--target-seconds", "0", "--target-interval",
         "0", "--target-step", "4", "--target-qp-range", "22:42", "-q"],
        ["-v", "capture", "--source", f"folder:{small_val_folder}", "--loop",
         "--frames", "72", "--realtime", "--fps", "6", "--publish", data,
         "--control", control, "--allow-remote-qp", "22:42", "--qp", str(START_QP),
         "--gop", "4", "--size", "96x96", "--reference-every", "1", "--reference-share", "0",
         "--wait-subscriber", "60", "--stream-id", "loop", "--stats", str(stats)],
        timeout=240)

    # the capture: it obeyed requests, each moving the QP finer, logged and counted
    remote = json.loads(stats.read_text())["remote_qp"]
    assert remote["allowed"] == [22, 42] and remote["refused"] == {}
    assert remote["changes"] >= 1 and remote["requests"] >= remote["changes"]
    assert remote["qp"] < START_QP
    trace = [qp for _, qp in remote["trace"]]
    assert trace == sorted(trace, reverse=True) and len(trace) == remote["changes"]  # finer each time
    assert cap.stderr.count("remote QP: change ") == remote["changes"]
    assert f"remote QP: allowed 22:42, {remote['requests']} requests obeyed, {remote['changes']} changes" in cap.stderr

    # the monitor: it asked (finer each time), every request sent; the capture obeyed every one that arrived
    rep = json.loads(report.read_text())
    loop = rep["closed_loop"]["loop"]
    assert loop["requests_unsent"] == 0 and loop["requests_sent"] == loop["changes"] >= remote["requests"]
    assert loop["counts"].get("coarser", 0) == 0 and loop["counts"]["finer"] >= 1
    asked = [c["to"] for c in loop["trace"]]
    assert asked[:len(trace)] == trace  # the capture applied the QPs asked for, in order
    assert all(c["reason"] == "finer" and c["to"] < c["from"] and c["measured"] < 1.0 for c in loop["trace"])
    # the frames say so: rows at QP 42 and at each QP the capture moved to
    assert {START_QP, *trace} <= {r["qp"] for r in rep["rows"]}
    assert rep["lost"] == 0
    assert "closed loop loop: top5 overlap >= 1 (band 0.01, memory 240 s, time-shared, stream mean " in out
    assert "), QP 22:42 step 4: QP now " in out
