"""Monitor output sinks (issue 12): --record remuxes the received packets into a file, --save-frames
writes decoded frames as PNG; a failing or hung disk is counted, never a crash or a stall. Real clip
frames, real HEVC, real files (and /dev/full, a FIFO, a file size limit for the failing disks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.server.monitor import Monitor, format_table
from edgepipe.server.sinks import FrameSinks, parse_record_target, safe_name
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import decode_frames, hevc_messages

EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]
FPS = 12.5


@pytest.fixture(scope="module")
def clip(video_clip):
    return decode_frames(video_clip, 30, (192, 108))


def clocked(msgs: list[list[bytes]], fps: float = FPS) -> list[list[bytes]]:
    """The same real packets as a version 3 capture sends them: on the video's clock."""
    out = []
    for seq, (head, payload) in enumerate(msgs):
        h = FrameHeader.unpack(head)
        h.media_time, h.duration, h.clock = seq / fps, 1 / fps, "timestamps"
        out.append([h.pack(), payload])
    return out


def monitor_with(sinks: FrameSinks) -> Monitor:
    mon = Monitor(None)
    mon.sinks = sinks
    return mon


def read_video(path) -> tuple[list[float], list[np.ndarray]]:
    import av

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.time for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_record_remuxes_the_received_packets_on_the_stream_clock(tmp_path, clip, suffix):
    msgs = clocked(hevc_messages(clip, "cam", 5, gop=10))
    sinks = FrameSinks(record=tmp_path / f"out{suffix}")
    mon = monitor_with(sinks)
    decoded = [mon.handle(m) for m in msgs]
    sinks.close()
    times, frames = read_video(tmp_path / f"out{suffix}")
    assert len(frames) == 30 and frames[0].shape == (108, 192, 3)
    assert times == pytest.approx([seq / FPS for seq in range(30)], abs=1e-3)
    # the very packets, not a re-encode: the file's decode is the monitor's decode (up to RGB conversion)
    diff = np.abs(np.stack(frames).astype(int) - np.stack(decoded).astype(int))
    assert diff.mean() < 2.0
    report = mon.report()
    assert report["sinks"]["record"]["frames"] == 30 and not report["sinks"]["errors"]
    assert report["sinks"]["record"]["files"] == [{"path": str(tmp_path / f"out{suffix}"), "stream": "cam", "epoch": 5}]
    assert f"recorded 30 frames to {tmp_path / f'out{suffix}'}" in format_table(report)


def test_record_starts_at_a_keyframe_never_overwrites_and_splits_epochs(tmp_path, clip):
    (tmp_path / "out.mkv").write_bytes(b"an earlier recording")
    first = clocked(hevc_messages(clip[:20], "cam", 1, gop=10))
    second = clocked(hevc_messages(clip[:12], "cam", 2, gop=10))
    sinks = FrameSinks(record=tmp_path / "out.mkv")
    mon = monitor_with(sinks)
    for m in first[3:] + second:  # joins epoch 1 mid-GOP: the monitor, and the file, start at seq 10
        mon.handle(m)
    sinks.close()
    assert (tmp_path / "out.mkv").read_bytes() == b"an earlier recording"
    t1, f1 = read_video(tmp_path / "out-1.mkv")
    t2, f2 = read_video(tmp_path / "out-2.mkv")
    assert len(f1) == 10 and len(f2) == 12
    assert t1[0] == 0.0 and t1[-1] == pytest.approx(9 / FPS, abs=1e-3)
    assert [f["epoch"] for f in mon.report()["sinks"]["record"]["files"]] == [1, 2]


def test_save_frames_writes_decoded_frames_as_png_named_stream_epoch_seq(tmp_path, clip):
    msgs = clocked(hevc_messages(clip, "cam/../x", 9, gop=10))  # a stream id that is no file name
    sinks = FrameSinks(save_frames=tmp_path / "frames", save_every=7)
    mon = monitor_with(sinks)
    decoded = [mon.handle(m) for m in msgs]
    sinks.close()
    names = sorted(os.listdir(tmp_path / "frames"))
    assert names == [f"cam_.._x-9-{seq:08d}.png" for seq in (0, 7, 14, 21, 28)]
    for name in names:
        seq = int(name.rsplit("-", 1)[1][:-4])
        png = cv2.imread(str(tmp_path / "frames" / name))[..., ::-1]
        assert np.array_equal(png, decoded[seq])  # lossless: exactly what the monitor decoded
    assert mon.report()["sinks"]["save_frames"]["frames"] == 5
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"


def test_a_full_disk_is_counted_and_the_monitor_goes_on(tmp_path, clip):
    msgs = clocked(hevc_messages(clip[:10], "cam", 3, gop=5))
    frames = tmp_path / "frames"
    frames.mkdir()
    for seq in (0, 1, 2):  # these three land on /dev/full: every write fails with ENOSPC
        (frames / f"cam-3-{seq:08d}.png").symlink_to("/dev/full")
    sinks = FrameSinks(save_frames=frames)
    mon = monitor_with(sinks)
    assert all(mon.handle(m) is not None for m in msgs)
    sinks.close()
    report = mon.report()
    assert report["decoded"] == 10 and report["lost"] == 0
    assert report["sinks"]["errors"] == {"save ENOSPC": 3}
    assert report["sinks"]["save_frames"]["frames"] == 7
    assert "sink errors: save ENOSPC=3" in format_table(report)
    json.dumps(report, allow_nan=False)


