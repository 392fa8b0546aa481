"""The control channel's `qp` verb (issue 14 item 4): malformed, forged, out-of-range and unallowed requests are
refused and counted by cause; the keyframe verb is as it was; over real CURVE sockets only an allowed monitor's
request moves the capture's QP, at a GOP boundary, and a capture without --allow-remote-qp refuses every one."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.ops.service import SecurityOptions, ServiceOptions
from edgepipe.server.service import MonitorService
from edgepipe.transport.control import CONTROL_MAGIC, KEYFRAME, QP, ControlServer
from edgepipe.transport.security import CurveClient, configure_client, load_keypair, load_public_key
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import PacedSource, Running, decode_frames, wait_for

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


class Calls:
    def __init__(self):
        self.keyframes, self.qps, self.refused = 0, [], []

    def keyframe(self):
        self.keyframes += 1


@pytest.fixture
def server():
    calls = Calls()
    srv = ControlServer(free_tcp_endpoint(), "cam", calls.keyframe, qp_range=(22, 42), on_qp=calls.qps.append,
                        on_qp_refused=calls.refused.append)
    yield srv, calls
    srv.close()


def test_a_qp_request_within_the_range_is_obeyed_and_counted(server):
    srv, calls = server
    assert srv.handle([b"peer", CONTROL_MAGIC, QP, b"cam", b"34"])
    assert srv.handle([b"peer", CONTROL_MAGIC, QP, b"cam", b"22"]) and srv.handle([b"p", CONTROL_MAGIC, QP, b"cam",
                                                                                   b"42"])
    assert calls.qps == [34, 22, 42] and srv.qp_requests == 3 and not srv.rejects and calls.keyframes == 0


@pytest.mark.parametrize("request_, cause", [
    ([CONTROL_MAGIC, QP, b"cam", b"43"], "qp_out_of_range"),
    ([CONTROL_MAGIC, QP, b"cam", b"21"], "qp_out_of_range"),
    ([CONTROL_MAGIC, QP, b"cam", b"99"], "qp_out_of_range"),
    ([CONTROL_MAGIC, QP, b"cam", b"-1"], "bad_qp"),
    ([CONTROL_MAGIC, QP, b"cam", b"3 "], "bad_qp"),
    ([CONTROL_MAGIC, QP, b"cam", b"340"], "bad_qp"),
    ([CONTROL_MAGIC, QP, b"cam", b""], "bad_qp"),
    ([CONTROL_MAGIC, QP, b"cam", "\u0663".encode()], "bad_qp"),  # an Arabic-Indic digit: not ASCII
    ([CONTROL_MAGIC, QP, b"cam", b"\xff\xfe"], "bad_qp"),
    ([CONTROL_MAGIC, QP, b"cam"], "bad_request"),  # no value
    ([CONTROL_MAGIC, QP, b"cam", b"30", b"x"], "bad_request"),
    ([CONTROL_MAGIC, KEYFRAME, b"cam", b"30"], "bad_request"),  # keyframe takes three parts, as before
    ([CONTROL_MAGIC, QP, b"other", b"30"], "unknown_stream"),
    ([b"EPCTL2", QP, b"cam", b"30"], "bad_request"),  # a forged magic
    ([CONTROL_MAGIC, b"QP", b"cam", b"30"], "unknown_command"),
    ([CONTROL_MAGIC, b"crf", b"cam", b"30"], "unknown_command"),
])
def test_malformed_forged_and_out_of_range_requests_are_refused_and_counted(server, request_, cause):
    srv, calls = server
    assert not srv.handle([b"peer", *request_])
    assert srv.rejects == {cause: 1} and calls.qps == [] and srv.qp_requests == 0
    assert calls.refused == ([cause] if cause.startswith(("qp_", "bad_qp")) else [])


def test_without_the_opt_in_every_qp_request_is_refused_and_the_keyframe_verb_is_unchanged():
    calls = Calls()
    srv = ControlServer(free_tcp_endpoint(), "cam", calls.keyframe, on_qp_refused=calls.refused.append)
    try:
        for qp in (b"0", b"30", b"51"):
            assert not srv.handle([b"peer", CONTROL_MAGIC, QP, b"cam", qp])
        assert srv.handle([b"peer", CONTROL_MAGIC, KEYFRAME, b"cam"])
    finally:
        srv.close()
    assert srv.rejects == {"qp_not_allowed": 3} and calls.refused == ["qp_not_allowed"] * 3
    assert srv.requests == 1 and calls.keyframes == 1


def test_the_loop_checks_the_range_again():
    from edgepipe.edge.capture import CaptureLoop

    frames = [np.zeros((64, 64, 3), "uint8")] * 2
    loop = CaptureLoop(CaptureSettings(source="paced", publish=free_tcp_endpoint(), allow_remote_qp="30:34",
                                       stream_id="cam"), source=PacedSource(frames, fps=10))
    try:
        loop.request_qp(35)
        loop.request_qp(33)
    finally:
        loop.close()
    assert loop.stats.qp_refusals == {"out_of_range": 1} and loop.stats.qp_requests == 1 and loop._qp_wanted == 33


# --- over real CURVE sockets ---------------------------------------------------------------------------------------

@contextmanager
def _running_pair(keys, video_clip, allow_remote_qp):
    """A capture (CURVE, control socket, --allow-remote-qp as given) and its allowed monitor, both running, and a
    stranger's DEALER on the control socket; all stopped and closed on the way out."""
    data, control = free_tcp_endpoint(), free_tcp_endpoint()
    server = SecurityOptions(key=str(keys / "capture.key_secret"), allow=(str(keys / "monitor.key"),))
    service = CaptureService(CaptureSettings(source="paced", publish=data, gop=10, qp=40, stream_id="vault",
                                             allow_remote_qp=allow_remote_qp),
                             ServiceOptions(control=control, security=server),
                             source=PacedSource(decode_frames(video_clip, 20, (128, 72)), fps=50))
    sec = SecurityOptions(key=str(keys / "monitor.key_secret"), server_key=str(keys / "capture.key"))
    good = MonitorService(data, None, ServiceOptions(control=control, security=sec))
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.linger = 0
    configure_client(stranger, CurveClient(load_keypair(str(keys / "stranger.key_secret")),
                                           load_public_key(str(keys / "capture.key"))))
    stranger.connect(control)
    runs = [Running(good.run), Running(service.run)]
    try:
        yield service, good, stranger
    finally:
        for r in reversed(runs):
            r.stop()
        good.close()
        service.close()
        stranger.close(0)


