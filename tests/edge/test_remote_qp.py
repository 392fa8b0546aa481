"""capture --allow-remote-qp (issue 14 item 4): a monitor's QP request takes effect at the next GOP boundary, from
an IDR (the encoder re-opens at the new QP, as for a ladder), each frame carries the QP it was coded at, and the
change is logged and counted (stats, metrics); bad combinations are one line."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.capture import CaptureLoop, CaptureSettings, remote_qp_range
from edgepipe.media.frames import Frame, ReadStatus
from edgepipe.transport.protocol import parse_message
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import capture_messages


class AskingSource:
    """Noise frames; reading frame `at` asks the loop for `qp` (after two frames went out)."""

    live = False
    fps = None
    name = "asking"

    def __init__(self, n: int, at: int, qp: int):
        rng = np.random.default_rng(4)
        self.images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]
        self.at, self.qp, self.i, self.loop = at, qp, 0, None

    def read(self):
        if self.i >= len(self.images):
            return ReadStatus.EOS, None
        if self.i == self.at:  # once the first frames are out of the encoder: a request in the middle of a run
            deadline = time.monotonic() + 20
            while self.loop.stats.frames_sent < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.loop.request_qp(self.qp)
        frame = Frame(self.images[self.i], self.i, 0.0)
        self.i += 1
        return ReadStatus.OK, frame

    def close(self):
        pass


def test_a_requested_qp_takes_effect_at_the_next_gop_from_an_idr_and_is_counted(caplog):
    caplog.set_level("INFO")
    source = AskingSource(16, at=6, qp=30)
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
