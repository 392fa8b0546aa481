"""`edgepipe eval --pre guided`: a picture of its own for each codec setting, guided by the recognizer the
evaluation scores with, cached under its settings; codecs it has no model of are refused up front."""
from __future__ import annotations

import csv
import json

from click.testing import CliRunner

from edgepipe.cli import cli


def _eval(*args):
    return CliRunner().invoke(cli, ["eval", "--no-progress", *args])


def test_guided_end_to_end_on_hevc(small_val_folder, tmp_path):
    out = tmp_path / "out"
    res = _eval("--data", str(small_val_folder), "--pre", "none,guided:2", "--codec", "hevc", "--limit", "6",
                "--points", "2", "--jobs", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pre"] for r in rows] == ["none", "none", "guided:2", "guided:2"]
    run = json.loads((out / "run.json").read_text())
    assert run["pre"]["guided:2"].startswith("guided-v1-s2-p30")
    by = {(r["pre"], r["quality"]): r for r in rows}
    for q in {r["quality"] for r in rows}:
        # changed within the budget: its PSNR against the original sits under the codec alone's, by little
        assert 0 < float(by[("none", q)]["psnr_db"]) - float(by[("guided:2", q)]["psnr_db"]) < 6
    from edgepipe.evaluation.runner import Runner

    again = Runner(small_val_folder, "efficientnet-lite0", None, ["none", "guided:2"], ["hevc"], points=2, limit=6,
                   jobs=1, out=out, progress=False).run()
    assert again.computed_tasks == 0  # every guided picture came from the cache, keyed by its settings


def test_guided_with_a_codec_it_has_no_model_of_is_one_line(small_val_folder, tmp_path):
    res = _eval("--data", str(small_val_folder), "--pre", "guided", "--codec", "jpeg2000", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0
    assert "no model of jpeg2000" in res.output and "Traceback" not in res.output


def test_guided_spec_errors_are_one_line(small_val_folder, tmp_path):
    res = _eval("--data", str(small_val_folder), "--pre", "guided:0", "--codec", "hevc", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "STEPS must be 1..200" in res.output and "Traceback" not in res.output


def test_guided_with_a_cropping_view_is_one_line(small_val_folder, tmp_path):
    res = _eval("--data", str(small_val_folder), "--pre", "guided", "--codec", "hevc", "--recognizer-view",
                "centre-crop", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "--recognizer-view native" in res.output and "Traceback" not in res.output
