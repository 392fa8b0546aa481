"""Classification beside the decoding loop (issue 15 item 1), over real sockets on loopback with real HEVC:
a recognizer that lags never holds up receiving and decoding; what the policy does not classify is counted
unclassified, never lost; keyframes, then every Nth frame, are kept first; the recognizer sees batches, across
streams and frame sizes when the view makes them one size; a stop counts every frame.

The load is made, not hoped for: the recognizer's first call waits on an event until the test has seen every
frame decoded, so what the queue keeps and sheds is exact, and no assertion depends on how fast this machine is.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from edgepipe.media.codecs import HevcDecoder
from edgepipe.ops.metrics import MonitorCollector, registry_for
from edgepipe.ops.status import monitor_line, monitor_sample
from edgepipe.recognition import TopK
from edgepipe.server.classify import ClassifyOptions, Recognizer
from edgepipe.server.monitor import Monitor, format_table
from edgepipe.server.predictions import PredictionWriter
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.sockets import Subscriber

from field_helpers import Feeder, Running, decode_frames, hevc_messages, wait_for


class Gate:
    """A recognizer batch call whose first call waits until `release` is set: a recognizer that lags."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []  # frames per call, in order
        self.returned = 0  # calls that came back

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.batches.append(len(frames))
        self.entered.set()
        assert self.release.wait(60), "the test never released the recognizer"
        self.returned += 1
        return np.zeros(len(frames), np.int64)


@pytest.fixture(scope="module")
def clip(video_clip):
    return decode_frames(video_clip, 120, (192, 108))


def keyframes(msgs) -> set[int]:
    return {FrameHeader.unpack(m[0]).seq for m in msgs if FrameHeader.unpack(m[0]).keyframe}


class Live:
    """A monitor running on a real subscriber, fed by a Feeder on loopback."""

    def __init__(self, classify, classifying: ClassifyOptions, predictions=None):
        self.feeder = Feeder()
        self.sub = Subscriber(self.feeder.endpoint)
        self.mon = Monitor(classify, self.sub, classifying=classifying)
        self.mon.predictions = predictions
        self.run = Running(self.mon.run)
        self.feeder.wait_subscriber()

    def send(self, msgs) -> None:
        for m in msgs:
            self.feeder.send(m)

    def stop(self) -> dict:
        try:
            self.run.stop(30)
        finally:
            self.sub.close()
            self.feeder.close()
        return self.mon.report()


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_lagging_recognizer_sheds_by_policy_while_every_frame_is_received_and_counted(clip, tmp_path):
    msgs = hevc_messages(clip, "cam", 1, gop=40)
    keys = keyframes(msgs)
    assert 0 in keys and 1 < len(keys) < 8  # a few keyframes: the queue of 8 keeps them and some every-4th frames
    gate = Gate()
    writer = PredictionWriter(tmp_path / "p.jsonl")
    options = ClassifyOptions(policy="keyframes-first", every=4, queue=8, batch=4)
    live = Live(Recognizer(gate, name="gate"), options, writer)
    try:
        live.send(msgs[:1])
        assert gate.entered.wait(30)  # the recognizer holds frame 0 ...
        live.send(msgs[1:])
        # ... and every other frame is still received and decoded: nothing waits for the recognizer
        assert wait_for(lambda: live.mon.decoded == len(msgs), 30), live.mon.report()
        # what the status line and the metrics say while the recognizer lags
        sample = monitor_sample(live.mon)
        assert sample["classify_queue"] == 9 and sample["unclassified"] == len(msgs) - 9
        line = monitor_line(sample, sample)
        assert ", classify queue 9, " in line and f", classified 0, unclassified {len(msgs) - 9}" in line, line
        metrics = {(s.name, tuple(s.labels.values())): s.value
                   for family in registry_for(MonitorCollector(live.mon)).collect() for s in family.samples}
        assert metrics[("edgepipe_monitor_frames_unclassified_total", ("skipped_under_load",))] == len(msgs) - 9
        assert metrics[("edgepipe_monitor_classify_queue_depth", ())] == 9
        assert metrics[("edgepipe_monitor_classify_queue_capacity", ())] == 8
        gate.release.set()
        assert wait_for(lambda: live.mon.classified + live.mon.unclassified == len(msgs), 30)
    finally:
        gate.release.set()
        rep = live.stop()
        writer.close()

    # every frame received, decoded and in the bitrate; none lost
    assert rep["messages"] == rep["decoded"] == len(msgs) and rep["lost"] == 0 and not rep["rejects"]
    assert rep["streams"] == [{"stream": "cam", "epoch": 1, "received": len(msgs), "lost": 0}]
    (row,) = rep["rows"]
    assert row["frames"] == len(msgs) and row["bytes"] == sum(len(m[1]) for m in msgs)
    # frame 0 in the recognizer, the 8 it kept in the queue; the rest shed by the policy, counted
    assert rep["classified"] == 9 and rep["unclassified"] == len(msgs) - 9
    assert rep["unclassified_by_cause"] == {"skipped_under_load": len(msgs) - 9}
    assert rep["classified"] + rep["unclassified"] == rep["decoded"]
    assert row["classified"] == 9 and row["unclassified"] == len(msgs) - 9 and row["share_classified"] == 0.075
    assert rep["share_classified"] == 0.075
    # keyframes first, then every 4th frame, never another
    classified = read_jsonl(tmp_path / "p.jsonl")
    seqs = {r["seq"] for r in classified}
    assert len(classified) == len(seqs) == 9
    assert keys <= seqs
    assert all(s % 4 == 0 for s in seqs - keys)
    assert all(r["keyframe"] == (r["seq"] in keys) for r in classified)
    # batches: the held frame alone, then the queue in batches of --classify-batch
    assert gate.batches == [1, 4, 4]
    assert rep["classify"] == {"policy": "keyframes-first", "every": 4, "queue": 8, "batch": 4, "pending": 0,
                               "queue_peak": 8, "batches": 3, "batch_mean": 3.0, "batch_max": 4,
                               "latency_ms_p50": rep["classify"]["latency_ms_p50"]}
    table = format_table(rep)
    assert "classified" in table.splitlines()[0] and "7.5%" in table.splitlines()[2]
    assert f"classified 9 (7.5%), unclassified {len(msgs) - 9} (skipped_under_load={len(msgs) - 9})" in table


