"""ONNX Runtime int8 (Q/DQ) quantisation of an ED (engines/onnx_quantize.py, issue 13 item 2): the model loads in
the engine, runs, and stays within a stated tolerance of float32 on real images; what it quantises; its errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.onnx_engine import OnnxEngine
from edgepipe.engines.onnx_quantize import quantize_int8, wide_convs

MODELS = Path(__file__).resolve().parents[2] / "edgepipe" / "data" / "models"

# int8 against float32 on real photos, in uint8 levels (the ED itself moves pixels by ~9-17 levels on average;
# measured with 256 calibration images: max 2, mean 0.10-0.13, PSNR 57-58 dB; here 16 images calibrate)
MAX_LEVELS, MEAN_LEVELS = 6, 0.5


def _calibration(imagenette_train: Path, n: int = 16):
    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    return CalibrationBatches(imagenette_train, (224, 224), 8, n)


@pytest.fixture(scope="module")
def int8_ours(tmp_path_factory, imagenette_train) -> tuple[Path, dict]:
    target = tmp_path_factory.mktemp("int8") / "ours.int8.onnx"
    return target, quantize_int8(MODELS / "ours.onnx", target, _calibration(imagenette_train))


def test_the_quantised_model_runs_close_to_float(int8_ours, small_val_folder):
    import cv2

    path, report = int8_ours
    assert report["calibration_images"] == 16 and report["pixel_shuffle_as_conv_transpose"] == 2
    assert report["quantised_convs"] == ["/down2/Conv", "/body/body.0/conv1/Conv", "/body/body.0/conv2/Conv"]
    int8, fp32 = OnnxEngine(path, threads=1), OnnxEngine(MODELS / "ours.onnx", threads=1)
    assert int8.rewrites == ["without_crops:4"]  # already ConvTranspose; its crop-free graph checks out
    photos = [read_rgb(i.path) for i in list_labelled_images(small_val_folder)[:4]]
    for batch in (np.stack(photos[:3]), np.ascontiguousarray(photos[3][None, :223, :201]),
                  cv2.resize(photos[0], (1280, 720))[None]):
        got, ref = int8.run(batch).astype(int), fp32.run(batch).astype(int)
        assert got.shape == batch.shape
        diff = np.abs(got - ref)
        assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())


def test_only_wide_convolutions_are_int8(int8_ours):
    import onnx

    model = onnx.load(str(int8_ours[0]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and "DepthToSpace" not in ops
    quantised_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Conv"
                        and n.input[0].endswith("DequantizeLinear_Output")}
    assert len(quantised_inputs) == 3  # down2, body conv1, conv2; stem and out read float
    # the skip connections read the float activations, not the rounded copies made for the convs
    adds = {n.name: list(n.input) for n in model.graph.node if n.op_type == "Add"}
    assert not [i for i in adds["/Add"] if "DequantizeLinear" in i]  # 1/2 resolution skip
    assert adds["/body/body.0/Add"][0] == "/Relu_2_output_0"  # the residual's shortcut
    # before the rewrite the 1x1 upsampling convs are wide too; as ConvTranspose they stay float
    assert wide_convs(onnx.load(str(MODELS / "ours.onnx")))[-2:] == ["/up2/Conv", "/up1/Conv"]


def test_quantisation_errors_are_one_line(tmp_path, imagenette_train):
    with pytest.raises(EdgepipeError, match="model file not found"):
        quantize_int8(tmp_path / "nope.onnx", tmp_path / "out.onnx", [])
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgepipeError, match="not a readable ONNX model"):
        quantize_int8(tmp_path / "junk.onnx", tmp_path / "out.onnx", [])
    with pytest.raises(EdgepipeError, match="no convolution with 512 or more channels"):
        quantize_int8(MODELS / "ours.onnx", tmp_path / "out.onnx", _calibration(imagenette_train), min_channels=512)
    with pytest.raises(EdgepipeError, match="no calibration images"):
        quantize_int8(MODELS / "ours.onnx", tmp_path / "out.onnx", [])
    assert not (tmp_path / "out.onnx").exists()  # nothing half-written
