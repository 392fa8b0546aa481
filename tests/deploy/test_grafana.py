"""deploy/grafana/edgepipe.json: generated from make_dashboard.py (not edited by hand and stale), and every
metric its queries name is one that a real capture and monitor export, scraped over HTTP on loopback. The capture
runs a ladder (the switches' counter exists only then); the monitor's live BD-rate gauges exist only with a second
model's frames, so its window is given those as tests/ops/test_metrics.py does."""
from __future__ import annotations

import json
import re
import runpy
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.ops.service import ServiceOptions
from edgepipe.server.service import MonitorService
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import Running, wait_for

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
# Exported only once something happened (a drop, a rejected message); the run below has neither.
ONLY_AFTER_AN_EVENT = {"edgepipe_capture_drops_total": "drops", "edgepipe_monitor_rejects_total": "rejects"}
# Exported only with a ladder (capture --ladder/--ab) and, at the monitor, a second model on 4 operating points.
LADDER_METRICS = {"edgepipe_capture_ladder_switches_total", "edgepipe_monitor_live_bd_rate_percent",
                  "edgepipe_monitor_live_bd_points"}


def queried_metrics(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v.get("query", "") for v in dashboard["templating"]["list"]]
    return {name for expr in exprs for name in re.findall(r"\bedgepipe_[a-z0-9_]+", expr)}


def exported(port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_dashboard_is_what_the_generator_writes():
    generated = runpy.run_path(str(GRAFANA / "make_dashboard.py"))["dashboard"]()
    assert json.loads((GRAFANA / "edgepipe.json").read_text()) == generated, \
        "run python deploy/grafana/make_dashboard.py and commit edgepipe.json"
    ids = [p["id"] for p in generated["panels"]]
    assert len(ids) == len(set(ids))
    # the ladder's panels: its switches at the capture, the live BD-rate with both ends of its interval
    assert LADDER_METRICS <= queried_metrics(generated)
    (bd,) = [p for p in generated["panels"] if "edgepipe_monitor_live_bd_rate_percent" in str(p.get("targets"))]
    assert sorted(re.search(r'bound="(\w+)"', t["expr"])[1] for t in bd["targets"]) == ["estimate", "hi", "lo"]
    assert bd["fieldConfig"]["defaults"]["unit"] == "percent"


def feed_two_models(window) -> None:
    """A second model's curve at 0.8 of the anchor's bits on 4 QPs: the live BD-rate and its interval exist."""
    now = time.time()
    for model, scale in (("none", 1.0), ("ours-x", 0.8)):
        for qp, (bits, agree) in zip((27, 32, 37, 42), ((4000, 0.9), (2200, 0.8), (1200, 0.6), (600, 0.4))):
            for i in range(10):
                window.add_frame("ladder", model, qp, "hevc", int(bits * (1 + i / 20) * scale), 0.04, now)
                window.add_agreement("ladder", model, qp, "hevc", {"top1_equal": i < 10 * agree,
                                                                   "top5_overlap": agree}, now)


def test_every_queried_metric_is_exported(small_val_folder):
    endpoint = free_tcp_endpoint()
    monitor = MonitorService(endpoint, lambda image: 0, ServiceOptions(metrics="127.0.0.1:0"))
    feed_two_models(monitor.monitor.live_rd)
    run = Running(monitor.run)
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=endpoint, gop=4, stream_id="lab",
                               ladder="hevc:30,36", wait_subscriber_s=10)
    capture = CaptureService(settings, ServiceOptions(metrics="127.0.0.1:0"))
    try:
        capture.run()
        assert wait_for(lambda: monitor.monitor.decoded >= 12, 10)
        names = exported(capture.metrics.port) | exported(monitor.metrics.port)
    finally:
        run.stop()
        capture.close()
        monitor.close()
    queried = queried_metrics(json.loads((GRAFANA / "edgepipe.json").read_text()))
    assert len(queried) >= 23 and LADDER_METRICS <= names
    source = (REPO / "edgepipe" / "ops" / "metrics.py").read_text()
    for name, family in ONLY_AFTER_AN_EVENT.items():
        assert name in queried and name not in names  # else this list is stale
        assert f'p + "{family}"' in source
    missing = queried - names - set(ONLY_AFTER_AN_EVENT)
    assert not missing, f"the dashboard queries metrics edgepipe does not export: {sorted(missing)}"
