"""Operating-point selection and bpp arithmetic."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.evaluation.points import Candidate, candidate_settings, select_points
from edgepipe.media.codecs import bits_per_pixel, encode_image

# anchor mean bpp and top-1 of a made-up codec, low rate to high rate
GRID = [Candidate(q, b, a) for q, b, a in [
    (1, 0.05, 0.05), (2, 0.08, 0.20), (3, 0.10, 0.42), (4, 0.14, 0.50), (5, 0.20, 0.58), (6, 0.28, 0.64),
    (7, 0.40, 0.68), (8, 0.56, 0.70), (9, 0.80, 0.71), (10, 1.00, 0.72), (11, 1.30, 0.72)]]


def test_four_points_span_the_useful_range_under_the_ceiling():
    pts = select_points(GRID, 4, max_bpp=1.0, reference_top1=0.8)
    # useful: top-1 >= 0.4 (half of 0.8) and bpp <= 1.0 -> settings 3..10; ends always included
    assert pts[0] == 3 and pts[-1] == 10 and len(pts) == 4
    bpp = {c.quality: c.bpp for c in GRID}
    logs = np.log([bpp[q] for q in pts])
    assert np.all(np.diff(logs) > 0)
    # evenly spread in log-rate: no gap more than twice another
    assert np.diff(logs).max() < 2 * np.diff(logs).min()


def test_ceiling_and_point_count_are_respected():
    assert select_points(GRID, 4, max_bpp=0.5, reference_top1=0.8)[-1] == 7
    six = select_points(GRID, 6, max_bpp=1.0, reference_top1=0.8)
    assert len(six) == len(set(six)) == 6 and set(select_points(GRID, 2, 1.0, 0.8)) == {3, 10}


def test_equal_rates_count_once_and_too_few_is_an_error():
    dup = [Candidate(1, 0.3, 0.6), Candidate(2, 0.3, 0.6), Candidate(3, 0.5, 0.7), Candidate(4, 0.9, 0.7)]
    with pytest.raises(EdgepipeError, match="only 3 candidate"):
        select_points(dup, 4, max_bpp=1.0, reference_top1=0.7)
    assert select_points(dup, 3, max_bpp=1.0, reference_top1=0.7) == [1, 3, 4]
    with pytest.raises(EdgepipeError):
        select_points(GRID, 1, 1.0, 0.8)


def test_candidate_grids_are_ordered_low_to_high_rate():
    grid = {codec: list(candidate_settings(codec)) for codec in ("jpeg", "jpeg2000", "jpeg2000-db", "hevc")}
    assert grid["jpeg"] == sorted(grid["jpeg"])
    assert grid["jpeg2000"] == sorted(grid["jpeg2000"])
    assert grid["jpeg2000-db"] == sorted(grid["jpeg2000-db"])  # target PSNR: higher = more bits
    assert grid["hevc"] == sorted(grid["hevc"], reverse=True)  # QP: lower = more bits


def test_bpp_is_bytes_times_8_over_pixels(tmp_path, imagenette_val):
    assert bits_per_pixel(1000, 100, 80) == 1.0
    assert bits_per_pixel(3, 2, 3) == 4.0
    # a real file written to disk: its size on disk is what bpp counts
    src = next(p for d in sorted(imagenette_val.iterdir()) for p in sorted(d.iterdir()))
    rgb = cv2.imread(str(src))[..., ::-1]
    h, w = rgb.shape[:2]
    data = encode_image("jpeg", np.ascontiguousarray(rgb), 50)
    path = tmp_path / "q50.jpg"
    path.write_bytes(data)
    assert bits_per_pixel(path.stat().st_size, w, h) == pytest.approx(len(data) * 8 / (w * h))
    ok, ref = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert len(data) == len(ref)  # same bytes as libjpeg straight from OpenCV


def test_hevc_stream_carries_no_encoder_banner():
    # libx265 writes a ~2 KB SEI with its version and options unless told not to; it would add
    # ~0.35 bpp to every 224x224 still and swamp the low-rate points.
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode_image("hevc", frame, 51)
    assert b"x265" not in data and len(data) < 1500


def test_every_still_codec_has_candidates_titles_and_a_probe_setting():
    from edgepipe.evaluation.report import codec_title, paper_bd
    from edgepipe.evaluation.runner import check_codecs
    from edgepipe.media.codecs import CODECS, STILL_CODECS

    for codec in STILL_CODECS:
        assert candidate_settings(codec) and codec_title(codec) and CODECS[codec].setting.report_name
    assert check_codecs(["jpeg2000-db", "jpeg2000"]) == ["jpeg2000-db", "jpeg2000"]
    # the paper has one JPEG 2000 column: both of our JPEG 2000 modes are set against it
    assert paper_bd("ours", "jpeg2000-db") == paper_bd("ours", "jpeg2000") == -17.8
    assert np.isnan(paper_bd("ident", "jpeg2000-db"))
