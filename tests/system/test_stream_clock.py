"""kbit/s on the stream's own clock (issue 12): the same bytes give the same kbit/s however fast the
pipeline ran. Real clips and images, real HEVC, real sockets on loopback."""
from __future__ import annotations

import threading

import pytest

from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.media.frames import DEFAULT_FPS, ReadStatus
from edgepipe.media.sources import FrameShaper, VideoFileSource, open_source
from edgepipe.server.monitor import Monitor, format_table
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.sockets import Subscriber, free_tcp_endpoint

from field_helpers import PacedSource, decode_frames, hevc_messages

CLIP_FPS = 12.5  # car-detection.mp4: 377 frames, 25/2 frames/s


def stream(settings: CaptureSettings, source=None) -> tuple[dict, dict]:
    """One capture run into a monitor over loopback: (capture statistics, monitor report)."""
    sub = Subscriber(settings.publish)
    mon = Monitor(None, sub)
    stop = threading.Event()
    thread = threading.Thread(target=mon.run, args=(stop,), daemon=True)
    thread.start()
    loop = CaptureLoop(settings, source=source)
    try:
        stats = loop.run()
        for _ in range(200):
            if mon.settled >= stats.frames_sent + 1:  # and the end-of-stream message
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(10)
        loop.close()
        sub.close()
    return stats.as_dict(), mon.report()


def test_video_kbit_s_is_on_its_timestamps_whatever_the_processing_speed(video_clip):
    """As fast as the machine goes, then paced at the clip's own rate: the same bytes, the same kbit/s,
    and it is bytes over the 25 frames' 2.0 s of video, not over the time it took to process them."""
    rows = []
    for realtime in (False, True):
        settings = CaptureSettings(source=str(video_clip), publish=free_tcp_endpoint(), size=(192, 108), frames=25,
                                   qp=30, gop=10, realtime=realtime, wait_subscriber_s=10, stream_id="clip")
        stats, report = stream(settings)
        (row,) = report["rows"]
        assert row["frames"] == 25 and report["lost"] == 0
        assert row["kbit_s_clock"] == "timestamps"
        assert row["stream_s"] == pytest.approx(25 / CLIP_FPS)
        assert row["stream_fps"] == pytest.approx(CLIP_FPS)
        assert row["kbit_s"] == pytest.approx(row["bytes"] * 8 / 1000 / (25 / CLIP_FPS), abs=0.01)
        assert stats["kbit_s"] == pytest.approx(row["kbit_s"], abs=0.01)  # the capture says the same
        assert row["processed_fps"] is not None  # the processing rate, reported apart
        rows.append(row)
    assert rows[0]["bytes"] == rows[1]["bytes"]
    assert rows[0]["kbit_s"] == rows[1]["kbit_s"]


@pytest.mark.parametrize("fps, clock, rate", [(None, "default-fps", DEFAULT_FPS), (10.0, "fps", 10.0)])
def test_folder_kbit_s_is_on_fps_or_the_stated_default(small_val_folder, fps, clock, rate):
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=free_tcp_endpoint(), qp=32, gop=4,
                               fps=fps, wait_subscriber_s=10, stream_id="lab")
    _, report = stream(settings)
    (row,) = report["rows"]
    assert row["frames"] == 12 and row["kbit_s_clock"] == clock
    assert row["stream_s"] == pytest.approx(12 / rate)
    assert row["kbit_s"] == pytest.approx(row["bytes"] * 8 * rate / 12 / 1000, abs=0.01)
    table = format_table(report)
    assert "kbit/s: per second of the stream's own clock" in table
    assert ("the default for folders" in table) == (fps is None)
    assert "proc fps" in table


def test_live_source_runs_on_the_capture_clock(video_clip):
    camera = PacedSource(decode_frames(video_clip, 5, (192, 108)), fps=20)
    settings = CaptureSettings(source="paced", publish=free_tcp_endpoint(), qp=30, gop=10, frames=15,
                               wait_subscriber_s=10, stream_id="cam")
    _, report = stream(settings, source=camera)
    (row,) = report["rows"]
    assert row["kbit_s_clock"] == "live"
    assert row["frames"] == 15 and row["stream_s"] > 0 and row["kbit_s"] > 0


def test_frames_of_an_older_capture_fall_back_to_the_capture_clock_and_say_so(video_clip):
    """Version 1 frames (no stream clock) are still decoded; their kbit/s is the processing rate, marked."""
    msgs = hevc_messages(decode_frames(video_clip, 10, (192, 108)), "old-cam", 1, capture_time=1000.0)
    assert all(m[0][2] == 1 for m in msgs)  # version 1 on the wire
    mon = Monitor(None)
    for m in msgs:
        mon.handle(m)
    report = mon.report()
    (row,) = report["rows"]
    assert report["decoded"] == 10 and not report["rejects"]
    assert row["kbit_s_clock"] == "capture" and row["stream_s"] is None
    assert row["kbit_s"] == pytest.approx(row["bytes"] * 8 / 1000 / (10 / 30), abs=0.01)  # 30 frames/s of capture
    table = format_table(report)
    kbit = table.splitlines()[2].split()[6]
    assert kbit.endswith("*")
    assert "kbit/s*: the span of capture times" in table


def test_frames_with_a_clock_count_only_their_stream_time(video_clip):
    """A row fed by a version 3 capture: kbit/s = bits / the durations carried, however the capture
    times are spread (here 1 s apart: as if the machine ran at 1 frame/s)."""
    msgs = hevc_messages(decode_frames(video_clip, 8, (192, 108)), "cam", 2)
    mon = Monitor(None)
    for seq, (head, payload) in enumerate(msgs):
        h = FrameHeader.unpack(head)
        h.capture_time, h.media_time, h.duration, h.clock = 1000.0 + seq, seq / 25, 1 / 25, "fps"
        mon.handle([h.pack(), payload])
    (row,) = mon.report()["rows"]
    assert row["kbit_s"] == pytest.approx(row["bytes"] * 8 / 1000 / (8 / 25), abs=0.01)
    assert row["processed_fps"] == pytest.approx(1.0)


def test_a_looping_video_keeps_counting_stream_time(video_clip):
    src = VideoFileSource(video_clip, FrameShaper((96, 54)), loop=True)
    times = []
    try:
        while len(times) < 380:  # 377 frames, then 3 of the second pass
            status, frame = src.read()
            assert status is ReadStatus.OK
            times.append(frame.media_time)
    finally:
        src.close()
    assert times[0] == 0.0 and times[1] == pytest.approx(1 / CLIP_FPS)
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times[377] == pytest.approx(377 / CLIP_FPS)  # the second pass starts one frame after the first ended


def test_a_still_image_has_no_clock_of_its_own(small_val_folder):
    image = next(p for p in small_val_folder.rglob("*") if p.is_file())
    src = open_source(str(image))
    try:
        assert src.timestamps is False and src.fps is None
        status, frame = src.read()
        assert status is ReadStatus.OK and frame.media_time is None  # the capture derives it from --fps
    finally:
        src.close()


def test_frames_of_a_newer_wire_version_are_rejected_with_a_hint(video_clip):
    (head, payload), = hevc_messages(decode_frames(video_clip, 1, (96, 54)), "cam", 1)
    newer = bytearray(head)
    newer[2] = 6  # this release speaks 1 to 5
    mon = Monitor(None)
    assert mon.handle([bytes(newer), payload]) is None
    report = mon.report()
    assert report["rejects"] == {"bad_version": 1}
    assert "upgrade monitors before captures" in format_table(report)