def test_only_an_allowed_monitor_moves_the_qp_at_a_gop_boundary(keys, video_clip):
    with _running_pair(keys, video_clip, "22:42") as (service, good, stranger):
        loop, control, client = service.loop, service.control, good.control
        assert wait_for(lambda: good.monitor.decoded >= 10, 15)
        for _ in range(5):
            try:
                stranger.send_multipart([CONTROL_MAGIC, QP, b"vault", b"22"], flags=zmq.NOBLOCK)
            except zmq.Again:  # refused at the handshake: no connection to queue on
                pass
        assert good.control.request_qp("vault", 30)
        assert wait_for(lambda: loop.qp_now == 30, 10)
        assert wait_for(lambda: any(k[2] == 30 for k in good.monitor.rows), 10)  # frames now say QP 30
        assert good.control.request_qp("vault", 50)  # sent, and refused by the capture
        assert wait_for(lambda: service.control.rejects.get("qp_out_of_range") == 1, 10)
    # the stranger's requests never arrived; the good monitor's: one obeyed, one refused, each counted
    assert control.qp_requests == 1 and loop.stats.qp_requests == 1 and loop.stats.qp_changes == 1
    assert loop.stats.qp_refusals == {"qp_out_of_range": 1}
    assert client.requests_sent["qp"] == 2
    rows = {k[2] for k in good.monitor.rows}
    assert rows == {40, 30}
    stats = loop.stats.as_dict()["remote_qp"]
    assert stats["allowed"] == [22, 42] and stats["qp"] == 30 and stats["changes"] == 1 and len(stats["trace"]) == 1
    # the change came at a GOP boundary: every QP-30 frame run starts with a keyframe (the encoder re-opened)
    assert good.monitor.report()["lost"] == 0


def test_a_capture_without_the_opt_in_refuses_every_qp_request(keys, video_clip):
    with _running_pair(keys, video_clip, None) as (service, good, _):
        loop, control = service.loop, service.control
        assert wait_for(lambda: good.monitor.decoded >= 5, 15)
        for qp in (30, 40, 22):
            assert good.control.request_qp("vault", qp)
        assert wait_for(lambda: service.control.rejects.get("qp_not_allowed") == 3, 10)
    assert control.rejects == {"qp_not_allowed": 3}
    assert loop.qp_now == 40 and loop.stats.qp_changes == 0 and loop.stats.qp_refusals == {"qp_not_allowed": 3}
    assert loop.stats.as_dict()["remote_qp"]["allowed"] is None
    assert {k[2] for k in good.monitor.rows} == {40}
