"""The control channel's `engine` verb (issue 14 item 4): malformed, forged, unknown and unallowed requests are
refused and counted by cause; over real CURVE sockets an allowed monitor's request changes the capture's
pre-transform at a GOP boundary, and the frames say so."""
from __future__ import annotations

import pytest

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.ops.service import SecurityOptions, ServiceOptions
from edgepipe.server.service import MonitorService
from edgepipe.transport.control import CONTROL_MAGIC, ENGINE, QP, ControlServer
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import PacedSource, Running, decode_frames, wait_for

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


@pytest.fixture
def server():
    asked, refused = [], []
    srv = ControlServer(free_tcp_endpoint(), "cam", lambda: None, engines=("none", "ours"), on_engine=asked.append,
                        on_engine_refused=refused.append)
    yield srv, asked, refused
    srv.close()


def test_an_allowed_engine_request_is_obeyed_and_counted(server):
    srv, asked, _ = server
    assert srv.handle([b"peer", CONTROL_MAGIC, ENGINE, b"cam", b"ours"])
    assert srv.handle([b"peer", CONTROL_MAGIC, ENGINE, b"cam", b"none"])
    assert asked == ["ours", "none"] and srv.engine_requests == 2 and not srv.rejects


@pytest.mark.parametrize("request_, cause", [
    ([CONTROL_MAGIC, ENGINE, b"cam", b"tvl1"], "engine_unknown"),
    ([CONTROL_MAGIC, ENGINE, b"cam", b"Ours"], "engine_unknown"),
    ([CONTROL_MAGIC, ENGINE, b"cam", b""], "bad_engine"),
    ([CONTROL_MAGIC, ENGINE, b"cam", b"ours "], "bad_engine"),
    ([CONTROL_MAGIC, ENGINE, b"cam", b"\xff\xfe"], "bad_engine"),
    ([CONTROL_MAGIC, ENGINE, b"cam", b"x" * 201], "bad_engine"),
    ([CONTROL_MAGIC, ENGINE, b"cam"], "bad_request"),
    ([CONTROL_MAGIC, ENGINE, b"other", b"ours"], "unknown_stream"),
    ([b"EPCTL2", ENGINE, b"cam", b"ours"], "bad_request"),
    ([CONTROL_MAGIC, b"ENGINE", b"cam", b"ours"], "unknown_command"),
])
def test_malformed_forged_and_unknown_requests_are_refused_and_counted(server, request_, cause):
    srv, asked, refused = server
    assert not srv.handle([b"peer", *request_])
    assert srv.rejects == {cause: 1} and asked == [] and srv.engine_requests == 0
    assert refused == ([cause] if cause.startswith(("engine_", "bad_engine")) else [])


def test_without_the_opt_in_every_engine_request_is_refused_and_qp_is_unaffected():
    refused = []
    srv = ControlServer(free_tcp_endpoint(), "cam", lambda: None, on_engine_refused=refused.append)
    try:
        assert not srv.handle([b"peer", CONTROL_MAGIC, ENGINE, b"cam", b"ours"])
        assert not srv.handle([b"peer", CONTROL_MAGIC, QP, b"cam", b"30"])  # no --allow-remote-qp either
    finally:
        srv.close()
    assert srv.rejects == {"engine_not_allowed": 1, "qp_not_allowed": 1} and refused == ["engine_not_allowed"]


def test_an_allowed_monitor_moves_the_engine_over_curve(keys, video_clip):
    data, control = free_tcp_endpoint(), free_tcp_endpoint()
    server = SecurityOptions(key=str(keys / "capture.key_secret"), allow=(str(keys / "monitor.key"),))
    service = CaptureService(CaptureSettings(source="paced", publish=data, gop=10, qp=40, stream_id="vault",
                                             engine="none", allow_remote_engine="none,ours"),
                             ServiceOptions(control=control, security=server),
                             source=PacedSource(decode_frames(video_clip, 20, (128, 72)), fps=50))
    sec = SecurityOptions(key=str(keys / "monitor.key_secret"), server_key=str(keys / "capture.key"))
    good = MonitorService(data, None, ServiceOptions(control=control, security=sec))
    runs = [Running(good.run), Running(service.run)]
    loop, client = service.loop, good.control
    ours_id = loop.engines["ours"].model_id
    try:
        assert wait_for(lambda: good.monitor.decoded >= 10, 15)
        assert good.control.request_engine("vault", "ours")
        assert wait_for(lambda: loop.engine_spec == "ours", 10)
        assert wait_for(lambda: any(k[1] == ours_id for k in good.monitor.rows), 10)  # frames now say ours
        assert good.control.request_engine("vault", "tvl1")  # sent, and refused by the capture
        assert wait_for(lambda: service.control.rejects.get("engine_unknown") == 1, 10)
    finally:
        for r in reversed(runs):
            r.stop()
        good.close()
        service.close()
    assert loop.stats.engine_requests == 1 and loop.stats.engine_changes == 1
    assert loop.stats.engine_refusals == {"engine_unknown": 1} and client.requests_sent["engine"] == 2
    assert {k[1] for k in good.monitor.rows} == {"none", ours_id}
    assert good.monitor.report()["lost"] == 0
