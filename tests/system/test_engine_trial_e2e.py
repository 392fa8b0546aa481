"""Engine trials end to end (issue 14 item 4, "and pre-transform"): a real `edgepipe capture --allow-remote-engine
none,ours` of real images with --reference-every 1, a real `edgepipe monitor --target-agreement ... --target-engines
none,ours` on loopback with the real recognizer. The QP loop cannot move (its range is QP 36 alone), so the trial
is the only thing that moves: the monitor asks for ours and back, twice (A-B-A-B-A), gives a verdict,
and both sides count each request; the frames the monitor decoded carry both engines' model ids. Assertions are
on counts, not on which engine wins (that is the scene's)."""
from __future__ import annotations

import json

import pytest

from edgepipe.engines import model_id_of
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import run_monitor_and_capture

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")



def test_a_trial_runs_a_b_a_and_both_sides_count_each_engine_request(tmp_path, small_val_folder):
    data, control = free_tcp_endpoint(), free_tcp_endpoint()
    report, stats = tmp_path / "report.json", tmp_path / "stats.json"
    # paced (8 frames/s, 400 frames: 50 s of stream), so the trial's five windows fit while the capture runs
    cap, out, err = run_monitor_and_capture(
        ["-v", "monitor", "--connect", data, "--control", control, "--report",
         str(report), "--idle-timeout", "8", "--classify-policy", "all",
         "--target-agreement", "0.5", "--target-pairs", "4",
         "--target-seconds", "0", "--target-qp-range", "36:36",
         "--target-engines", "none,ours", "--engine-trial-window", "4", "--engine-trial-cycles", "2",
         "--engine-trial-every", "1000", "-q"],
        ["-v", "capture", "--source", f"folder:{small_val_folder}", "--loop",
         "--frames", "400", "--realtime", "--fps", "8", "--publish", data,
         "--control", control, "--allow-remote-engine", "none,ours",
         "--engine", "none", "--qp", "36", "--gop", "8", "--size", "96x96",
         "--reference-every", "1", "--reference-share", "0",
         "--wait-subscriber", "60", "--stream-id", "trial", "--stats", str(stats)],
        timeout=240)

    # the monitor: one trial, A-B-A-B-A, with a verdict; its engine requests all sent
    rep = json.loads(report.read_text())
    trials = rep["closed_loop"]["trial"]["engine_trials"]
    assert trials["counts"]["trials"] == 1 and trials["requests_unsent"] == 0
    verdict = trials["trace"][-1]
    assert verdict["verdict"] in ("a", "b") and verdict["cycles"] == 2 and verdict["qp"] == 36
    won = verdict["verdict"] == "b"
    assert trials["requests_sent"] == (5 if won else 4)  # ours, none, ours, none, and ours once more if it won
    assert rep["closed_loop"]["trial"]["changes"] == 0  # the QP loop held still

    # the capture: it obeyed each request, counted and logged the changes
    remote = json.loads(stats.read_text())["remote_engine"]
    assert remote["allowed"] == ["none", "ours"] and remote["refused"] == {}
    assert remote["requests"] == trials["requests_sent"] and remote["changes"] == remote["requests"]
    assert [spec for _, spec in remote["trace"]] == ["ours", "none", "ours", "none", "ours"][:remote["changes"]]
    assert remote["engine"] == ("ours" if won else "none")
    assert cap.stderr.count("remote engine: change ") == remote["changes"]

    # the frames say so: rows of both engines at QP 36, nothing lost
    assert {(r["model"], r["qp"]) for r in rep["rows"]} == {("none", 36), (model_id_of("ours"), 36)}
    assert rep["lost"] == 0
    assert f"engine trials trial: none vs ours: engine now {remote['engine']}; 1 trial(s): other engine won " in out
    assert trials["engine"] == remote["engine"]
