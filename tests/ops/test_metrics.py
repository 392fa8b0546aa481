"""Prometheus endpoints of capture and monitor, scraped over HTTP during a real run; the numbers
must be the ones in the capture statistics and the monitor report."""
from __future__ import annotations

import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.media.codecs import HevcEncoder
from edgepipe.ops.metrics import MonitorCollector, parse_listen, registry_for
from edgepipe.ops.service import ServiceOptions
from edgepipe.server.monitor import Monitor
from edgepipe.server.service import MonitorService
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import Running, decode_frames, wait_for


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return samples(text_string_to_metric_families(text))


def samples(families) -> dict[str, float]:
    out = {}
    for family in families:
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_capture_and_monitor_endpoints_match_stats_and_report(small_val_folder):
    endpoint = free_tcp_endpoint()
    mon = MonitorService(endpoint, lambda image: 0, ServiceOptions(metrics="127.0.0.1:0"))  # always "tench"
    run = Running(mon.run)
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=endpoint, qp=30, gop=4,
                               stream_id="lab", wait_subscriber_s=10)
    cap = CaptureService(settings, ServiceOptions(metrics="127.0.0.1:0", control=free_tcp_endpoint()))
    try:
        stats = cap.run()
        assert wait_for(lambda: mon.monitor.decoded >= 12 and mon.monitor.classified >= 12, 10)
        c, m = scrape(cap.metrics.port), scrape(mon.metrics.port)
        epoch = cap.loop.epoch
    finally:
        run.stop()
        cap.close()
        mon.close()
    rep = mon.monitor.report()
    row = rep["rows"][0]
    # capture
    assert c["edgepipe_capture_frames_sent_total"] == stats.frames_sent == 12
    assert c["edgepipe_capture_bytes_sent_total"] == stats.bytes_sent == row["bytes"]
    assert c["edgepipe_capture_bits_per_frame_sum"] == 8 * stats.bytes_sent
    assert c["edgepipe_capture_bits_per_frame_count"] == 12
    assert c["edgepipe_capture_keyframes_sent_total"] == stats.keyframes == 3  # GOP 4
    for stage in ("source", "engine", "encoder", "send"):
        assert c[f"edgepipe_capture_frames_total{{stage={stage}}}"] == 12
        assert c[f"edgepipe_capture_stage_seconds_count{{stage={stage}}}"] == 12
    assert c["edgepipe_capture_stage_seconds_sum{stage=encoder}"] == pytest.approx(
        stats.stages["encoder"].busy_s)  # mean encode ms = sum / count
    assert {k for k in c if k.startswith("edgepipe_capture_queue_depth")} == {
        f"edgepipe_capture_queue_depth{{queue={q}}}" for q in ("inference", "encode", "send")}
    assert c["edgepipe_capture_qp"] == 30 and c["edgepipe_capture_epoch"] == epoch
    # kbit/s on the stream clock: 12 images of a folder at the default 25 frames/s are 0.48 s of stream
    assert c["edgepipe_capture_stream_seconds_total"] == pytest.approx(12 / 25)
    assert 8 * c["edgepipe_capture_bytes_sent_total"] / c["edgepipe_capture_stream_seconds_total"] / 1000 == \
        pytest.approx(stats.as_dict()["kbit_s"], abs=0.01)
    assert c["edgepipe_capture_source_up"] == 1
    assert not any(k.startswith("edgepipe_capture_drops_total") for k in c)  # nothing dropped
    assert c['edgepipe_capture_info{codec=hevc,encoder=libx265,model=none,'
             f'source=folder:{small_val_folder},stream=lab}}'] == 1
    # monitor
    key = "{codec=hevc,model=none,qp=30,stream=lab}"
    assert m["edgepipe_monitor_frames_decoded_total"] == rep["decoded"] == 12
    assert m["edgepipe_monitor_messages_total"] == 12
    assert m["edgepipe_monitor_lost_frames_total{stream=lab}"] == 0
    assert m[f"edgepipe_monitor_bytes_total{key}"] == row["bytes"]
    assert m[f"edgepipe_monitor_bits_per_frame_sum{key}"] == 8 * row["bytes"]
    assert m[f"edgepipe_monitor_stream_bytes_total{key}"] == row["bytes"]  # every frame carried the clock
    assert m[f"edgepipe_monitor_stream_seconds_total{key}"] == pytest.approx(12 / 25)
    assert 8 * row["bytes"] / m[f"edgepipe_monitor_stream_seconds_total{key}"] / 1000 == \
        pytest.approx(row["kbit_s"], abs=0.01)
    assert row["kbit_s_clock"] == "default-fps"
    assert m[f"edgepipe_monitor_top1_ratio{key}"] == pytest.approx(4 / 12)  # 4 of the 12 images are tench
    assert row["top1"] == pytest.approx(4 / 12, abs=1e-5)  # the report rounds to 5 places
    assert m[f"edgepipe_monitor_latency_seconds_count{key}"] == 12
    assert m[f"edgepipe_monitor_latency_seconds_sum{key}"] > 0
    assert m["edgepipe_monitor_stage_seconds_count{stage=classify}"] == 12
    assert m["edgepipe_monitor_stage_seconds_count{stage=decode}"] == 12
    assert m["edgepipe_monitor_epoch{stream=lab}"] == epoch
    # classification beside the decoding loop: every frame classified (the library's policy `all`), in batches
    assert m["edgepipe_monitor_frames_classified_total"] == rep["classified"] == 12
    assert m[f"edgepipe_monitor_classified_frames_total{key}"] == row["classified"] == 12
    assert m[f"edgepipe_monitor_unclassified_frames_total{key}"] == 0
    assert {k: v for k, v in m.items() if k.startswith("edgepipe_monitor_frames_unclassified_total")} == {
        f"edgepipe_monitor_frames_unclassified_total{{cause={c}}}": 0
        for c in ("skipped_under_load", "recognizer_unavailable", "recognizer_error", "at_stop")}
    assert m["edgepipe_monitor_classify_queue_depth"] == 0 and m["edgepipe_monitor_classify_queue_capacity"] == 32
    assert m["edgepipe_monitor_classify_batch_frames_sum"] == 12
    assert 1 <= m["edgepipe_monitor_classify_batch_frames_count"] <= 12


