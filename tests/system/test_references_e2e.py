"""Reference frames end to end (issue 14 item 1): real captures (real images, real HEVC) over loopback into real
monitor processes with the real recognizer, and through a relay. References never enter the stream's bitrate,
frame counts or loss; every pair is counted; agreement falls with the QP."""
from __future__ import annotations

import json
import subprocess
import sys

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.relay.service import RelayService
from edgepipe.server.service import MonitorService
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import Running, wait_for

EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]
MEASURES = ("top1_equal", "top5_overlap", "p_reference", "kl")


def run_pair(tmp_path, folder, name: str, qp: int, reference_every: int | None) -> tuple[dict, dict, list, str]:
    """One capture into one monitor: (monitor report, capture stats, predictions lines, monitor stdout)."""
    endpoint = free_tcp_endpoint()
    report, stats, predictions = (tmp_path / f"{name}.{ext}" for ext in ("report.json", "stats.json", "jsonl"))
    monitor = subprocess.Popen(EDGEPIPE + ["monitor", "--connect", endpoint, "--report", str(report), "--frames", "12",
                                           "--idle-timeout", "60", "--predictions", str(predictions),
                                           "--classify-policy", "all"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refs = ["--reference-every", str(reference_every), "--reference-share", "0"] if reference_every else []
    try:
        cap = subprocess.run(EDGEPIPE + ["capture", "--source", f"folder:{folder}", "--publish", endpoint,
                                         "--qp", str(qp), "--gop", "4", "--wait-subscriber", "60",
                                         "--stream-id", "lab", "--stats", str(stats), *refs],
                             capture_output=True, text=True, timeout=120)
        assert cap.returncode == 0, cap.stderr
        out, err = monitor.communicate(timeout=120)
    finally:
        monitor.kill()
    assert monitor.returncode == 0, err
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    return json.loads(report.read_text()), json.loads(stats.read_text()), lines, out


def test_references_stay_apart_pair_exactly_and_agree_less_at_qp51(tmp_path, small_val_folder):
    plain, plain_stats, _, plain_out = run_pair(tmp_path, small_val_folder, "plain", 10, None)
    low, low_stats, low_lines, low_out = run_pair(tmp_path, small_val_folder, "low", 10, 3)
    high, _, _, _ = run_pair(tmp_path, small_val_folder, "high", 51, 3)

    # the stream is the same with and without references: bytes, frames, kbit/s, loss, what the capture sent
    (p_row,), (l_row,) = plain["rows"], low["rows"]
    for key in ("frames", "bytes", "kbit_s", "stream_s", "bpp"):
        assert p_row[key] == l_row[key], key
    for key in ("messages", "decoded", "classified", "lost", "rejects"):
        assert plain[key] == low[key], key
    assert plain["lost"] == 0 and plain["rejects"] == {}
    for key in ("frames_sent", "bytes_sent", "kbit_s"):
        assert plain_stats[key] == low_stats[key], key
    assert low_stats["bytes_sent"] == l_row["bytes"]
    assert "references" not in plain and "references" not in plain_stats and "references: " not in plain_out

    # every third frame's reference: sent, received, paired, counted apart
    sent = low_stats["references"]
    refs = low["references"]
    assert sent["sent"] == refs["received"] == refs["decoded"] == refs["classified"] == 4
    assert sent["bytes"] == refs["bytes"] == l_row["reference"]["bytes"] and sent["skipped"] == {}
    assert refs["pairs"] == 4 and refs["pending_pairs"] == 0 and refs["lost"] == refs["without_frame"] == 0
    assert sum(refs["unpaired"].values()) == 0
    assert sorted(line["seq"] for line in low_lines) == list(range(12))  # references have no line of their own
    paired = {line["seq"]: line["agreement"] for line in low_lines if "agreement" in line}
    assert sorted(paired) == [0, 3, 6, 9]
    assert set(paired[0]) == set(MEASURES)

    # QP 10 without a pre-transform: the recognizer says what it says of the source; QP 51 moves it
    agree_low, agree_high = refs["agreement"], high["references"]["agreement"]
    assert agree_low["top1_equal"]["mean"] == 1.0 and agree_low["pairs"] == agree_high["pairs"] == 4
    assert agree_high["kl"]["mean"] > agree_low["kl"]["mean"]
    assert agree_high["p_reference"]["mean"] < agree_low["p_reference"]["mean"]
    assert agree_high["top5_overlap"]["mean"] <= agree_low["top5_overlap"]["mean"]
    for agree in (agree_low, agree_high):
        for name in MEASURES:
            lo, hi = agree[name]["ci95"]
            assert lo <= agree[name]["mean"] <= hi, name
    assert "references: 4 received" in low_out and "top-1 agree 100.0%" in low_out


def test_the_relay_passes_references_through_counted_apart(small_val_folder):
    relay = RelayService(free_tcp_endpoint(), free_tcp_endpoint())
    relay_run = Running(relay.run)
    cams, mons = relay.bound
    monitor = MonitorService(mons, None)
    mon_run = Running(monitor.run)
    capture = None
    try:
        assert wait_for(lambda: relay.report()["subscriptions"]["topics_live"] == 1, 15)
        capture = CaptureService(CaptureSettings(source=f"folder:{small_val_folder}", publish="pub+connect:" + cams,
                                                 stream_id="cam-r", gop=4, size=(224, 224), wait_subscriber_s=30,
                                                 reference_every=3, reference_share=0))
        stats = capture.run()
        assert wait_for(lambda: monitor.monitor.end_of_stream["matched"] == 1, 30)
        relay_report = relay.report()
    finally:
        mon_run.stop()
        relay_run.stop()
        for s in (capture, monitor, relay):
            if s is not None:
                s.close()
    rep = monitor.report()
    (stream,) = rep["streams"]
    assert stats.frames_sent == 12 and stats.references_sent == 4
    assert stream["received"] == 12 and stream["lost"] == 0 and rep["decoded"] == 12 and not rep["rejects"]
    refs = rep["references"]
    assert refs["received"] == refs["decoded"] == 4 and refs["bytes"] == stats.reference_bytes and refs["lost"] == 0
    (relayed,) = relay_report["streams"]
    assert relayed["frames"] == 12 and relayed["references"] == 4 and relayed["ends"] == 1
