"""A hostile peer on a real loopback connection, interleaved with a real HEVC stream (issue 11):
every hostile message is counted by cause, never as loss; every real frame is decoded or counted;
memory stays bounded; reports stay valid JSON."""
from __future__ import annotations

import json

import pytest

from edgepipe.pipeline.monitor import Monitor, write_report
from edgepipe.pipeline.transport import FrameHeader, Subscriber

from field_helpers import Feeder, Running, decode_frames, hevc_messages, wait_for

REAL, EPOCH = "real-cam", 7


@pytest.fixture(scope="module")
def clip(video_clip):
    return decode_frames(video_clip, 60, (192, 108))


@pytest.fixture(scope="module")
def real_stream(clip):
    return hevc_messages(clip, REAL, EPOCH, gop=10)


def forged(msg: list[bytes], **fields) -> list[bytes]:
    """A real message with some header fields replaced (same payload)."""
    h = FrameHeader.unpack(msg[0])
    for k, v in fields.items():
        setattr(h, k, v)
    return [h.pack(), msg[1]]


class Session:
    """A monitor subscribed to a Feeder, running in a thread."""

    def __init__(self, **monitor_kwargs):
        self.feeder = Feeder()
        self.sub = Subscriber(self.feeder.endpoint)
        self.mon = Monitor(None, self.sub, **monitor_kwargs)
        self.run = Running(self.mon.run)
        self.feeder.wait_subscriber()
        self.sent = 0

    def send(self, parts) -> None:
        self.feeder.send(parts)
        self.sent += 1

    def settle(self, timeout: float = 20.0) -> dict:
        assert wait_for(lambda: self.mon.messages >= self.sent, timeout), (self.mon.messages, self.sent)
        return self.mon.report()

    def close(self) -> None:
        try:
            self.run.stop()
        finally:
            self.sub.close()
            self.feeder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def real_stream_is_whole(rep: dict, n: int) -> None:
    real = [s for s in rep["streams"] if s["stream"] == REAL]
    assert real == [{"stream": REAL, "epoch": EPOCH, "received": n, "lost": 0}], real
    assert sum(r["frames"] for r in rep["rows"] if r["stream"] == REAL) == n
    json.dumps(rep, allow_nan=False)


# --- A: a forged sequence number ------------------------------------------------------------------

def test_a_forged_huge_seq_is_a_counted_reject_not_loss_and_later_frames_still_count(real_stream):
    with Session() as s:
        for i, msg in enumerate(real_stream):
            s.send(msg)
            if i == 29:  # on the live (stream, epoch), between two real frames
                s.send(forged(msg, seq=2**64 - 1))
        rep = s.settle()
    assert rep["rejects"] == {"seq_jump": 1}
    assert rep["lost"] == 0 and rep["decoded"] == len(real_stream)
    real_stream_is_whole(rep, len(real_stream))


def test_a_real_gap_is_still_loss(real_stream):
    with Session() as s:
        for i, msg in enumerate(real_stream):
            if i not in (20, 21, 22):
                s.send(msg)
        rep = s.settle()
    assert rep["lost"] == 3 and set(rep["rejects"]) == {"waiting_for_keyframe"}


# --- B: NaN / inf capture times -------------------------------------------------------------------

def strict_json(path) -> dict:
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_b_non_finite_and_implausible_capture_times_are_rejected_and_the_report_stays_json(real_stream, tmp_path):
    bad_times = [float("nan"), float("inf"), float("-inf"), -5.0, 1e300]
    with Session() as s:
        for i, msg in enumerate(real_stream):
            if i % 10 == 3 and i // 10 < len(bad_times):  # the real frame's own seq, a poisoned time
                s.send(forged(msg, capture_time=bad_times[i // 10]))
            s.send(msg)
        rep = s.settle()
    assert rep["rejects"] == {"bad_time": len(bad_times)} and rep["lost"] == 0
    real_stream_is_whole(rep, len(real_stream))
    row = next(r for r in rep["rows"] if r["stream"] == REAL)
    assert row["kbit_s"] > 0 and row["latency_ms_p50"] is not None
    write_report(rep, tmp_path / "report.json")
    assert strict_json(tmp_path / "report.json")["decoded"] == len(real_stream)


def test_b_the_report_writer_never_writes_nan(tmp_path):
    write_report({"rows": [{"latency_ms_p50": float("nan"), "kbit_s": float("inf")}], "n": 1}, tmp_path / "r.json")
    assert strict_json(tmp_path / "r.json") == {"rows": [{"latency_ms_p50": None, "kbit_s": None}], "n": 1}
