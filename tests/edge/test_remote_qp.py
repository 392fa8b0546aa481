"""capture --allow-remote-qp (issue 14 item 4): a monitor's QP request takes effect at the next GOP boundary, from
an IDR (the encoder re-opens at the new QP, as for a ladder), each frame carries the QP it was coded at, and the
change is logged and counted (stats, metrics); bad combinations are one line."""
from __future__ import annotations

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.capture import CaptureLoop, CaptureSettings, remote_qp_range
from edgepipe.transport.protocol import parse_message
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import AskingSource, capture_messages


def test_a_requested_qp_takes_effect_at_the_next_gop_from_an_idr_and_is_counted(caplog):
    caplog.set_level("INFO")
    source = AskingSource(16, at=6, ask=lambda loop: loop.request_qp(30))
    settings = CaptureSettings(source="asking", publish=free_tcp_endpoint(), gop=4, qp=40, allow_remote_qp="22:42",
                               wait_subscriber_s=10, stream_id="rq")
    loop = CaptureLoop(settings, source=source)
    source.loop = loop
    from edgepipe.ops.metrics import CaptureCollector, registry_for

    metrics = {}
    messages = capture_messages(loop, settings.publish, before_close=lambda done: metrics.update(
        {s.name: s.value for f in registry_for(CaptureCollector(done)).collect() for s in f.samples}))
    frames = [parse_message(m)[0] for m in messages if not parse_message(m)[0].end_of_stream]
    qps = [h.qp for h in frames]
    assert len(frames) == 16
    k = qps.index(30)
    assert k in (4, 8) and qps == [40] * k + [30] * (16 - k)  # at a GOP boundary the reader had not passed
    assert frames[k].keyframe and [h.keyframe for h in frames] == [i % 4 == 0 for i in range(16)]
    stats = loop.stats.as_dict()["remote_qp"]
    assert stats == {"allowed": [22, 42], "qp": 30, "requests": 1, "refused": {}, "changes": 1,
                     "trace": stats["trace"]} and len(stats["trace"]) == 1 and stats["trace"][0][1] == 30
    assert metrics["edgepipe_capture_qp"] == 30
    assert metrics["edgepipe_capture_qp_changes_total"] == 1 and metrics["edgepipe_capture_qp_requests_total"] == 1
    assert "remote QP: change 1, QP 40 -> 30" in caplog.text


@pytest.mark.parametrize("kw, phrase", [
    (dict(allow_remote_qp="42:22"), "0 <= MIN <= MAX <= 51"),
    (dict(allow_remote_qp="22"), "give MIN:MAX"),
    (dict(allow_remote_qp="22:42", codec="jpeg", qp=90), "moves the HEVC QP"),
    (dict(allow_remote_qp="22:42", crf=28.0, qp=None), "--crf are exclusive"),
    (dict(allow_remote_qp="22:42", ladder="hevc:30,40"), "--ladder/--ab are exclusive"),
])
def test_bad_combinations_are_one_line(kw, phrase):
    with pytest.raises(EdgepipeError) as err:
        remote_qp_range(CaptureSettings(source="x", publish="tcp://127.0.0.1:1", stream_id="s", **kw))
    assert phrase in str(err.value) and "\n" not in str(err.value)
