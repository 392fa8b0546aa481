"""The operating-point ladder (issue 14 item 3): parsing, the order of the points, and real captures (real images,
real HEVC and JPEG) whose every frame carries the setting and the engine that made it, each GOP from an IDR."""
from __future__ import annotations

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.edge.ladder import Ladder, OperatingPoint, make_ladder, parse_ab, parse_ladder
from edgepipe.server.monitor import Monitor
from edgepipe.transport.protocol import parse_message
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import capture_messages

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def test_parse_and_order():
    assert parse_ladder("hevc:27, 32,37,42") == ("hevc", (27, 32, 37, 42))
    assert parse_ladder("jpeg2000:200,1000") == ("jpeg2000", (200, 1000))
    assert parse_ab("none, ours") == ("none", "ours")
    ladder = make_ladder("hevc:30,40", "none,ours", "hevc", 30, None, "none", gop=3)
    assert ladder == Ladder("hevc", (30, 40), ("none", "ours"), 3)
    # settings outer, engines inner; GOP k takes point k mod 4, so every pair recurs in a fixed order
    assert ladder.points == (OperatingPoint(30, "none"), OperatingPoint(30, "ours"), OperatingPoint(40, "none"),
                             OperatingPoint(40, "ours"))
    assert [ladder.index(n) for n in range(14)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 0]
    assert make_ladder(None, None, "hevc", 30, None, "ours", 30) is None
    # --ab alone cycles the engines at --qp; gop 0 (intra-only) switches every frame
    assert make_ladder(None, "none,ours", "hevc", 33, None, "none", 0) == Ladder("hevc", (33,), ("none", "ours"), 1)


@pytest.mark.parametrize("args, phrase", [
    (("vp9:1,2", None, "hevc"), "unknown codec 'vp9'"),
    (("hevc:1,52", None, "hevc"), "hevc QP must be 0..51, got 52"),
    (("hevc:", None, "hevc"), "give CODEC:Q1,Q2"),
    (("jpeg:50", None, "hevc"), "is for jpeg, but --codec is hevc"),
    ((None, "ours,", "hevc"), "give pre-transforms separated by commas"),
])
def test_bad_ladders_are_one_line(args, phrase):
    ladder, ab, codec = args
    with pytest.raises(EdgepipeError) as err:
        make_ladder(ladder, ab, codec, 32, None, "none", 30)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def _capture(settings: CaptureSettings) -> tuple[list, CaptureLoop]:
    loop = CaptureLoop(settings)
    return capture_messages(loop, settings.publish), loop


def test_a_hevc_ladder_cycles_qp_and_engine_per_gop_each_from_an_idr(small_val_folder):
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=free_tcp_endpoint(), gop=2,
                               ladder="hevc:30,44", ab="none,ours", size=(64, 64), wait_subscriber_s=10,
                               stream_id="lad", reference_every=1, reference_share=0)
    messages, loop = _capture(settings)
    headers = [parse_message(m)[0] for m in messages]
    frames = [h for h in headers if not h.reference and not h.end_of_stream]
    refs = [h for h in headers if h.reference]
    ours = loop.engines["ours"].model_id
    assert ours.startswith("ours-")
    expected = [(30, "none"), (30, ours), (44, "none"), (44, ours)]
    assert len(frames) == 12
    assert [(h.qp, h.model_id) for h in frames] == [expected[(i // 2) % 4] for i in range(12)]
    assert [h.keyframe for h in frames] == [i % 2 == 0 for i in range(12)]  # each GOP from an IDR at its QP
    # references stay the source frames, one per frame, beside the frame of the same seq
    assert [r.seq for r in refs] == list(range(12)) and {r.codec for r in refs} == {"jpeg"}
    stats = loop.stats.as_dict()
    assert stats["ladder"]["switches"] == 5
    assert [(p["quality"], p["model"], p["frames_sent"]) for p in stats["ladder"]["points"]] == \
        [(30, "none", 4), (30, ours, 4), (44, "none", 2), (44, ours, 2)]
    # a monitor decodes every switch (a new encoder, an IDR with its parameter sets) into one row per point
    monitor = Monitor(None)
    for m in messages:
        monitor.handle(m)
    report = monitor.report()
    assert report["decoded"] == 12 and not report["rejects"]
    assert sorted((r["qp"], r["model"], r["frames"]) for r in report["rows"]) == \
        sorted([(30, "none", 4), (30, ours, 4), (44, "none", 2), (44, ours, 2)])
    low, high = (sum(r["bytes"] for r in report["rows"] if r["qp"] == q) for q in (30, 44))
    assert low / 2 > high  # QP 30's GOPs (twice as many) cost more than twice QP 44's
    # the metrics say the point being coded (the last GOP's: QP 30, ours) and count the switches
    from edgepipe.ops.metrics import CaptureCollector, registry_for

    metrics = {s.name: s.value for family in registry_for(CaptureCollector(loop)).collect() for s in family.samples}
    assert metrics["edgepipe_capture_qp"] == 30 and loop.operating_point.engine == "ours"
    assert metrics["edgepipe_capture_ladder_switches_total"] == 5


def test_a_jpeg_ladder_takes_blocks_of_gop_frames(small_val_folder):
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=free_tcp_endpoint(), codec="jpeg",
                               gop=3, ladder="jpeg:40,90", size=(64, 64), wait_subscriber_s=10, stream_id="lj",
                               frames=9)
    messages, loop = _capture(settings)
    frames = [parse_message(m)[0] for m in messages if not parse_message(m)[0].end_of_stream]
    assert [h.qp for h in frames] == [40, 40, 40, 90, 90, 90, 40, 40, 40]
    assert {h.model_id for h in frames} == {"none"} and all(h.keyframe for h in frames)
    assert loop.stats.as_dict()["ladder"]["switches"] == 2


def test_without_a_ladder_nothing_changes(small_val_folder):
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=free_tcp_endpoint(), qp=35, gop=4,
                               size=(64, 64), wait_subscriber_s=10, stream_id="plain", frames=6)
    messages, loop = _capture(settings)
    frames = [parse_message(m)[0] for m in messages if not parse_message(m)[0].end_of_stream]
    assert [(h.qp, h.model_id) for h in frames] == [(35, "none")] * 6
    assert [h.keyframe for h in frames] == [True, False, False, False, True, False]
    assert loop.ladder is None and "ladder" not in loop.stats.as_dict()