def test_a_hung_disk_never_stalls_the_monitor_and_its_queue_is_bounded(tmp_path, clip):
    """The first PNG is a FIFO nobody reads: the writer hangs in open() like on a dead NFS mount.
    The monitor decodes on; what does not fit in the sinks' queue is counted, not held."""
    msgs = clocked(hevc_messages(clip, "cam", 4, gop=10))
    frames = tmp_path / "frames"
    frames.mkdir()
    fifo = frames / "cam-4-00000000.png"
    os.mkfifo(fifo)
    sinks = FrameSinks(save_frames=frames, max_items=4, close_timeout_s=0.5)
    mon = monitor_with(sinks)
    done = threading.Event()
    thread = threading.Thread(target=lambda: ([mon.handle(m) for m in msgs], done.set()), daemon=True)
    thread.start()
    finished = done.wait(60)
    sinks.close()
    with open(fifo, "rb"):  # let the writer go: it was stuck, not the monitor
        pass
    assert finished, "the monitor waited for the disk"
    report = mon.report()
    assert report["decoded"] == 30
    saved = report["sinks"]["save_frames"]
    # one item in the writer's hands, at most 4 queued; the other 25 or more were dropped and counted
    assert saved["dropped"] >= 25
    assert saved["frames"] + saved["dropped"] + report["sinks"]["dropped_at_stop"] <= 30


@pytest.mark.parametrize("spec, message", [
    ("out.avi", "must end in .mkv, .mp4, .mov"),
    ("rtsp://host/x.mkv", "only files are supported"),
    ("{missing}/out.mkv", "does not exist"),
    ("{tmp}", "is a folder"),
])
def test_record_targets_are_checked_first(tmp_path, spec, message):
    spec = spec.replace("{missing}", str(tmp_path / "missing")).replace("{tmp}", str(tmp_path))
    with pytest.raises(EdgepipeError, match=message):
        parse_record_target(spec)
    assert parse_record_target(f"file://{tmp_path}/a.mkv") == tmp_path / "a.mkv"


# A disk that takes 16 KiB a file, then EFBIG: the limit is set by a small interpreter that then execs the
# monitor, not by preexec_fn, which runs Python in a forked copy of this many-threaded test process and can
# deadlock there before exec (the subprocess docs' warning; it hung a full run once).
LIMITED_EDGEPIPE = [sys.executable, "-c", "import os, resource, sys; "
                    "resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384)); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'edgepipe.cli', *sys.argv[1:]])"]


def test_cli_records_and_saves_over_loopback_and_a_file_size_limit_is_counted(tmp_path, video_clip):
    """capture -> monitor --record --save-frames as two processes; then again with the monitor's files
    limited to 16 KiB: it decodes every frame, counts the failures, exits 0 with a valid report."""
    for limited in (False, True):
        out = tmp_path / ("limited" if limited else "free")
        out.mkdir()
        endpoint = free_tcp_endpoint()
        monitor = subprocess.Popen(
            (LIMITED_EDGEPIPE if limited else EDGEPIPE) + ["monitor", "--connect", endpoint, "--no-classify", "--frames", "40", "--idle-timeout", "60",
                        "--record", str(out / "rec.mkv"), "--save-frames", str(out / "png"), "--save-every", "10",
                        "--report", str(out / "report.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            cap = subprocess.run(EDGEPIPE + ["capture", "--source", str(video_clip), "--publish", endpoint,
                                             "--size", "384x216", "--qp", "12", "--gop", "10", "--frames", "40",
                                             "--wait-subscriber", "60", "--stream-id", "clip"],
                                 capture_output=True, text=True, timeout=120)
            assert cap.returncode == 0, cap.stderr
            stdout, stderr = monitor.communicate(timeout=120)
        finally:
            monitor.kill()
        assert monitor.returncode == 0, stderr
        assert "Traceback" not in stderr
        report = json.loads((out / "report.json").read_text())
        assert report["decoded"] == 40
        sinks = report["sinks"]
        if not limited:
            assert sinks["record"]["frames"] == 40 and not sinks["errors"]
            assert len(read_video(out / "rec.mkv")[1]) == 40
            assert len(os.listdir(out / "png")) == 4 and sinks["save_frames"]["frames"] == 4
            assert "recorded 40 frames to" in stdout
        else:  # 40 frames of about 4 KB: the recording fails part-way, every PNG (over 16 KiB) fails
            assert sinks["errors"].get("record EFBIG", 0) >= 1 and sinks["errors"]["save EFBIG"] == 4, sinks
            assert sinks["record"]["frames"] < 40 and sinks["save_frames"]["frames"] == 0
            assert sinks["record"]["files"][0]["error"] == "EFBIG"
            assert "sink errors:" in stdout and "the disk failed under them" in stdout
            assert not os.listdir(out / "png")  # no half-written PNG left behind
