"""`edgepipe calibrate`: which output each TensorRT gets, and one-line errors without TensorRT."""
from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import EdgepipeError
from edgepipe.tensorrt.calibration.run import choose_format

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
try:
    HAS_MODELOPT = importlib.util.find_spec("modelopt.onnx.quantization") is not None
except ModuleNotFoundError:
    HAS_MODELOPT = False


@pytest.mark.parametrize("requested, major, modelopt, expected", [
    ("auto", 10, False, "cache"),
    ("auto", 11, False, "qdq"),  # TensorRT 11 has no calibrators
    ("auto", 11, True, "qdq"),
    ("auto", None, True, "qdq"),  # no TensorRT here: ModelOpt alone can still make the Q/DQ model
    ("cache", 10, True, "cache"),
    ("qdq", 10, True, "qdq"),
])
def test_format_choice(requested, major, modelopt, expected):
    assert choose_format(requested, major, modelopt) == expected


@pytest.mark.parametrize("requested, major, modelopt, match", [
    ("auto", None, False, "needs TensorRT 10 .* or NVIDIA ModelOpt"),
    ("cache", None, True, "TensorRT 10, which is not installed"),
    ("cache", 11, True, "TensorRT 11 has no calibrators"),
])
def test_format_errors(requested, major, modelopt, match):
    with pytest.raises(EdgepipeError, match=match):
        choose_format(requested, major, modelopt)


@pytest.mark.skipif(HAS_TRT or HAS_MODELOPT, reason="TensorRT or ModelOpt is installed here")
def test_calibrate_without_tensorrt_is_one_line(tmp_path, small_val_folder):
    result = CliRunner().invoke(cli, ["calibrate", "x.onnx", "--data", str(small_val_folder)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorRT" in lines[0] and "Traceback" not in result.output


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_calibrate_qdq_without_modelopt_names_it(tmp_path, small_val_folder):
    if HAS_MODELOPT:
        pytest.skip("ModelOpt is installed here")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(cli, ["calibrate", str(tmp_path / "m.onnx"), "--data", str(small_val_folder),
                                      "--format", "qdq", "--batch", "4", "-o", str(tmp_path / "m.int8.onnx")])
    assert result.exit_code != 0
    assert "nvidia-modelopt" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.int8.onnx").exists()
