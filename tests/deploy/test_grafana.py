"""deploy/grafana/edgepipe.json: generated from make_dashboard.py (not edited by hand and stale), and every
metric its queries name is one that a real capture and monitor export, scraped over HTTP on loopback."""
from __future__ import annotations

import json
import re
import runpy
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


def test_every_queried_metric_is_exported(small_val_folder):
    endpoint = free_tcp_endpoint()
    monitor = MonitorService(endpoint, lambda image: 0, ServiceOptions(metrics="127.0.0.1:0"))
    run = Running(monitor.run)
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=endpoint, qp=30, gop=4, stream_id="lab",
                               wait_subscriber_s=10)
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
    assert len(queried) >= 20
    source = (REPO / "edgepipe" / "ops" / "metrics.py").read_text()
    for name, family in ONLY_AFTER_AN_EVENT.items():
        assert name in queried and name not in names  # else this list is stale
        assert f'p + "{family}"' in source
    missing = queried - names - set(ONLY_AFTER_AN_EVENT)
    assert not missing, f"the dashboard queries metrics edgepipe does not export: {sorted(missing)}"
