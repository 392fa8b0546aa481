"""capture --allow-remote-engine (issue 14 item 4, "and pre-transform"): a monitor's engine request takes effect at
the next GOP boundary, from an IDR, each frame carries the model id of the engine that made it, and the change is
logged and counted (stats, metrics); bad combinations are one line."""
from __future__ import annotations

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.capture import CaptureLoop, CaptureSettings, budget_engine, remote_engine_specs
from edgepipe.transport.protocol import parse_message
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import AskingSource, capture_messages


def test_a_requested_engine_takes_effect_at_the_next_gop_from_an_idr_and_is_counted(caplog):
    caplog.set_level("INFO")
    source = AskingSource(16, at=6, ask=lambda loop: loop.request_engine("ours"), seed=5)
    settings = CaptureSettings(source="asking", publish=free_tcp_endpoint(), gop=4, qp=36, engine="none",
                               allow_remote_engine="none,ours", wait_subscriber_s=10, stream_id="re")
    loop = CaptureLoop(settings, source=source)
    source.loop = loop
    ours_id = loop.engines["ours"].model_id
    from edgepipe.ops.metrics import CaptureCollector, registry_for

    metrics = {}
    messages = capture_messages(loop, settings.publish, before_close=lambda done: metrics.update(
        {s.name: s.value for f in registry_for(CaptureCollector(done)).collect() for s in f.samples}))
    frames = [parse_message(m)[0] for m in messages if not parse_message(m)[0].end_of_stream]
    models = [h.model_id for h in frames]
    assert len(frames) == 16 and ours_id != "none"
    k = models.index(ours_id)
    assert k in (4, 8, 12) and models == ["none"] * k + [ours_id] * (16 - k)  # at a boundary the reader had not passed
    assert frames[k].keyframe and [h.keyframe for h in frames] == [i % 4 == 0 for i in range(16)]
    stats = loop.stats.as_dict()["remote_engine"]
    assert stats == {"allowed": ["none", "ours"], "engine": "ours", "requests": 1, "refused": {}, "changes": 1,
                     "trace": stats["trace"]} and len(stats["trace"]) == 1 and stats["trace"][0][1] == "ours"
    assert metrics["edgepipe_capture_engine_changes_total"] == 1
    assert metrics["edgepipe_capture_engine_requests_total"] == 1
    assert "remote engine: change 1, none -> ours" in caplog.text


def test_the_loop_checks_the_engine_again_and_a_request_for_the_running_one_changes_nothing():
    frames = [np.zeros((64, 64, 3), "uint8")] * 2
    from field_helpers import PacedSource

    loop = CaptureLoop(CaptureSettings(source="paced", publish=free_tcp_endpoint(), engine="none",
                                       allow_remote_engine="none,tvl1", stream_id="cam"),
                       source=PacedSource(frames, fps=10))
    try:
        assert set(loop.engines) == {"none", "tvl1"} and loop.engine_spec == "none"
        loop.request_engine("ours")
        loop.request_engine("tvl1")
    finally:
        loop.close()
    assert loop.stats.engine_refusals == {"unknown": 1} and loop.stats.engine_requests == 1
    assert loop._engine_wanted == "tvl1"
    without = CaptureLoop(CaptureSettings(source="paced", publish=free_tcp_endpoint(), stream_id="cam"),
                          source=PacedSource(frames, fps=10))
    try:
        without.request_engine("none")
    finally:
        without.close()
    assert without.stats.engine_refusals == {"not_allowed": 1} and without._engine_wanted is None
    assert without.stats.as_dict()["remote_engine"]["allowed"] is None


def test_the_thread_budget_plans_for_the_heaviest_engine_allowed():
    settings = CaptureSettings(source="x", publish="tcp://127.0.0.1:1", engine="none",
                               allow_remote_engine="none,ours")
    assert budget_engine(settings, None) == "ours"


@pytest.mark.parametrize("kw, phrase", [
    (dict(allow_remote_engine="none,,ours"), "an empty item"),
    (dict(allow_remote_engine="none,none"), "given twice"),
    (dict(allow_remote_engine="ours,tvl1"), "--engine none is not in --allow-remote-engine ours,tvl1"),
    (dict(allow_remote_engine="none,ours", ab="none,ours", ladder="hevc:30,40"), "--ladder/--ab are exclusive"),
])
def test_bad_combinations_are_one_line(kw, phrase):
    with pytest.raises(EdgepipeError) as err:
        remote_engine_specs(CaptureSettings(source="x", publish="tcp://127.0.0.1:1", stream_id="s", **kw))
    assert phrase in str(err.value) and "\n" not in str(err.value)
