import json
import threading
import time

import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.media.codecs import HevcEncoder, encode_image
from edgepipe.server.classify import ClassifyOptions
from edgepipe.server.monitor import Monitor, format_table, write_report
from edgepipe.transport.protocol import FrameHeader


@pytest.fixture(scope="module")
def images(small_val_folder):
    items = list_labelled_images(small_val_folder)
    return [(read_rgb(i.path), i.label) for i in items]


def hevc_stream(images, gop, stream="cam0", epoch=1, qp=32):
    enc = HevcEncoder(224, 224, qp=qp, gop=gop)
    msgs = []
    for seq, (img, label) in enumerate(images):
        pkt = enc.encode(img)[0]
        h = FrameHeader(stream, seq, 1000.0 + seq / 10, "hevc", 224, 224, qp, pkt.keyframe, label, "none", epoch)
        msgs.append([h.pack(), pkt.data])
    return msgs


def test_accounts_rate_and_accuracy_against_labels(images):
    originals = np.stack([img for img, _ in images]).astype(np.int16)

    def classify(img):
        # a known "recognizer": finds which image this is, right for even ones, wrong for odd ones
        i = int(np.abs(originals - img.astype(np.int16)).mean(axis=(1, 2, 3)).argmin())
        return images[i][1] if i % 2 == 0 else 999

    mon = Monitor(classify)
    msgs = []
    for seq, (img, label) in enumerate(images):
        data = encode_image("jpeg", img, 90)
        msgs.append([FrameHeader("cam0", seq, 10.0 + seq, "jpeg", 224, 224, 90, True, label).pack(), data])
    assert all(mon.handle(m) is not None for m in msgs)
    report = mon.report()
    row = report["rows"][0]
    assert row["frames"] == 12 and report["lost"] == 0
    assert row["bytes"] == sum(len(m[1]) for m in msgs)
    assert row["bpp"] == pytest.approx(row["bytes"] * 8 / (12 * 224 * 224), abs=1e-4)
    assert row["kbit_s"] == pytest.approx(row["bytes"] * 8 / 1000 / 12.0, rel=1e-3)  # 12 frames at 1 fps
    assert row["labelled"] == 12 and row["top1"] == 0.5


def test_joins_mid_stream_at_the_next_keyframe(images):
    msgs = hevc_stream(images, gop=4)
    mon = Monitor(None)
    for m in msgs[2:]:  # joins at seq 2: frames 2 and 3 are P-frames
        mon.handle(m)
    rep = mon.report()
    assert rep["rejects"] == {"waiting_for_keyframe": 2}
    assert rep["decoded"] == 8 and rep["lost"] == 0


def test_gap_counts_lost_frames_and_waits_for_keyframe(images):
    msgs = hevc_stream(images, gop=6)
    losses = []
    mon = Monitor(None, on_loss=losses.append)
    for i, m in enumerate(msgs):
        if i not in (2, 3):  # two frames lost in the network
            mon.handle(m)
    rep = mon.report()
    assert rep["lost"] == 2
    assert losses == ["cam0"]
    assert rep["rejects"] == {"waiting_for_keyframe": 2}  # seq 4, 5 need the lost references
    assert rep["decoded"] == 12 - 2 - 2


def test_new_epoch_is_a_new_accounting_period(images):
    mon = Monitor(None)
    for m in hevc_stream(images[:5], gop=0, epoch=1) + hevc_stream(images[:5], gop=0, epoch=2):
        mon.handle(m)
    rep = mon.report()
    assert rep["lost"] == 0 and rep["decoded"] == 10
    assert sorted(s["epoch"] for s in rep["streams"]) == [1, 2]


def test_garbage_is_counted_and_the_stream_survives(images):
    msgs = hevc_stream(images, gop=0)
    mon = Monitor(None)
    good_header = msgs[0][0]
    rng = np.random.default_rng(0)
    junk = [[b"garbage"], [rng.bytes(40), rng.bytes(100)], [good_header[:-4], b"x"]]
    for m, j in zip(msgs, junk * 4):
        mon.handle(j)
        mon.handle(m)
    # a valid header with a garbage payload: counted undecodable, with its own seq so no false loss
    h = FrameHeader("cam1", 0, 1.0, "hevc", 224, 224, 32, True).pack()
    assert mon.handle([h, rng.bytes(3000)]) is None
    rep = mon.report()
    assert rep["decoded"] == 12 and rep["lost"] == 0
    assert rep["rejects"]["bad_framing"] == 4 and rep["rejects"]["bad_header"] == 8
    assert rep["rejects"]["undecodable"] == 1


def test_report_table_and_atomic_json(tmp_path, images):
    mon = Monitor(lambda img: 0)
    for m in hevc_stream(images, gop=0):
        mon.handle(m)
    text = format_table(mon.report())
    assert "cam0" in text and "hevc" in text and "top-1" in text
    path = tmp_path / "r" / "report.json"
    write_report(mon.report(), path)
    assert json.loads(path.read_text())["decoded"] == 12
    assert not list(path.parent.glob(".*tmp"))


