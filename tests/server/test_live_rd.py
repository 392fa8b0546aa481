"""server/live_rd.py (issue 14 item 3): the window, the curve's means, BD-rates where the answer is known, the
bootstrap interval, too few points, the cache, and the offline figures from predictions lines."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgepipe.core.bdrate import compare
from edgepipe.server.live_rd import LiveRD, from_predictions, report_lines

QPS = (27, 32, 37, 42)
BITS = {27: 40_000, 32: 22_000, 37: 12_000, 42: 6_000}  # mean bits per frame of the anchor
AGREE = {27: 0.9, 32: 0.8, 33: 0.75, 37: 0.65, 42: 0.45}  # its top-1 agreement


def _feed(rd: LiveRD, model: str, qps=QPS, scale: float = 1.0, n: int = 40, now: float = 100.0, seed: int = 0,
          stream: str = "cam") -> list[dict]:
    """n frames per point: bits around the anchor's (x scale), agreement drawn at the anchor's rate. Returns the
    predictions lines the same frames would give."""
    rng = np.random.default_rng(seed)
    lines = []
    for qp in qps:
        bits = rng.normal(BITS[qp], BITS[qp] * 0.2, n).clip(800)
        agree = rng.random(n) < AGREE[qp]
        for i in range(n):
            nbytes = int(bits[i] * scale / 8)
            measures = {"top1_equal": bool(agree[i]), "top5_overlap": 0.2 + 0.6 * agree[i]}
            rd.add_frame(stream, model, qp, "hevc", nbytes, 0.04, now)
            rd.add_agreement(stream, model, qp, "hevc", measures, now)
            lines.append({"stream": stream, "model": model, "qp": qp, "codec": "hevc", "bytes": nbytes,
                          "agreement": measures})
    return lines


def _bd(summary: dict, measure: str = "top1_agreement", model: str = "ours") -> dict:
    return next(e for e in summary["cam"]["bd"] if e["measure"] == measure and e["model"] == model)


def test_the_curve_is_the_mean_per_operating_point():
    rd = LiveRD()
    rd.add_frame("cam", "none", 30, "hevc", 1000, 0.04, 10.0)
    rd.add_frame("cam", "none", 30, "hevc", 3000, 0.04, 11.0)
    rd.add_agreement("cam", "none", 30, "hevc", {"top1_equal": True, "top5_overlap": 0.8}, 11.0)
    rd.add_agreement("cam", "none", 30, "hevc", {"top1_equal": False, "top5_overlap": 0.4}, 11.0)
    rd.add_label("cam", "none", 30, "hevc", True, 11.0)
    rd.add_frame("cam", "ours-1", 30, "hevc", 500, None, 11.0)
    points = rd.summary(now=12.0)["cam"]["points"]
    none, ours = points
    assert (none["model"], none["qp"], none["frames"], none["bits_per_frame"]) == ("none", 30, 2, 16000.0)
    assert none["kbit_s"] == pytest.approx(32000 / 0.08 / 1000)
    assert none["top1_agreement"] == 0.5 and none["top5_overlap"] == 0.6 and none["top1"] == 1.0
    assert none["top1_agreement_n"] == 2 and none["top1_n"] == 1
    assert ours["bits_per_frame"] == 4000.0 and ours["kbit_s"] is None and ours["top1_agreement"] is None


def test_the_window_evicts_old_samples_and_empty_points():
    rd = LiveRD(window_s=60)
    rd.add_frame("cam", "none", 30, "hevc", 1000, 0.04, 0.0)
    rd.add_agreement("cam", "none", 30, "hevc", {"top1_equal": True, "top5_overlap": 1.0}, 0.0)
    rd.add_frame("cam", "none", 30, "hevc", 2000, 0.04, 50.0)
    rd.add_frame("cam", "none", 40, "hevc", 100, 0.04, 10.0)
    (a, b) = rd.summary(now=55.0)["cam"]["points"]
    assert (a["frames"], b["frames"]) == (2, 1)
    (a,) = rd.summary(now=100.0)["cam"]["points"]  # t=0 and t=10 are out; QP 40 is left empty and goes
    assert (a["qp"], a["frames"], a["bits_per_frame"], a["top1_agreement"]) == (30, 1, 16000.0, None)
    assert rd.summary(now=200.0) == {}
    # and per kind at most max_samples, the newest kept
    small = LiveRD(max_samples=3)
    for i in range(5):
        small.add_frame("cam", "none", 30, "hevc", 100 * (i + 1), 0.04, 1.0)
    assert small.summary(now=1.0)["cam"]["points"][0]["bits_per_frame"] == 8 * 400
    # a stream with one model keeps fewer samples per point, until a second model comes (a ladder)
    rd = LiveRD(max_samples=8, single_model_samples=2)
    for _ in range(5):
        rd.add_frame("cam", "none", 30, "hevc", 100, 0.04, 1.0)
    assert rd.summary(now=1.0)["cam"]["points"][0]["frames"] == 2
    rd.add_frame("cam", "ours-1", 30, "hevc", 100, 0.04, 1.0)
    for _ in range(10):
        rd.add_frame("cam", "none", 30, "hevc", 100, 0.04, 1.0)
    assert [p["frames"] for p in rd.summary(now=1.0)["cam"]["points"]] == [8, 1]


def test_bd_rate_of_a_curve_needing_080_of_the_bits_is_minus_20_percent_with_its_interval():
    rd = LiveRD()
    anchor_lines = _feed(rd, "none", seed=1)
    test_lines = _feed(rd, "ours-1", scale=0.8, seed=1)  # the same frames, 0.8 of the bits
    summary = rd.summary(now=100.0)
    entry = _bd(summary, model="ours-1")
    assert entry["points"] == 4 and entry["qps"] == list(QPS)
    # bytes are whole numbers, so 0.8 is exact to rounding: -20 % within a hundredth of a percent
    assert entry["bd_rate"] == pytest.approx(-20.0, abs=0.02)
    assert entry["bd_rate_pchip"] == pytest.approx(-20.0, abs=0.02)
    lo, hi = entry["ci95"]
    assert lo <= entry["bd_rate"] <= hi and hi - lo > 1  # frames vary: the interval has width
    assert entry["resamples"] == 200 and entry["resamples_defined"] > 150
    # the point estimate is compare() on the curve's means
    means = {p["model"]: p for p in summary["cam"]["points"]}
    assert means["none"]["bits_per_frame"] is not None
    # the top-5 overlap curve is the same agreement, rescaled: the same -20 %
    assert _bd(summary, "top5_overlap", "ours-1")["bd_rate"] == pytest.approx(entry["bd_rate"], abs=1e-6)
    # seeded: computed again, the same interval; offline from the lines, the same figures
    again = LiveRD()
    _feed(again, "none", seed=1)
    _feed(again, "ours-1", scale=0.8, seed=1)
    assert _bd(again.summary(now=100.0), model="ours-1") == entry
    offline = from_predictions(anchor_lines + test_lines)
    assert {k: v for k, v in _bd(offline, model="ours-1").items()} == entry
    (line,) = report_lines(summary)
    assert line.startswith("live BD-rate cam ours-1 vs none (hevc, the last 600 s; 95% CI: bootstrap over GOPs)")
    assert "top-1 agreement -20.0% [" in line


def test_bd_rate_matches_compare_on_the_means_for_a_different_curve():
    rd = LiveRD()
    _feed(rd, "none", seed=2)
    _feed(rd, "ours-1", qps=(27, 32, 37, 42), scale=1.1, seed=3)
    summary = rd.summary(now=100.0)
    pts = {(p["model"], p["qp"]): p for p in summary["cam"]["points"]}
    c = compare([pts["none", q]["bits_per_frame"] for q in QPS], [pts["none", q]["top1_agreement"] for q in QPS],
                [pts["ours-1", q]["bits_per_frame"] for q in QPS], [pts["ours-1", q]["top1_agreement"] for q in QPS])
    # the curve's means are rounded for display (0.1 bit, 1e-5): the same figure to 1e-2 %
    assert _bd(summary, model="ours-1")["bd_rate"] == pytest.approx(c.rate_cubic, abs=0.01)


def test_fewer_than_four_common_points_give_no_figure():
    rd = LiveRD()
    _feed(rd, "none", qps=(27, 32, 37, 42))
    _feed(rd, "ours-1", qps=(27, 32, 37))
    entry = _bd(rd.summary(now=100.0), model="ours-1")
    assert entry["bd_rate"] is None and entry["points"] == 3
    assert entry["reason"] == "not enough points: 3 of the 4 operating points needed have data on both curves"
    assert "top-1 agreement: not enough points" in report_lines(rd.summary(now=100.0))[0]
    # a point with frames but no agreement does not count for that measure
    rd.add_frame("cam", "ours-1", 42, "hevc", 500, 0.04, 100.0)
    assert _bd(rd.summary(now=100.0, fresh=True), model="ours-1")["points"] == 3
    # no model besides the anchor: no BD figure at all
    alone = LiveRD()
    _feed(alone, "none")
    assert alone.summary(now=100.0)["cam"]["bd"] == []


def test_disjoint_quality_ranges_are_undefined_not_a_number():
    rd = LiveRD()
    for model, agree in (("none", (0.1, 0.15, 0.2, 0.25)), ("ours-1", (0.6, 0.7, 0.8, 0.9))):
        for qp, a in zip(QPS, agree):
            for i in range(10):
                rd.add_frame("cam", model, qp, "hevc", 1000 + qp, 0.04, 1.0)
                rd.add_agreement("cam", model, qp, "hevc", {"top1_equal": i < 10 * a, "top5_overlap": a}, 1.0)
    entry = _bd(rd.summary(now=1.0), "top5_overlap", "ours-1")
    assert entry["bd_rate"] is None and "do not overlap" in entry["reason"]


def test_the_bd_figures_are_cached_for_a_few_seconds():
    rd = LiveRD(min_interval_s=3600)
    _feed(rd, "none")
    _feed(rd, "ours-1", scale=0.8)
    first = rd.summary(now=100.0)
    assert rd.computations == 1
    rd.summary(now=100.0)
    assert rd.computations == 1  # nothing changed
    _feed(rd, "ours-1", scale=0.5, seed=9)
    cached = rd.summary(now=100.0)
    assert rd.computations == 1 and cached["cam"]["bd"] == first["cam"]["bd"]  # within the interval: reused
    fresh = rd.summary(now=100.0, fresh=True)
    assert rd.computations == 2 and _bd(fresh, model="ours-1")["bd_rate"] < _bd(first, model="ours-1")["bd_rate"]
    assert math.isfinite(_bd(fresh, model="ours-1")["bd_rate"])


def test_a_stream_that_never_ran_the_anchor_gets_no_bd_line():
    """A plain `capture --engine ours` camera (no ladder, no `none`): nothing to compare, so no report line."""
    rd = LiveRD()
    _feed(rd, "ours")
    summary = rd.summary(now=101.0)
    assert summary["cam"]["bd"] == [] and len(summary["cam"]["points"]) == len(QPS)
    assert report_lines(summary) == []


def test_blocks_are_visits_of_a_point_or_at_most_a_gop_of_frames():
    rd = LiveRD()
    for _visit in range(3):  # a ladder: none, ours, none, ours, ... one 5-frame GOP each
        for model in ("none", "ours"):
            for _ in range(5):
                rd.add_frame("cam", model, 30, "hevc", 100, 0.04, 1.0)
            rd.add_agreement("cam", model, 30, "hevc", {"top1_equal": True, "top5_overlap": 1.0}, 1.0)
    for _ in range(45):  # one long visit: cut every BLOCK_FRAMES frames
        rd.add_frame("cam", "none", 30, "hevc", 100, 0.04, 1.0)
    _, streams = rd._copy(1.0)
    bits, _, quality, bit_blocks, quality_blocks = streams["cam"][("hevc", 30, "none")]
    assert list(np.unique(bit_blocks, return_counts=True)[1]) == [5, 5, 5, 20, 20, 5]
    assert list(quality_blocks["top5_overlap"]) == [1, 2, 3]  # each pair joins the visit its point saw last
    assert list(streams["cam"][("hevc", 30, "ours")][3]) == [1] * 5 + [2] * 5 + [3] * 5


def test_with_sequence_numbers_a_measure_joins_its_own_frames_block_whenever_it_arrives():
    rd = LiveRD()
    for seq in range(45):
        rd.add_frame("cam", "none", 30, "hevc", 100, 0.04, 1.0, (7, seq))
    # pairs are classified later than their frames arrive: seq 3's after seq 44's frame
    for seq in (3, 25, 44):
        rd.add_agreement("cam", "none", 30, "hevc", {"top1_equal": True, "top5_overlap": 1.0}, 1.0, (7, seq))
    rd.add_label("cam", "none", 30, "hevc", True, 1.0, (7, 19))
    _, streams = rd._copy(1.0)
    _, _, _, bit_blocks, quality_blocks = streams["cam"][("hevc", 30, "none")]
    blocks = list(dict.fromkeys(bit_blocks))
    assert len(blocks) == 3 and list(np.unique(bit_blocks, return_counts=True)[1]) == [20, 20, 5]
    assert list(quality_blocks["top5_overlap"]) == [blocks[0], blocks[1], blocks[2]]
    assert list(quality_blocks["top1"]) == [blocks[0]]
    # another epoch (the capture restarted) never shares a block
    rd.add_frame("cam", "none", 30, "hevc", 100, 0.04, 1.0, (8, 3))
    assert rd._copy(1.0)[1]["cam"][("hevc", 30, "none")][3][-1] not in blocks


def test_the_interval_resamples_whole_visits_so_a_changing_scene_widens_it(monkeypatch):
    """Both models follow the same curve, but each GOP shows a scene of its own cost (bits x0.5-1.5). Resampled
    frame by frame, 240 frames per point look like certainty and the interval misses the true 0; resampled by
    visit (12 per point), it covers it."""
    from edgepipe.server import live_rd

    def interval() -> tuple[float, list[float]]:
        rng = np.random.default_rng(2)
        rd = LiveRD(resamples=400)
        for _ in range(12):
            for qp in QPS:
                for model in ("none", "ours"):
                    cost = rng.uniform(0.5, 1.5)
                    for _ in range(20):
                        rd.add_frame("cam", model, qp, "hevc", int(BITS[qp] * cost * rng.uniform(0.95, 1.05) / 8),
                                     0.04, 1.0)
                        measures = {"top1_equal": True, "top5_overlap": AGREE[qp] + rng.normal(0, 0.02)}
                        rd.add_agreement("cam", model, qp, "hevc", measures, 1.0)
        entry = _bd(rd.summary(now=1.0, fresh=True), "top5_overlap")
        return entry["bd_rate"], entry["ci95"]

    estimate, (lo, hi) = interval()
    assert lo < 0 < hi
    monkeypatch.setattr(live_rd, "BLOCK_FRAMES", 1)  # every frame a block of its own: the old bootstrap
    same, (frame_lo, frame_hi) = interval()
    assert same == estimate and not frame_lo < 0 < frame_hi
    assert hi - lo > 3 * (frame_hi - frame_lo)
