"""`edgepipe eval` end to end on real images, and its answers to bad input."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli


def _identity_onnx(path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _eval(*args):
    result = CliRunner().invoke(cli, ["eval", "--no-progress", *args])
    return result


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_end_to_end_two_codecs(small_val_folder, tmp_path):
    ident = tmp_path / "ident.onnx"
    _identity_onnx(ident)
    out = tmp_path / "out"
    args = ["--data", str(small_val_folder), "--pre", f"none,tvl1,{ident}", "--codec", "jpeg,jpeg2000",
            "--jobs", "2", "--out", str(out)]
    res = _eval(*args)
    assert res.exit_code == 0, res.output
    rows = _rows(out / "results.csv")
    assert len(rows) == 3 * 2 * 4
    assert set(rows[0]) == {"pre", "codec", "quality", "bpp", "top1", "psnr_db", "n_images", "n_skipped"}
    for r in rows:
        assert r["n_images"] == "12" and r["n_skipped"] == "0"
        assert 0.0 <= float(r["top1"]) <= 1.0
        assert 0.05 < float(r["bpp"]) < 2.0
        assert 15.0 < float(r["psnr_db"]) < 60.0
    for codec in ("jpeg", "jpeg2000"):
        anchor = [r for r in rows if r["pre"] == "none" and r["codec"] == codec]
        bpp = [float(r["bpp"]) for r in anchor]
        assert bpp == sorted(bpp) and bpp[-1] <= 1.0  # 4 points under --max-bpp, low to high
        assert [float(r["psnr_db"]) for r in anchor] == sorted(float(r["psnr_db"]) for r in anchor)
        # an identity model file must reproduce the codec alone exactly
        same = [r for r in rows if r["pre"] == "ident" and r["codec"] == codec]
        assert [(r["bpp"], r["top1"], r["psnr_db"]) for r in same] == [(r["bpp"], r["top1"], r["psnr_db"]) for r in anchor]
    bd = {(r["pre"], r["codec"]): r for r in _rows(out / "bdrate.csv")}
    assert float(bd[("ident", "jpeg")]["bd_rate_cubic_pct"]) == pytest.approx(0.0, abs=1e-9)
    png = (out / "rd.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (out / "results.md").read_text()
    assert "BD-Rate(accuracy) against the codec alone" in md and "| tvl1 |" in md and "paper" in md
    first = (out / "results.csv").read_text()
    assert json.loads((out / "run.json").read_text())["computed_tasks"] > 0
    # same arguments again: everything comes from the cache, same numbers
    res = _eval(*args)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["computed_tasks"] == 0
    assert (out / "results.csv").read_text() == first
    # --compare-to: every other pre-transform against tvl1, from the same cache. Against B, the codec alone
    # (and the identity file) is exactly the inverse of B against the codec alone: same fits, same range.
    res = _eval(*args, "--compare-to", "tvl1")
    assert res.exit_code == 0, res.output
    versus = {(r["pre"], r["codec"]): r for r in _rows(out / "bdrate_vs_tvl1.csv")}
    assert set(versus) == {("ident", "jpeg"), ("ident", "jpeg2000")}
    for codec in ("jpeg", "jpeg2000"):
        # cubic: on 12 images tied accuracies can leave PCHIP undefined (NaN both ways)
        forward, back = float(bd[("tvl1", codec)]["bd_rate_cubic_pct"]), float(versus[("ident", codec)]["bd_rate_cubic_pct"])
        assert (1 + forward / 100) * (1 + back / 100) == pytest.approx(1.0, abs=1e-5)  # the CSV keeps 6 digits
        assert float(versus[("ident", codec)]["bd_top1_cubic_pts"]) == pytest.approx(
            -float(bd[("tvl1", codec)]["bd_top1_cubic_pts"]), abs=1e-5)
    assert "## Against tvl1 (paired)" in (out / "results.md").read_text()


def test_jpeg2000_at_a_target_psnr_end_to_end(small_val_folder, tmp_path):
    out = tmp_path / "out"
    res = _eval("--data", str(small_val_folder), "--pre", "none,tvl1", "--codec", "jpeg2000-db", "--limit", "6",
                "--points", "2", "--jobs", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = _rows(out / "results.csv")
    assert len(rows) == 2 * 2 and {r["codec"] for r in rows} == {"jpeg2000-db"}
    anchor = [r for r in rows if r["pre"] == "none"]
    assert [float(r["bpp"]) for r in anchor] == sorted(float(r["bpp"]) for r in anchor)
    for r in anchor:  # the setting is a target PSNR in dB: the codec alone lands just under it
        assert int(r["quality"]) - 1.5 < float(r["psnr_db"]) < int(r["quality"]) + 0.5
    tv = {r["quality"]: float(r["bpp"]) for r in rows if r["pre"] == "tvl1"}
    assert all(tv[r["quality"]] < float(r["bpp"]) for r in anchor)  # smoother input, fewer bits
    bd = _rows(out / "bdrate.csv")
    assert [(b["pre"], b["codec"], float(b["paper_bd_rate_pct"])) for b in bd] == [("tvl1", "jpeg2000-db", 1.3)]
    md = (out / "results.md").read_text()
    assert "JPEG 2000 (dB)" in md and "target PSNR dB" in md


@pytest.mark.slow
def test_greyscale_odd_sizes_and_unreadable_files(imagenette_val, tmp_path):
    synset = sorted(p for p in imagenette_val.iterdir() if p.is_dir())[0]
    data = tmp_path / "data" / synset.name
    data.mkdir(parents=True)
    srcs = sorted(synset.iterdir())[:2]
    shutil.copy(srcs[0], data / "colour.JPEG")
    grey = cv2.cvtColor(cv2.imread(str(srcs[1])), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(data / "grey_odd.png"), cv2.resize(grey, (181, 157)))  # odd width and height
    (data / "broken.JPEG").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    res = _eval("--data", str(tmp_path / "data"), "--pre", "none", "--codec", "jpeg,hevc", "--points", "2",
                "--max-bpp", "8", "--jobs", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = _rows(out / "results.csv")
    assert len(rows) == 4
    assert all(r["n_images"] == "2" and r["n_skipped"] == "1" for r in rows)
    assert all(np.isfinite(float(r["bpp"])) and float(r["bpp"]) > 0 for r in rows)


def test_unknown_codec_is_one_line(small_val_folder, tmp_path):
    res = _eval("--data", str(small_val_folder), "--codec", "jpeg,webp", "--out", str(tmp_path))
    assert res.exit_code != 0
    assert "unknown codec 'webp'" in res.output and "Traceback" not in res.output


def test_model_that_does_not_load(small_val_folder, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00garbage, not protobuf")
    res = _eval("--data", str(small_val_folder), "--pre", f"none,{bad}", "--codec", "jpeg", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "not a loadable ONNX model" in res.output
    res = _eval("--data", str(small_val_folder), "--pre", "none,no_such_model", "--codec", "jpeg", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "model not found" in res.output


def test_folder_without_labels(tmp_path):
    (tmp_path / "cats").mkdir()
    cv2.imwrite(str(tmp_path / "cats" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    res = _eval("--data", str(tmp_path), "--codec", "jpeg", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "no labelled images" in res.output
    res = _eval("--data", str(tmp_path / "missing"), "--codec", "jpeg", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "not found" in res.output


def test_bad_tvl1_weight(small_val_folder, tmp_path):
    res = _eval("--data", str(small_val_folder), "--pre", "none,tvl1:-2", "--codec", "jpeg", "--out", str(tmp_path))
    assert res.exit_code != 0 and "TV-L1 weight" in res.output


def test_interrupted_run_is_reported_on_its_complete_chunks(small_val_folder, tmp_path, monkeypatch):
    from edgepipe.evaluation import runner as runner_mod

    monkeypatch.setattr(runner_mod, "CHUNK", 6)  # 12 images -> 2 chunks
    out = tmp_path / "out"
    args = dict(recognizer="efficientnet-lite0", weights=None, pres=["none", "tvl1"], codecs=["jpeg"],
                points=3, max_bpp=1.0, jobs=1, out=out, progress=False)
    full = runner_mod.Runner(small_val_folder, **args).run()
    assert full.n_images == 12 and full.computed_tasks > 0
    # lose one cached result of the second chunk, as if the run had been stopped there
    r = runner_mod.Runner(small_val_folder, cached_only=True, **args)
    q = full.points["jpeg"][0]
    victim = r._path(r.pres[1], ("jpeg", q), 1)
    victim.unlink()
    partial = r.run()
    assert partial.n_images == 6 and partial.computed_tasks == 0
    assert partial.points == full.points
    # without --cached-only the missing piece is recomputed, and only it
    again = runner_mod.Runner(small_val_folder, **args).run()
    assert again.n_images == 12 and again.computed_tasks == 1
    key = ("tvl1", "jpeg", q)
    np.testing.assert_array_equal(again.results[key].correct, full.results[key].correct)
    np.testing.assert_allclose(again.results[key].bpp, full.results[key].bpp)


def test_pre_transform_cache_identities_are_unchanged(tmp_path):
    """Evaluation caches under runs/ are keyed with these: a model file by suffix and content, a kind chosen by
    name by its engine's model id. Loading through the engine registry must give the same strings."""
    import hashlib

    from edgepipe.engines import resolve_model
    from edgepipe.evaluation.runner import resolve_pres

    ident = tmp_path / "ident.onnx"
    _identity_onnx(ident)
    ours = resolve_model("ours")
    checkpoint = tmp_path / "ours_ckpt.pt"  # a PyTorch checkpoint loads through the torch engine kind
    shutil.copyfile(ours.with_suffix(".pt"), checkpoint)
    pres = resolve_pres(["none", "tvl1", "tvl1:1", "tvl1:0.5", "ours", str(ident), str(checkpoint)])
    assert [(p.label, p.identity) for p in pres] == [
        ("none", "none"), ("tvl1", "tvl1-lam2-it100"), ("tvl1:1", "tvl1-lam1-it100"),
        ("tvl1:0.5", "tvl1-lam0.5-it100"), ("ours", ".onnx:" + hashlib.sha256(ours.read_bytes()).hexdigest()),
        ("ident", ".onnx:" + hashlib.sha256(ident.read_bytes()).hexdigest()),
        ("ours_ckpt", ".pt:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest())]
    assert [p.spec for p in pres] == ["none", "tvl1", "tvl1:1", "tvl1:0.5", str(ours.resolve()), str(ident.resolve()),
                                      str(checkpoint.resolve())]
    assert resolve_pres(["tvl1"])[0] == pres[0]  # the anchor is added in front when not asked for


def test_tvl1_with_a_weight_end_to_end(small_val_folder, tmp_path):
    out = tmp_path / "out"
    res = _eval("--data", str(small_val_folder), "--pre", "tvl1:1.5", "--codec", "jpeg", "--limit", "6",
                "--points", "2", "--jobs", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = _rows(out / "results.csv")
    assert [r["pre"] for r in rows] == ["none", "none", "tvl1:1.5", "tvl1:1.5"]
    assert json.loads((out / "run.json").read_text())["pre"] == {"none": "none", "tvl1:1.5": "tvl1-lam1.5-it100"}
    smoothed = {r["quality"]: float(r["psnr_db"]) for r in rows if r["pre"] == "tvl1:1.5"}
    assert all(smoothed[r["quality"]] < float(r["psnr_db"]) for r in rows if r["pre"] == "none")  # it filtered


def test_score_among_labels_counts_the_answer_among_the_data_classes(small_val_folder, tmp_path):
    """--score top1-among-labels: top-1 taken among the folder's classes only, computed by the recognizer's
    logits; never below top-1 over all classes; old caches without it are recomputed, the points stay."""
    from edgepipe.core.datasets import list_labelled_images, read_rgb
    from edgepipe.evaluation.runner import RAW, Runner
    from edgepipe.recognition import Classifier

    args = dict(recognizer="efficientnet-lite0", weights=None, pres=["none"], codecs=["jpeg"],
                points=3, max_bpp=1.0, jobs=1, out=tmp_path / "out", progress=False)
    full = Runner(small_val_folder, **args).run()
    # a cache from before --score: drop the new fields from every file
    for path in (tmp_path / "out" / "cache").glob("*.npz"):
        with np.load(path) as z:
            old = {k: z[k] for k in ("bpp", "psnr", "correct")}
        np.savez(path, **old)
    among = Runner(small_val_folder, score="top1-among-labels", **args).run()
    assert among.computed_tasks > 0 and among.points == full.points and among.among_classes == 3
    items = list_labelled_images(small_val_folder)
    classes = np.array(sorted({it.label for it in items}))
    logits = Classifier(threads=1).logits(np.stack([read_rgb(it.path) for it in items]))
    expected = dict(zip((str(it.path) for it in items), classes[logits[:, classes].argmax(1)] == [it.label for it in items]))
    runner = Runner(small_val_folder, score="top1-among-labels", **args)
    order = [str(it.path) for it in runner.items]
    got = among.results[("none",) + RAW].correct
    assert got.tolist() == [int(expected[p]) for p in order]
    assert got.mean() > full.results[("none",) + RAW].correct.mean()  # 3 classes: fewer ways to be wrong
    for key, r in among.results.items():
        assert (r.correct >= full.results[key].correct).all()
    again = runner.run()  # now cached for both scores
    assert again.computed_tasks == 0
    assert Runner(small_val_folder, **args).run().computed_tasks == 0
