"""The classify queue, its options and the recognizer adapter (server/classify.py), with real decoded frames.
Under load over loopback: tests/system/test_classify_load.py."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.server.classify import ClassifyOptions, ClassifyQueue, Pending, Recognizer, as_recognizer
from edgepipe.server.monitor import Monitor, format_table
from edgepipe.transport.protocol import FrameHeader

from field_helpers import decode_frames, hevc_messages


@pytest.fixture(scope="module")
def frames_720p(video_clip):
    return decode_frames(video_clip, 4, (1280, 720))


def pending(image: np.ndarray, seq: int, keyframe: bool, options: ClassifyOptions) -> Pending:
    header = FrameHeader("cam", seq, 1.0, "hevc", image.shape[1], image.shape[0], 30, keyframe)
    return Pending(header, 1000, ("cam", "none", 30, "hevc"), image, options.rank(header))


@pytest.mark.parametrize("kwargs, message", [
    (dict(policy="newest"), "unknown classify policy 'newest'; choose one of keyframes-first, all"),
    (dict(queue=0), "classify queue must be at least 1"),
    (dict(every=0), "classify every must be at least 1"),
    (dict(queue=4, batch=8), "--classify-batch 8 is larger than --classify-queue 4"),
])
def test_bad_options_are_one_line(kwargs, message):
    with pytest.raises(EdgepipeError, match=message):
        ClassifyOptions(**kwargs)


def test_ranks_keyframes_then_every_nth_then_the_rest_and_references_above_all():
    options = ClassifyOptions(policy="keyframes-first", every=3)
    header = FrameHeader("cam", 6, 1.0, "hevc", 16, 16, 30, False)
    assert options.rank(header) == 2  # seq 6 is every 3rd
    assert options.rank(FrameHeader("cam", 7, 1.0, "hevc", 16, 16, 30, False)) == 3
    assert options.rank(FrameHeader("cam", 7, 1.0, "hevc", 16, 16, 30, True)) == 1
    assert options.rank(header, reference=True) == 0  # the hook for issue 14's reference frames


def test_the_queue_is_bounded_in_bytes_and_sheds_the_worst_oldest_first(frames_720p):
    """Three 720p frames (2.7 MB each) fill a 6 MB queue at two: a keyframe takes the place of the oldest frame
    of the worst rank; a frame no better than what is queued is refused; an empty queue takes any frame."""
    options = ClassifyOptions(policy="keyframes-first", every=2)
    queue = ClassifyQueue(max_frames=10, max_bytes=6_000_000)
    a, b, c, d = (pending(f, seq, False, options) for f, seq in zip(frames_720p, (1, 3, 5, 2)))
    assert queue.offer(a, wait=False) == (True, []) and queue.offer(b, wait=False) == (True, [])
    assert queue.offer(c, wait=False) == (False, [])  # rank 3 like those queued: refused
    assert queue.offer(d, wait=False) == (True, [a])  # every 2nd frame: the oldest of rank 3 makes room
    key = pending(frames_720p[0], 8, True, options)
    assert queue.offer(key, wait=False) == (True, [b])
    assert len(queue) == 2 and queue.bytes == 2 * frames_720p[0].nbytes and queue.peak == 2
    holder: list = []
    assert queue.take(5, 0.01, holder) == [key, d] == holder  # the best rank first
    queue.release(holder)
    huge = ClassifyQueue(max_frames=10, max_bytes=1000)
    assert huge.offer(a, wait=False) == (True, [])  # empty: any frame fits, however big


def test_frames_of_several_sizes_are_classified_in_one_batch_per_shape_in_their_order(frames_720p):
    calls = []

    def first_pixel(batch):
        calls.append(batch.shape)
        return batch[:, 0, 0, 0].astype(np.int64)

    small = [f[:108, :192].copy() for f in frames_720p]
    images = [frames_720p[0], small[0], frames_720p[1], small[1]]
    for image, value in zip(images, (10, 20, 30, 40)):
        image[0, 0, 0] = value
    top = Recognizer(first_pixel).classify(images)
    assert top.top1.tolist() == [10, 20, 30, 40] and top.probs is None
    assert calls == [(2, 720, 1280, 3), (2, 108, 192, 3)]


def test_as_recognizer_takes_a_recognizer_a_classifier_or_a_function_of_one_frame():
    assert as_recognizer(None) is None
    r = Recognizer(lambda frames: np.zeros(len(frames), np.int64))
    assert as_recognizer(r) is r
    assert as_recognizer(lambda image: 3).classify([np.zeros((4, 4, 3), np.uint8)] * 2).top1.tolist() == [3, 3]
    with pytest.raises(TypeError):
        as_recognizer(42)


def test_a_recognizer_that_fails_counts_its_frames_unclassified_and_says_so_once(video_clip, caplog):
    """handle() on its own classifies in the calling thread: a failing batch is counted, the monitor goes on."""
    def broken(frames):
        raise ValueError("the model refused this batch")

    mon = Monitor(Recognizer(broken))
    caplog.set_level(logging.WARNING, logger="edgepipe.server.monitor")
    for m in hevc_messages(decode_frames(video_clip, 6, (192, 108)), "cam", 1, gop=3):
        assert mon.handle(m) is not None
    rep = mon.report()
    assert rep["decoded"] == 6 and rep["classified"] == 0
    assert rep["unclassified_by_cause"] == {"recognizer_error": 6} and rep["share_classified"] == 0.0
    assert rep["rows"][0]["unclassified"] == 6 and rep["rows"][0]["top1"] is None
    warnings = [r.getMessage() for r in caplog.records if "recognizer failed" in r.getMessage()]
    assert len(warnings) == 1 and "the model refused this batch" in warnings[0]
    assert "unclassified 6 (recognizer_error=6)" in format_table(rep)