def test_monitor_metrics_count_loss_and_rejects(video_clip):
    frames = decode_frames(video_clip, 12, (192, 108))
    enc = HevcEncoder(192, 108, qp=30, gop=6)
    mon = Monitor(None)
    for seq, image in enumerate(frames):
        (packet,) = enc.encode(image)
        if seq in (2, 3):  # lost in the network
            continue
        mon.handle([FrameHeader("cam", seq, 1.0, "hevc", 192, 108, 30, packet.keyframe).pack(), packet.data])
    mon.handle([b"junk"])
    m = samples(registry_for(MonitorCollector(mon)).collect())
    assert m["edgepipe_monitor_lost_frames_total{stream=cam}"] == 2
    assert m["edgepipe_monitor_rejects_total{cause=waiting_for_keyframe}"] == 2  # seq 4, 5
    assert m["edgepipe_monitor_rejects_total{cause=bad_framing}"] == 1
    assert m["edgepipe_monitor_received_frames_total{stream=cam}"] == 10
    assert m["edgepipe_monitor_frames_decoded_total"] == 8


def test_monitor_metrics_carry_the_live_bd_rate():
    """Issue 14 item 3: with two models on four QPs, the live BD-rate and its interval as gauges, as the report."""
    mon = Monitor(None)
    m = samples(registry_for(MonitorCollector(mon)).collect())
    assert not any(k.startswith("edgepipe_monitor_live_bd") for k in m)  # no ladder: no series
    now = time.time()
    for model, scale in (("none", 1.0), ("ours-x", 0.8)):
        for qp, (bits, agree) in zip((27, 32, 37, 42), ((4000, 0.9), (2200, 0.8), (1200, 0.6), (600, 0.4))):
            for i in range(10):
                mon.live_rd.add_frame("cam", model, qp, "hevc", int(bits * (1 + i / 20) * scale), 0.04, now)
                mon.live_rd.add_agreement("cam", model, qp, "hevc", {"top1_equal": i < 10 * agree,
                                                                      "top5_overlap": agree}, now)
    # computed now (the scrape reuses figures up to 5 s old: the first scrape's, without a ladder, here)
    (entry,) = [e for e in mon.live_rd.summary(fresh=True)["cam"]["bd"] if e["measure"] == "top1_agreement"]
    m = samples(registry_for(MonitorCollector(mon)).collect())
    rest = "codec=hevc,measure=top1_agreement,model=ours-x,stream=cam"

    def rate(bound: str) -> float:
        return m[f"edgepipe_monitor_live_bd_rate_percent{{anchor=none,bound={bound},{rest}}}"]

    assert rate("estimate") == pytest.approx(entry["bd_rate"]) == pytest.approx(-20.0, abs=0.1)
    assert m[f"edgepipe_monitor_live_bd_points{{anchor=none,{rest}}}"] == 4
    lo, hi = rate("lo"), rate("hi")
    assert [lo, hi] == entry["ci95"]


def test_two_services_in_one_process_keep_separate_registries(small_val_folder):
    services = [CaptureService(CaptureSettings(source=f"folder:{small_val_folder}", publish=free_tcp_endpoint(),
                                               codec="jpeg", qp=90, frames=n, stream_id=f"cam{n}",
                                               wait_subscriber_s=0),
                               ServiceOptions(metrics="127.0.0.1:0")) for n in (3, 5)]
    saved = signal.getsignal(signal.SIGTERM)
    try:
        for s in services:
            s.run()
        sent = [scrape(s.metrics.port)["edgepipe_capture_frames_sent_total"] for s in services]
    finally:
        for s in services:
            s.close()
        signal.signal(signal.SIGTERM, saved)
    assert sent == [3, 5]


def test_listen_addresses():
    assert parse_listen("9101") == ("127.0.0.1", 9101)
    assert parse_listen(":9101") == ("0.0.0.0", 9101)
    assert parse_listen("10.0.0.2:9101") == ("10.0.0.2", 9101)
    assert parse_listen("[::1]:9101") == ("::1", 9101)
    with pytest.raises(EdgepipeError, match="PORT"):
        parse_listen("localhost:metrics")
    with pytest.raises(EdgepipeError, match="out of range"):
        parse_listen("70000")