def test_a_stop_counts_frames_queued_and_in_the_recognizer_and_ignores_its_late_answer(clip):
    msgs = hevc_messages(clip[:20], "cam", 1, gop=10)
    gate = Gate()
    live = Live(Recognizer(gate), ClassifyOptions(policy="keyframes-first", queue=8, batch=8, stop_timeout_s=0.5))
    try:
        live.send(msgs[:1])
        assert gate.entered.wait(30)
        live.send(msgs[1:])
        assert wait_for(lambda: live.mon.decoded == 20, 30)
        rep = live.stop()  # the recognizer is still holding frame 0: 0.5 s to finish, then counted
    finally:
        gate.release.set()
    assert rep["decoded"] == 20 and rep["lost"] == 0
    assert rep["classified"] == 0 and rep["unclassified_by_cause"] == {"skipped_under_load": 11, "at_stop": 9}
    assert rep["classify"]["pending"] == 0
    assert wait_for(lambda: gate.returned == 1, 30)  # its answer for frame 0 comes after the stop ...
    assert live.mon.report()["classified"] == 0 and live.mon.unclassified == 20  # ... and is not counted twice


def test_pending_frames_are_classified_at_stop_and_all_classifies_every_frame(clip):
    """--frames N: the monitor stops after N decoded frames and the frames still queued are classified then."""
    calls: list[int] = []

    def slow(frames):
        calls.append(len(frames))
        threading.Event().wait(0.01)
        return np.zeros(len(frames), np.int64)

    msgs = hevc_messages(clip[:40], "cam", 1, gop=10)
    feeder = Feeder()
    sub = Subscriber(feeder.endpoint)
    mon = Monitor(Recognizer(slow), sub, classifying=ClassifyOptions(policy="all", queue=4, batch=4))
    thread = threading.Thread(target=mon.run, kwargs=dict(max_frames=40, idle_timeout=30), daemon=True)
    thread.start()
    try:
        feeder.wait_subscriber()
        for m in msgs:
            feeder.send(m)
        thread.join(60)
        assert not thread.is_alive()
    finally:
        sub.close()
        feeder.close()
    rep = mon.report()
    assert rep["decoded"] == 40 and rep["classified"] == 40 and rep["unclassified"] == 0
    assert sum(calls) == 40 and max(calls) <= 4


