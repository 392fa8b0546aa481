"""`edgepipe quantize` (commands/quantize.py): writes an int8 model the engine loads; a bad calibration folder,
model or option is one `Error:` line before any work."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def test_quantize_writes_a_model_the_engine_runs(tmp_path, small_val_folder):
    import numpy as np

    from edgepipe.engines import load_engine

    out = tmp_path / "ours.int8.onnx"
    result = CliRunner().invoke(cli, ["quantize", "ours", "--calibration-data", str(small_val_folder),
                                      "--images", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["calibration_images"] == 8 and len(report["quantised_convs"]) == 3
    engine = load_engine(str(out), 1)
    frames = np.full((1, 64, 96, 3), 128, np.uint8)
    assert engine.run(frames).shape == frames.shape


@pytest.mark.parametrize("args, message", [
    (["--calibration-data", "{tmp}/missing"], "calibration data folder not found"),
    (["--calibration-data", "{tmp}"], "no images in"),
    (["--calibration-data", "{data}", "--size", "15x15"], "calibration size must be even and at least 16x16"),
])
def test_bad_inputs_are_one_line(tmp_path, small_val_folder, args, message):
    args = [a.format(tmp=tmp_path, data=small_val_folder) for a in args]
    result = CliRunner().invoke(cli, ["quantize", "ours", *args, "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--min-channels", "0"], "0 is not in the range x>=1"),
    (["--images", "0"], "0 is not in the range x>=1"),
    ([], "Missing option '--calibration-data'"),
])
def test_bad_flags_are_refused_by_the_parser(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["quantize", "ours", *args, "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_every_setting_is_a_flag_with_help_and_round_trips():
    import dataclasses
    from pathlib import Path

    from edgepipe.commands.from_dataclass import build
    from edgepipe.commands.quantize import quantize
    from edgepipe.engines.onnx_quantize import QuantizeSettings

    options = {p.name: p for p in quantize.params if p.param_type_name == "option"}
    assert set(options) == {f.name for f in dataclasses.fields(QuantizeSettings)} - {"model"}
    assert all(p.help for p in options.values()) and options["data"].required
    assert options["output"].opts == ["-o", "--output"] and options["data"].opts == ["--calibration-data"]
    argv = ["m.onnx", "--calibration-data", "d", "-o", "q.onnx", "--size", "320x240", "--images", "64",
            "--min-channels", "16"]
    params = dict(quantize.make_context("quantize", argv).params)
    assert build(QuantizeSettings, params, model=params.pop("model")) == QuantizeSettings(
        model="m.onnx", data=Path("d"), output=Path("q.onnx"), size="320x240", max_images=64, min_channels=16)


def test_a_missing_model_is_one_line(tmp_path, small_val_folder):
    result = CliRunner().invoke(cli, ["quantize", str(tmp_path / "nope.onnx"), "--calibration-data",
                                      str(small_val_folder)])
    assert result.exit_code != 0 and result.output.count("\n") == 1 and "not found" in result.output
