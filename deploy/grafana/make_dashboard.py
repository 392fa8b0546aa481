"""Writes edgepipe.json, the Grafana dashboard of the capture's and monitor's Prometheus metrics.

    python deploy/grafana/make_dashboard.py          # after changing a panel here; commit both files

The JSON is generated so that every panel is one line here and the queries stay consistent (the same
kbit/s formula as ops/metrics.py documents: bytes over stream-clock seconds, not over wall clock).
tests/deploy/test_grafana.py checks that every metric a query names is one edgepipe exports.
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("edgepipe.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
S = '{stream=~"$stream"}'  # monitor series of the chosen streams


def bound(b: str) -> str:
    """The live BD-rate's series of the chosen streams: its estimate, or the lo / hi end of its 95 % interval."""
    return f'edgepipe_monitor_live_bd_rate_percent{{stream=~"$stream",bound="{b}"}}'


BD = "{{stream}} {{model}} vs {{anchor}} {{codec}} {{measure}}"  # one live BD-rate (server/live_rd.py)
# series whose legend ends in " lo" or " hi" (an interval's ends) are drawn dashed
DASHED_BOUNDS = [{"matcher": {"id": "byRegexp", "options": "/ (lo|hi)$/"},
                  "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}]

# (title, unit, [(expr, legend)][, field overrides]), in rows of three panels
CAPTURE = [
    ("Capture: frames/s per stage", "fps",
     [("sum by (instance, stage) (rate(edgepipe_capture_frames_total[1m]))", "{{instance}} {{stage}}")]),
    ("Capture: kbit/s on the stream clock", "kbps",
     [("8 * increase(edgepipe_capture_bytes_sent_total[5m]) / increase(edgepipe_capture_stream_seconds_total[5m])"
       " / 1000", "{{instance}}")]),
    ("Capture: mean ms per frame and stage", "ms",
     [("1000 * rate(edgepipe_capture_stage_seconds_sum[1m]) / rate(edgepipe_capture_stage_seconds_count[1m])",
       "{{instance}} {{stage}}")]),
    ("Capture: drops/s by cause", "short",
     [("sum by (instance, cause) (rate(edgepipe_capture_drops_total[5m]))", "{{instance}} {{cause}}")]),
    ("Capture: frames in each queue", "short",
     [("edgepipe_capture_queue_depth", "{{instance}} {{queue}}"),
      ("edgepipe_capture_queue_capacity", "{{instance}} capacity")]),
    ("Capture: QP and source up", "short",
     [("edgepipe_capture_qp", "{{instance}} QP"), ("edgepipe_capture_source_up", "{{instance}} source up")]),
    ("Capture: operating-point switches per minute (--ladder/--ab)", "short",
     [("60 * rate(edgepipe_capture_ladder_switches_total[5m])", "{{instance}} switches/min")]),
]
MONITOR = [
    ("Monitor: top-1 per operating point (labelled streams)", "percentunit",
     [(f"edgepipe_monitor_top1_ratio{S}", "{{stream}} {{model}} {{codec}} {{qp}}")]),
    ("Monitor: kbit/s per operating point, stream clock", "kbps",
     [(f"8 * increase(edgepipe_monitor_stream_bytes_total{S}[5m]) / increase(edgepipe_monitor_stream_seconds_total{S}"
       "[5m]) / 1000", "{{stream}} {{model}} {{codec}} {{qp}}")]),
    ("Monitor: frames/s received and lost per stream", "fps",
     [(f"rate(edgepipe_monitor_received_frames_total{S}[5m])", "{{stream}} received"),
      (f"rate(edgepipe_monitor_lost_frames_total{S}[5m])", "{{stream}} lost")]),
    ("Monitor: frames/s classified and not classified", "fps",
     [("rate(edgepipe_monitor_frames_classified_total[5m])", "{{instance}} classified"),
      ("sum by (instance, cause) (rate(edgepipe_monitor_frames_unclassified_total[5m]))",
       "{{instance}} not classified: {{cause}}")]),
    ("Monitor: classify queue", "short",
     [("edgepipe_monitor_classify_queue_depth", "{{instance}} waiting"),
      ("edgepipe_monitor_classify_queue_capacity", "{{instance}} capacity")]),
    ("Monitor: end-to-end latency, capture to decoded", "ms",
     [(f"1000 * rate(edgepipe_monitor_latency_seconds_sum{S}[5m]) / rate(edgepipe_monitor_latency_seconds_count{S}"
       "[5m])", "{{stream}} {{model}} {{qp}}")]),
    ("Monitor: rejected messages/s by cause", "short",
     [("sum by (instance, cause) (rate(edgepipe_monitor_rejects_total[5m]))", "{{instance}} {{cause}}")]),
    ("Monitor: connections to captures", "short",
     [("edgepipe_monitor_connected", "{{instance}} connected"),
      ("edgepipe_monitor_transport_healthy", "{{instance}} transport healthy")]),
    ("Monitor: live BD-rate against none, with its 95 % interval (negative: fewer bits)", "percent",
     [(bound("estimate"), BD), (bound("lo"), BD + " lo"), (bound("hi"), BD + " hi")], DASHED_BOUNDS),
    ("Monitor: live BD-rate, operating points on both curves (a figure needs 4)", "short",
     [(f"edgepipe_monitor_live_bd_points{S}", BD)]),
]


def panel(pid: int, title: str, unit: str, queries, x: int, y: int, overrides=()) -> dict:
    return {
        "id": pid, "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": list(overrides)},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(queries)],
    }


def row(pid: int, title: str, y: int) -> dict:
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}


def dashboard() -> dict:
    panels, y, pid = [], 0, 1
    for title, group in (("Capture (edge device)", CAPTURE), ("Monitor (server)", MONITOR)):
        panels.append(row(pid, title, y))
        pid, y = pid + 1, y + 1
        for i, (name, unit, queries, *overrides) in enumerate(group):
            panels.append(panel(pid, name, unit, queries, 8 * (i % 3), y + 8 * (i // 3), *overrides))
            pid += 1
        y += 8 * ((len(group) + 2) // 3)
    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        {"name": "stream", "label": "Stream", "type": "query", "datasource": DS, "includeAll": True, "multi": True,
         "allValue": ".*", "refresh": 2, "query": "label_values(edgepipe_monitor_received_frames_total, stream)",
         "definition": "label_values(edgepipe_monitor_received_frames_total, stream)"},
    ]
    return {"uid": "edgepipe", "title": "edgepipe: capture and monitor", "tags": ["edgepipe"],
            "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
            "timezone": "", "editable": True, "templating": {"list": variables}, "panels": panels,
            "description": "Rate, loss and recognition accuracy of edgepipe captures and monitors (docs/deploy.md)."}


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