@pytest.fixture(scope="module")
def two_sizes(small_val_folder):
    """Two streams of real labelled photos at two frame sizes (landscape and portrait), as wire messages."""
    import cv2

    from edgepipe.core.datasets import list_labelled_images, read_rgb

    items = list_labelled_images(small_val_folder)
    wide = [cv2.resize(read_rgb(i.path), (320, 240), interpolation=cv2.INTER_AREA) for i in items[:6]]
    tall = [cv2.resize(read_rgb(i.path), (240, 320), interpolation=cv2.INTER_AREA) for i in items[6:]]
    return hevc_messages(wide, "wide", 1, gop=0, qp=27), hevc_messages(tall, "tall", 1, gop=0, qp=27)


class Spy:
    """A real classifier whose batches are recorded; its first call waits for `release`."""

    def __init__(self, classifier):
        self.classifier, self.name, self.prepare = classifier, classifier.name, classifier.prepare
        self.shapes: list[tuple] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def topk(self, frames, k=5) -> TopK:
        self.shapes.append(frames.shape)
        self.entered.set()
        assert self.release.wait(60)
        return self.classifier.topk(frames, k)


def decoded(msgs) -> list[np.ndarray]:
    h = FrameHeader.unpack(msgs[0][0])
    dec = HevcDecoder()
    return [dec.decode(m[1], h.width, h.height)[-1] for m in msgs]


@pytest.mark.parametrize("view", ["centre-crop", "native"])
def test_batches_join_streams_and_sizes_when_the_view_makes_them_one_size(two_sizes, view, tmp_path):
    from edgepipe.recognition import Classifier

    wide, tall = two_sizes
    classifier = Classifier("efficientnet-lite0", view=view)
    spy = Spy(classifier)
    writer = PredictionWriter(tmp_path / "p.jsonl")
    live = Live(Recognizer.from_classifier(spy), ClassifyOptions(policy="all", queue=16, batch=16), writer)
    try:
        live.send(wide[:1])
        assert spy.entered.wait(30)
        live.send(wide[1:] + tall)
        assert wait_for(lambda: live.mon.decoded == 12, 30)
        spy.release.set()
        assert wait_for(lambda: live.mon.classified == 12, 60)
    finally:
        spy.release.set()
        rep = live.stop()
        writer.close()
    if view == "centre-crop":  # cropped to 224 before batching: one batch of both streams
        assert spy.shapes == [(1, 224, 224, 3), (11, 224, 224, 3)]
    else:  # frames as they are: one batch per size
        assert spy.shapes[0] == (1, 240, 320, 3)
        assert sorted(spy.shapes[1:]) == [(5, 240, 320, 3), (6, 320, 240, 3)]
    assert rep["classify"]["batches"] == len(spy.shapes)
    # each answer went back to its own frame: the same classes as the frame classified on its own
    lines = {(r["stream"], r["seq"]): r for r in read_jsonl(tmp_path / "p.jsonl")}
    assert len(lines) == 12
    for stream, msgs in (("wide", wide), ("tall", tall)):
        for seq, image in enumerate(decoded(msgs)):
            alone = classifier.topk(image[None], 5)
            got = lines[(stream, seq)]["top5"]
            assert got[0]["class"] == int(alone.classes[0, 0]), (stream, seq)
            assert got[0]["p"] == pytest.approx(float(alone.probs[0, 0]), abs=1e-3)
    assert len({r["top5"][0]["class"] for r in lines.values()}) > 2  # different photos, different answers


def test_a_misconfigured_recognizer_stops_the_monitor_in_one_line_with_every_frame_counted(clip):
    """An EdgepipeError from the recognizer (a Triton model that takes another frame size) is a setting to fix,
    not an outage: run() stops and raises it, as it did when classification was in the decoding loop."""
    from edgepipe.core.errors import EdgepipeError

    def fixed_size(frames):
        raise EdgepipeError("model 'm' on Triton at grpc://x:8001 takes 224x224 frames only, got 192x108")

    msgs = hevc_messages(clip[:10], "cam", 1, gop=5)
    live = Live(Recognizer(fixed_size), ClassifyOptions(policy="keyframes-first"))
    live.send(msgs)
    assert wait_for(lambda: not live.run.thread.is_alive(), 30)
    with pytest.raises(EdgepipeError, match="takes 224x224 frames only"):
        live.stop()
    rep = live.mon.report()
    assert rep["decoded"] >= 1 and rep["classified"] == 0
    assert rep["unclassified"] == rep["decoded"] and rep["unclassified_by_cause"]["recognizer_error"] >= 1
    with pytest.raises(EdgepipeError, match="takes 224x224"):  # handle() alone: raised where it is called
        Monitor(Recognizer(fixed_size)).handle(msgs[0])