def test_recognizer_server_away_counts_unclassified_not_lost(images):
    """Frames a recognizer server could not classify are decoded, accounted in bitrate, counted apart."""
    from edgepipe.core.errors import RecognizerUnavailable

    calls = []

    def classify(img):  # a server that answers every third call
        calls.append(1)
        if len(calls) % 3:
            raise RecognizerUnavailable("recognizer server grpc://x:8001 unavailable")
        return 0

    mon = Monitor(classify)
    msgs = [[FrameHeader("cam0", seq, 10.0 + seq, "jpeg", 224, 224, 90, True, label).pack(),
             encode_image("jpeg", img, 90)] for seq, (img, label) in enumerate(images)]
    for m in msgs:
        mon.handle(m)
    report = mon.report()
    row = report["rows"][0]
    assert report["decoded"] == 12 and report["lost"] == 0 and report["unclassified"] == 8
    assert row["frames"] == 12 and row["bytes"] == sum(len(m[1]) for m in msgs)
    assert row["labelled"] == 4  # top-1 is over the classified frames only
    assert report["unclassified_by_cause"] == {"recognizer_unavailable": 8} and report["classified"] == 4
    assert row["classified"] == 4 and row["unclassified"] == 8 and row["share_classified"] == pytest.approx(1 / 3,
                                                                                                            abs=1e-5)
    table = format_table(report)
    assert "classified 4 (33.3%), unclassified 8 (recognizer_unavailable=8)" in table
    assert table.splitlines()[0].endswith("classified") and table.splitlines()[2].endswith("33.3%")


def test_a_table_with_every_frame_classified_has_no_classified_column(images):
    mon = Monitor(lambda img: 0)
    for m in hevc_stream(images, gop=4):
        mon.handle(m)
    report = mon.report()
    assert report["classified"] == report["decoded"] == 12 and report["share_classified"] == 1.0
    table = format_table(report)
    assert not table.splitlines()[0].endswith("classified")  # the accuracy table as before
    assert "decoded 12, classified 12 (100.0%), lost 0" in table
    off = Monitor(None)  # classification off: nothing classified, nothing "unclassified"
    for m in hevc_stream(images, gop=4):
        off.handle(m)
    assert off.report()["share_classified"] is None and off.report()["unclassified"] == 0
    assert "classified" not in format_table(off.report())


def test_a_lagging_monitor_keeps_the_decoder_of_a_stream_whose_frames_wait(images):
    """The idle-decoder sweep frees a decoder only when its stream has really been idle: no message received,
    and none waiting in the receive queue, for decoder_idle_s of the clock messages are handled on. A monitor
    15 s behind (its frames received long ago, still queued) kept freeing the decoder of a stream it was still
    decoding, and the next P-frames were rejected as waiting_for_keyframe (9 in a ladder run under `all`)."""
    mon = Monitor(None)
    cam1 = hevc_stream(images[:1], gop=12, stream="cam1")[0]
    mon.handle(cam1, 985.0)  # another camera, which sends nothing after this
    stop = threading.Event()
    for i, m in enumerate(hevc_stream(images, gop=12)):  # one keyframe, then 11 P-frames, received at 10 fps
        assert mon.backlog.put(m, 1000.0 + i / 10, stop)
    for _ in range(3):  # the decoding loop handles 3 of them ...
        mon.handle(*mon.backlog.get(0))
    mon.expire(1015.0)  # ... and sweeps 15 s later: cam0's 9 other frames still wait in the queue
    assert mon.streams[("cam0", 1)].decoder is not None  # cam0 is not idle: its next frames are queued
    # cam1 is: nothing from it in the 15.3 s received before the oldest frame waiting (at 1000.3)
    assert mon.streams[("cam1", 1)].decoder is None
    while len(mon.backlog):
        mon.handle(*mon.backlog.get(0))
    rep = mon.report()
    assert rep["rejects"] == {} and rep["decoded"] == 13 and rep["expired"]["decoders"] == 1
    mon.expire(1011.0)  # the queue is empty: cam0's last frame came at 1001.1, 9.9 s ago
    assert mon.streams[("cam0", 1)].decoder is not None
    mon.expire(1011.2)  # 10.1 s: idle, freed (the memory bound the sweep is for)
    assert mon.memory()["decoders"] == 0 and mon.report()["expired"]["decoders"] == 2


class _Held:
    """A subscriber holding the given messages: all of them are read at once, then nothing comes."""

    poll_ms = 10
    connected, connections, disconnects, drops, repairs = True, 1, 0, 0, 0

    def __init__(self, msgs):
        self.msgs = list(msgs)
        self.all_read = threading.Event()

    def recv(self, timeout_ms: int = 0):
        if self.msgs:
            return self.msgs.pop(0)
        self.all_read.set()
        time.sleep(timeout_ms / 1000)
        return None

    def healthy(self) -> bool:
        return True


def test_a_monitor_behind_a_slow_recognizer_decodes_every_frame(images):
    """The colleague's case through run(): under `all` decoding waits for a recognizer that takes 11 s a frame
    (on an injected monitor clock), so the frames of one GOP wait in the receive queue while the clock runs
    past decoder_idle_s. The sweep used to free the stream's decoder then (its last handled frame was received
    > 10 s ago) and every later P-frame was rejected waiting_for_keyframe; now every frame decodes."""
    now = [1000.0]
    sub = _Held(hevc_stream(images, gop=12))  # one keyframe, 11 P-frames

    def slow(img):
        sub.all_read.wait(10)  # every frame is received (stamped 1000.0) before the clock moves
        now[0] += 11.0
        return 0

    mon = Monitor(slow, sub, classifying=ClassifyOptions(policy="all", queue=1, batch=1), clock=lambda: now[0])
    mon.run(idle_timeout=0.3)
    rep = mon.report()
    assert rep["rejects"] == {} and rep["decoded"] == 12 and rep["classified"] == 12
    assert now[0] == 1000.0 + 11 * 12  # the monitor fell 2 minutes behind the receive stamps
