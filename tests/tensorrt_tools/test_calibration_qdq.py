"""TensorRT 11's INT8 input: a Q/DQ model made by ModelOpt from real images. ONNX Runtime runs the Q/DQ
model on the CPU, so the data side is checked without TensorRT. Skipped where ModelOpt is not installed."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

try:
    HAS_MODELOPT = importlib.util.find_spec("modelopt.onnx.quantization") is not None
except ModuleNotFoundError:
    HAS_MODELOPT = False
HAS_TRT = importlib.util.find_spec("tensorrt") is not None

pytestmark = pytest.mark.skipif(not HAS_MODELOPT, reason="nvidia-modelopt[onnx] is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_tensorrt_build import export_tiny_net

    return export_tiny_net(tmp_path_factory.mktemp("qdq") / "tiny.onnx")


def test_qdq_model_from_real_images_tracks_the_float_model(tiny, tmp_path, small_val_folder):
    import onnxruntime as ort

    from edgepipe.core.files import sha256_file
    from edgepipe.tensorrt.calibration.data import CalibrationBatches
    from edgepipe.tensorrt.calibration.qdq import is_qdq_model, quantize_qdq, source_of

    out = quantize_qdq(tiny, CalibrationBatches(small_val_folder, (224, 224), 4, None), tmp_path / "tiny.int8.onnx")
    assert is_qdq_model(out) and not is_qdq_model(tiny)
    assert source_of(out) == ("tiny.onnx", sha256_file(tiny))  # the plan keeps the float model's id
    x = next(iter(CalibrationBatches(small_val_folder, (320, 240), 4, None)))
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(str(tiny), providers=cpu).run(None, {"input": x})[0]
    q = ort.InferenceSession(str(out), providers=cpu).run(None, {"input": x})[0]
    assert q.dtype == np.float32 and q.shape == ref.shape
    assert np.linalg.norm(q - ref) / np.linalg.norm(ref) < 3e-2


@pytest.mark.skipif(HAS_TRT, reason="with TensorRT 10 installed, auto would pick a calibration cache")
def test_calibrate_cli_writes_a_qdq_model(tiny, tmp_path, small_val_folder):
    from edgepipe.cli import cli
    from edgepipe.tensorrt.calibration.qdq import is_qdq_model

    out = tmp_path / "tiny.int8.onnx"
    result = CliRunner().invoke(cli, ["calibrate", str(tiny), "--data", str(small_val_folder), "--batch", "4",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "(qdq)" in result.output and is_qdq_model(out)
