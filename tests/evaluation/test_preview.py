"""`edgepipe preview` on real images, real codecs and the shipped ED; its answers to bad input."""
from __future__ import annotations

import json
import math
import re

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.datasets import read_rgb
from edgepipe.core.labels import class_name
from edgepipe.evaluation import preview as pv_module
from edgepipe.evaluation.preview import GAP, display_size, make_preview
from edgepipe.media.codecs import encode_image

IMAGE = "n03028079/n03028079_11250.JPEG"  # a church at 224x224, the docs figure


@pytest.fixture(scope="module")
def church(imagenette_val):
    return imagenette_val / IMAGE


def _preview(*args):
    return CliRunner().invoke(cli, ["preview", *map(str, args)])


@pytest.fixture(scope="module")
def ours_run(church, tmp_path_factory):
    out = tmp_path_factory.mktemp("preview") / "ours.png"
    res = _preview("--engine", "ours", church, "-o", out, "--qp", "37", "--json")
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_png_is_four_panels_wide_with_captions(ours_run):
    out, report = ours_run
    picture = cv2.imread(str(out))
    assert picture is not None
    pw, ph = display_size(224, 224)
    assert (pw, ph) == (448, 448)  # small frames enlarged x2 for reading
    assert picture.shape[1] == 4 * pw + 3 * GAP
    assert picture.shape[0] > ph + 100  # the caption band
    assert [p["panel"] for p in report["panels"]] == ["original", "ed", "ed_codec", "codec"]


def test_bytes_are_those_of_an_independent_encode(ours_run, church):
    from edgepipe.engines import load_engine

    _, report = ours_run
    panels = {p["panel"]: p for p in report["panels"]}
    image = read_rgb(church)
    anchor = encode_image("hevc", image, 37, threads=1)
    assert panels["codec"]["bytes"] == len(anchor)
    assert panels["codec"]["bpp"] == pytest.approx(len(anchor) * 8 / (224 * 224))
    ed = load_engine("ours")
    try:
        ed_image = ed.run(image[None])[0]
    finally:
        ed.close()
    assert panels["ed_codec"]["bytes"] == len(encode_image("hevc", ed_image, 37, threads=1))
    assert panels["original"]["bytes"] is None and panels["original"]["bpp"] == 24.0


def test_ours_changes_the_image_and_top5_are_named(ours_run):
    _, report = ours_run
    panels = {p["panel"]: p for p in report["panels"]}
    assert panels["original"]["identical"]
    for key in ("ed", "ed_codec", "codec"):
        assert not panels[key]["identical"] and 15.0 < panels[key]["psnr_db"] < 60.0
    assert report["engine"] == "ours" and report["label"] == {"index": 497, "name": "church"}
    for p in report["panels"]:
        assert len(p["top5"]) == 5
        assert all(t["name"] == class_name(t["index"]) for t in p["top5"])
        probs = [t["p"] for t in p["top5"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_engine_none_leaves_the_frame_identical(church, tmp_path):
    out = tmp_path / "none.png"
    res = _preview("--engine", "none", church, "-o", out, "--codec", "jpeg", "--qp", "20")
    assert res.exit_code == 0, res.output
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in res.stdout.splitlines()[1:])}
    assert rows["panel"] == ["bytes", "bpp", "PSNR", "top-5"]
    assert rows["ED output: none"][:3] == ["-", "24.000", "identical"]
    anchor = len(encode_image("jpeg", read_rgb(church), 20))
    assert rows["none + JPEG q20"][0] == rows["JPEG q20 alone"][0] == str(anchor)
    assert out.is_file()


def test_engine_none_library_numbers(church):
    pv = make_preview(church, engine="none", codec="jpeg2000-db", quality=30)
    original, ed, ed_codec, codec = pv.panels
    assert np.array_equal(ed.image, original.image) and math.isinf(ed.psnr_db)
    assert ed_codec.nbytes == codec.nbytes == len(encode_image("jpeg2000-db", original.image, 30))
    assert ed_codec.top5 == codec.top5


def test_video_frame_k_is_the_kth_decoded_frame(video_clip, tmp_path):
    pv = make_preview(video_clip, engine="none", codec="jpeg", quality=30, frame=3)
    with av.open(str(video_clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 3:
                expected = frame.to_ndarray(format="rgb24")
                break
    assert pv.frame == 3 and (pv.width, pv.height) == (768, 432)
    assert np.array_equal(pv.panels[0].image, expected)
    pv_module.write_png(pv, tmp_path / "v.png")
    assert cv2.imread(str(tmp_path / "v.png")).shape[1] == 4 * 768 + 3 * GAP


@pytest.mark.parametrize("args, message", [
    (["--engine", "ours", "{missing}", "-o", "{out}"], "input not found"),
    (["--engine", "no-such-model", "{image}", "-o", "{out}"], "model not found"),
    (["--engine", "{tmp}/absent.onnx", "{image}", "-o", "{out}"], "model file not found"),
    (["--qp", "52", "{image}", "-o", "{out}"], "hevc QP must be 0..51"),
    (["--codec", "jpeg", "--qp", "0", "{image}", "-o", "{out}"], "jpeg quality must be 1..100"),
    (["{image}", "-o", "{tmp}/no/such/dir/p.png"], "does not exist"),
    (["{image}", "-o", "{tmp}/p.jpg"], "must be a .png"),
    (["{unreadable}", "-o", "{out}"], "unreadable image"),
    (["{text}", "-o", "{out}"], "neither a readable image nor a readable video"),
    (["--frame", "2", "{image}", "-o", "{out}"], "is an image"),
])
def test_bad_input_is_one_line_before_any_work(args, message, church, tmp_path, monkeypatch):
    import edgepipe.recognition

    def no_work(*a, **k):
        raise AssertionError("the recognizer was loaded before the input was checked")

    monkeypatch.setattr(edgepipe.recognition, "Classifier", no_work)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("hello\n")
    values = {"missing": tmp_path / "missing.jpg", "out": tmp_path / "p.png", "image": church, "tmp": tmp_path,
              "unreadable": tmp_path / "bad.jpg", "text": tmp_path / "notes.txt"}
    res = _preview(*[a.format(**values) for a in args])
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "p.png").exists()


def test_guided_preview_changes_the_picture_within_its_budget(church):
    """--engine guided: the picture optimised for this codec setting, within its PSNR floor, scored as coded."""
    pv = make_preview(church, engine="guided:2", codec="hevc", quality=47)
    original, guided, guided_codec, codec = pv.panels
    assert pv.engine == "guided:2"
    assert 30.0 - 0.2 <= guided.psnr_db < 100  # changed, within the floor (uint8 rounding aside)
    assert guided_codec.nbytes == len(encode_image("hevc", guided.image, 47, threads=1))  # as eval codes it


def test_guided_preview_with_a_codec_it_cannot_model_is_one_line(church, tmp_path):
    res = _preview("--engine", "guided", church, "-o", tmp_path / "g.png", "--codec", "jpeg2000", "--qp", "40")
    assert res.exit_code != 0 and "no model of jpeg2000" in res.output and "Traceback" not in res.output
