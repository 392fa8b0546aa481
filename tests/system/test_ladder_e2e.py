"""The operating-point ladder end to end (issue 14 item 3): a real `edgepipe capture --ladder hevc:30,36,42,48 --ab
none,ours --reference-every 1` of real images (real HEVC, the shipped `ours` through ONNX Runtime) into a real
`edgepipe monitor` on loopback with the real recognizer. Every (QP, model) pair reaches the monitor's rows, the
live BD-rate of ours against none is reported (a figure, or why there is none), and the same figures come offline
from the monitor's --predictions lines."""
from __future__ import annotations

import json

import pytest

from edgepipe.server.live_rd import from_predictions
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import run_monitor_and_capture

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")

QPS = (30, 36, 42, 48)
FRAMES = 32  # 8 operating points x 2 GOPs of 2 frames


def test_a_ladder_draws_both_curves_and_the_live_bd_rate_matches_the_offline_one(tmp_path, small_val_folder):
    # the monitor stops 8 s after the capture's last message (--frames would stop it before the last reference)
    endpoint = free_tcp_endpoint()
    report, stats, predictions = (tmp_path / name for name in ("report.json", "stats.json", "predictions.jsonl"))
    cap, out, err = run_monitor_and_capture(
        ["monitor", "--connect", endpoint, "--report", str(report),
         "--idle-timeout", "8", "--classify-policy",
         "all", "--predictions", str(predictions), "--rd-window", "3600", "-q"],
        ["-v", "capture", "--source", f"folder:{small_val_folder}", "--loop",
         "--frames", str(FRAMES), "--publish", endpoint, "--ladder",
         "hevc:" + ",".join(map(str, QPS)), "--ab", "none,ours", "--gop", "2",
         "--size", "96x96", "--reference-every", "1", "--reference-share", "0", "--wait-subscriber", "60",
         "--stream-id", "lab", "--stats", str(stats)],
        timeout=180)

    # the capture: 15 switches, logged; 4 frames at each of the 8 points
    sent = json.loads(stats.read_text())
    ladder = sent["ladder"]
    assert ladder["switches"] == FRAMES // 2 - 1 and cap.stderr.count("ladder: switch ") == ladder["switches"]
    assert "capture: ladder: hevc QP 30,36,42,48 x engines none,ours: 8 operating points" in cap.stderr
    ours = next(p["model"] for p in ladder["points"] if p["engine"] == "ours")
    assert ours.startswith("ours-")
    assert {(p["quality"], p["model"]): p["frames_sent"] for p in ladder["points"]} == \
        {(q, m): 4 for q in QPS for m in ("none", ours)}

    # the monitor: a row per (QP, model), every frame decoded, classified and paired with its reference
    rep = json.loads(report.read_text())
    assert {(r["qp"], r["model"]): r["frames"] for r in rep["rows"]} == {(q, m): 4 for q in QPS for m in ("none", ours)}
    assert rep["decoded"] == rep["classified"] == FRAMES and rep["lost"] == 0 and not rep["rejects"]
    assert rep["references"]["pairs"] == FRAMES
    for row in rep["rows"]:  # each point's bytes are what the capture sent at it
        (point,) = [p for p in ladder["points"] if (p["quality"], p["model"]) == (row["qp"], row["model"])]
        assert row["bytes"] == point["bytes_sent"]

    # the live curve and BD-rate: all 8 points, ours against none on the 4 QPs, a figure or why not
    live = rep["live_rd"]["lab"]
    assert {(p["qp"], p["model"]) for p in live["points"]} == {(q, m) for q in QPS for m in ("none", ours)}
    assert all(p["frames"] == p["top1_agreement_n"] == p["top1_n"] == 4 for p in live["points"])
    bd = {e["measure"]: e for e in live["bd"]}
    assert set(bd) == {"top1", "top1_agreement", "top5_overlap"}
    for entry in bd.values():
        assert (entry["model"], entry["anchor"], entry["points"], entry["qps"]) == (ours, "none", 4, list(QPS))
        if entry["bd_rate"] is None:
            assert entry["reason"]
        else:
            assert entry["ci95"] is not None and entry["resamples"] == 200
    line = next(x for x in out.splitlines() if x.startswith("live BD-rate lab"))
    assert f"live BD-rate lab {ours} vs none (hevc, the last 3600 s" in line and "top-1 agreement" in line

    # offline, from the predictions lines of the same frames: the same curve means and the same BD figures
    lines = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert len(lines) == FRAMES and all("agreement" in x for x in lines)
    offline = from_predictions(lines)["lab"]
    assert offline["bd"] == live["bd"]
    strip = ("kbit_s",)  # the lines carry no stream time: the rate axis is bits per frame in both
    assert [{k: v for k, v in p.items() if k not in strip} for p in offline["points"]] == \
        [{k: v for k, v in p.items() if k not in strip} for p in live["points"]]
