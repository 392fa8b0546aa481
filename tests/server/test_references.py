"""Reference frames at the monitor (issue 14 item 1): real HEVC frames and real JPEG q95 references of real
images, handled message by message; the wire bits, the pairing, its bound and the agreement measures."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.edge.references import ReferencePolicy
from edgepipe.media.codecs import HevcEncoder
from edgepipe.recognition import TopK
from edgepipe.server.agreement import AgreementStats, agreement
from edgepipe.server.classify import Recognizer
from edgepipe.server.monitor import Monitor, format_table
from edgepipe.server.pairs import PairTable
from edgepipe.transport.protocol import (
    TOPIC_VERSION,
    FrameHeader,
    ProtocolError,
    parse_message,
    peek_reference,
)


@pytest.fixture(scope="module")
def images(small_val_folder):
    return [read_rgb(i.path) for i in list_labelled_images(small_val_folder)]


def stream_with_references(images, every=3, qp=30, stream="cam0", epoch=7):
    """[(coded message, reference message or None)] of real frames, as a capture sends them."""
    enc = HevcEncoder(224, 224, qp=qp, gop=4)
    out = []
    for seq, img in enumerate(images):
        (pkt,) = enc.encode(img)
        has_ref = seq % every == 0
        h = FrameHeader(stream, seq, 1000.0 + seq, "hevc", 224, 224, qp, pkt.keyframe, -1, "none", epoch,
                        media_time=seq / 25, duration=1 / 25, clock="fps", has_reference=has_ref)
        coded = [h.pack(TOPIC_VERSION), pkt.data]
        ref = None
        if has_ref:
            r = FrameHeader(stream, seq, 1000.0 + seq, "jpeg", 224, 224, 95, True, -1, "none", epoch,
                            media_time=seq / 25, duration=0.0, clock="fps", reference=True)
            ref = [r.pack(TOPIC_VERSION), ReferencePolicy.encode(img)]
        out.append((coded, ref))
    return out


def brightness_recognizer():
    """Top-5 from the mean brightness: the same picture, coded or not, gives nearly the same answer."""
    def batch(frames):
        means = frames.reshape(len(frames), -1).mean(axis=1)
        classes = np.stack([(np.arange(5) + int(m) // 8) % 1000 for m in means]).astype(np.int64)
        probs = np.tile(np.array([0.6, 0.2, 0.1, 0.05, 0.05], np.float32), (len(frames), 1))
        return TopK(classes, probs)
    return Recognizer(batch, name="brightness")


def test_the_bits_round_trip_and_bad_combinations_are_rejected():
    h = FrameHeader("cam0", 3, 10.0, "jpeg", 8, 8, 95, True, epoch=1, media_time=0.1, duration=0.0, clock="fps",
                    reference=True)
    packed = h.pack(TOPIC_VERSION)
    assert FrameHeader.unpack(packed).reference and peek_reference(packed)
    coded = FrameHeader("cam0", 3, 10.0, "hevc", 8, 8, 30, False, epoch=1, has_reference=True)
    back = FrameHeader.unpack(coded.pack(TOPIC_VERSION))
    assert back.has_reference and not back.reference and not peek_reference(coded.pack(TOPIC_VERSION))
    with pytest.raises(ValueError, match="only version 4"):
        h.pack()
    flags_at = 5 + len(b"cam0")
    for bad in (0x04 | 0x02, 0x04 | 0x08, 0x08 | 0x02):  # reference+end, reference+announces, end+announces
        raw = bytearray(packed)
        raw[flags_at] = bad
        with pytest.raises(ProtocolError) as err:
            parse_message([bytes(raw), b"x"])
        assert err.value.cause == "bad_header"


def test_references_are_paired_and_never_enter_the_stream_accounting(images):
    msgs = stream_with_references(images)
    plain, refd = Monitor(None), Monitor(brightness_recognizer())
    for coded, ref in msgs:
        h = FrameHeader.unpack(coded[0])
        h.has_reference = False
        plain.handle([h.pack(TOPIC_VERSION), coded[1]])  # the same frames, no reference bits
        refd.handle(coded)
        if ref is not None:
            assert refd.handle(ref) is None  # never shown as a stream frame
    a, b = plain.report(), refd.report()
    for key in ("messages", "decoded", "lost", "rejects"):
        assert a[key] == b[key], key
    (ra,), (rb,) = a["rows"], b["rows"]
    for key in ("frames", "bytes", "kbit_s", "bpp", "stream_s"):
        assert ra[key] == rb[key], key
    assert b["classified"] == 12 and b["unclassified"] == 0  # stream frames only
    refs = b["references"]
    ref_bytes = sum(len(r[1]) for _, r in msgs if r is not None)
    assert refs["received"] == refs["decoded"] == refs["classified"] == 4 and refs["bytes"] == ref_bytes
    assert refs["lost"] == refs["without_frame"] == 0 and refs["pairs"] == 4 and refs["pending_pairs"] == 0
    assert refs["share_of_stream_bytes"] == round(ref_bytes / rb["bytes"], 5)
    assert rb["reference"]["references"] == 4 and rb["reference"]["bytes"] == ref_bytes
    agree = refs["agreement"]
    assert agree["pairs"] == 4
    for name in ("top1_equal", "top5_overlap", "p_reference", "kl"):
        m = agree[name]
        assert m["mean"] is not None
        if m["ci95"] is not None:
            assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    assert "references: 4 received" in format_table(b) and "references" not in format_table(a)


def test_a_lost_reference_and_a_reference_without_its_frame_are_counted_apart(images):
    msgs = stream_with_references(images)
    mon = Monitor(brightness_recognizer())
    for seq, (coded, ref) in enumerate(msgs):
        if seq != 6:  # frame 6 lost on the way; its reference arrives
            mon.handle(coded)
        if ref is not None and seq != 3:  # the reference of frame 3 lost
            mon.handle(ref)
    rep = mon.report()
    refs = rep["references"]
    # frame 7 waits for the keyframe at 8: 11 frame messages, 10 decoded; the references are not among them
    assert rep["lost"] == 1 and rep["decoded"] == 10 and rep["messages"] == 11
    assert refs["received"] == 3 and refs["lost"] == 1 and refs["without_frame"] == 1
    assert refs["pairs"] == 2 and refs["unpaired"]["reference_lost"] == 1
    assert rep["rows"][0]["reference"]["lost"] == 1


def test_an_older_monitor_rejects_a_reference_as_out_of_order(images):
    """A monitor that ignores the reference bit sees a second message with a seq it has: out_of_order,
    never a frame."""
    msgs = stream_with_references(images)
    mon = Monitor(None)
    for coded, ref in msgs:
        mon.handle(coded)
        if ref is not None:
            h = FrameHeader.unpack(ref[0])
            h.reference = False  # what an earlier monitor reads
            mon.handle([h.pack(TOPIC_VERSION), ref[1]])
    rep = mon.report()
    assert rep["decoded"] == 12 and rep["rejects"] == {"out_of_order": 4} and rep["lost"] == 0
    assert rep["rows"][0]["codec"] == "hevc" and len(rep["rows"]) == 1


def test_pending_pairs_are_bounded_and_folded_out_counted():
    table = PairTable(max_pending=4)
    top = (np.arange(5), np.full(5, 0.2))
    released = []
    for seq in range(10):  # coded halves whose references never come, and are never said gone
        done, out = table.classified(("cam0", 1, seq), "coded", (*top, ("cam0",), {"seq": seq}))
        assert not done
        released += out
    assert len(table) == 4 and table.pending == 4
    assert table.unpaired["evicted"] == 6 and [r["seq"] for r in released] == list(range(6))
    done, _ = table.classified(("cam0", 1, 9), "reference", top)  # the newest still pairs
    assert len(done) == 1 and done[0][1]["top1_equal"] and table.pairs == 1
    assert table.gone(("cam0", 1, 8), "unclassified") == [{"seq": 8}]  # released at once, counted once
    assert table.gone(("cam0", 1, 8), "unclassified") == [] and table.unpaired["unclassified"] == 1


def test_agreement_measures_and_their_intervals():
    same = agreement([1, 2, 3, 4, 5], [0.5, 0.2, 0.1, 0.1, 0.05], [1, 2, 3, 4, 5], [0.5, 0.2, 0.1, 0.1, 0.05])
    assert same == {"top1_equal": True, "top5_overlap": 1.0, "p_reference": 0.5, "kl": 0.0}
    apart = agreement([1, 2, 3, 4, 5], [0.9, 0.04, 0.03, 0.02, 0.01], [9, 8, 2, 6, 1],
                      [0.3, 0.3, 0.2, 0.1, 0.05])
    assert not apart["top1_equal"] and apart["top5_overlap"] == 0.4 and apart["p_reference"] == 0.05
    assert apart["kl"] > 1.0
    outside = agreement([1], [0.9], [7], [0.99])  # the reference's class outside the coded top-k: leftover spread
    assert outside["p_reference"] == pytest.approx(0.01 / 999, rel=1e-3)
    stats = AgreementStats()
    for value in (1, 0, 1, 1):
        stats.add({"top1_equal": value, "top5_overlap": 1.0, "p_reference": None, "kl": None})
    s = stats.summary()
    half = 1.96 * math.sqrt(0.25 / 4)
    assert s["top1_equal"]["mean"] == 0.75
    assert s["top1_equal"]["ci95"] == [round(0.75 - half, 5), 1.0]  # clipped to the range
    assert s["top5_overlap"]["ci95"] == [1.0, 1.0] and s["p_reference"] == {"mean": None, "ci95": None}


def test_metrics_and_the_status_line_show_references_apart(images):
    from prometheus_client import generate_latest

    from edgepipe.ops.metrics import MonitorCollector, registry_for
    from edgepipe.ops.status import monitor_line, monitor_sample

    mon = Monitor(brightness_recognizer())
    before = monitor_sample(mon)
    for seq, (coded, ref) in enumerate(stream_with_references(images)):
        mon.handle(coded)
        if ref is not None and seq != 9:  # the last reference lost: the end of stream says so
            mon.handle(ref)
    end = FrameHeader("cam0", 12, 2000.0, "hevc", 224, 224, 30, False, epoch=7, end_of_stream=True)
    mon.handle([end.pack(TOPIC_VERSION), b""])
    text = generate_latest(registry_for(MonitorCollector(mon))).decode()
    row = 'codec="hevc",model="none",qp="30",stream="cam0"'
    assert 'edgepipe_monitor_reference_messages_total{outcome="received"} 3.0' in text
    assert 'edgepipe_monitor_reference_messages_total{outcome="lost"} 1.0' in text
    assert "edgepipe_monitor_reference_pairs_total 3.0" in text
    assert 'edgepipe_monitor_reference_unpaired_total{cause="reference_lost"} 1.0' in text
    assert f"edgepipe_monitor_reference_top1_agreement{{{row}}}" in text
    assert f"edgepipe_monitor_reference_kl_divergence{{{row}}}" in text
    assert "edgepipe_monitor_frames_decoded_total 12.0" in text and "edgepipe_monitor_messages_total 12.0" in text
    line = monitor_line(before, monitor_sample(mon))
    assert "references 3 (lost 1)" in line and "over 3 pairs" in line and "lost 0" in line
    assert "edgepipe_monitor_reference_" not in generate_latest(registry_for(MonitorCollector(Monitor(None)))).decode()


def test_waiting_coded_halves_give_their_lines_at_stop_once():
    table = PairTable(max_pending=4)
    top = (np.arange(5), np.full(5, 0.2))
    table.classified(("cam0", 1, 0), "coded", (*top, ("cam0",), {"seq": 0}))
    table.classified(("cam0", 1, 3), "reference", top)
    assert table.release_lines() == [{"seq": 0}] and table.release_lines() == [] and table.pending == 2


def test_announced_references_that_never_come_and_forged_ones_hold_bounded_memory(images):
    mon = Monitor(brightness_recognizer(), max_pending_pairs=4)
    msgs = stream_with_references(images, every=1)  # every frame announces a reference; none is sent
    for coded, _ in msgs:
        mon.handle(coded)
    for seq in range(100):  # references of frames that never announced them, of a stream never seen too
        for sid in ("cam0", "ghost"):
            r = FrameHeader(sid, 1000 + seq, 1000.0, "jpeg", 224, 224, 95, True, epoch=7, reference=True)
            mon.handle([r.pack(TOPIC_VERSION), b"\xff\xd8not a jpeg"])
    rep = mon.report()
    refs = rep["references"]
    assert refs["lost"] == 11 and refs["without_frame"] == 200 and refs["decoded"] == 0  # the 12th still awaited
    assert refs["unpaired"]["reference_lost"] == 11 and refs["pairs"] == 0
    assert mon.memory()["reference_pairs"] <= 4 and rep["decoded"] == rep["classified"] == 12
    assert rep["messages"] == 12 and rep["rejects"] == {}
