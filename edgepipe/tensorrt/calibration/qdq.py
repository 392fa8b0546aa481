"""Explicit INT8 quantization for TensorRT 11 (which has no calibrators): a Q/DQ ONNX model made by
NVIDIA ModelOpt's ONNX post-training quantization (`modelopt.onnx.quantization.quantize`), calibrated on
the same real-image batches as the TensorRT 10 calibrator. Any TensorRT from 10 on builds the result
as a strongly typed network.

The Q/DQ model records its float source (`edgepipe.source_onnx_*` metadata), so a plan built from it
keeps the source model's id.
"""
from __future__ import annotations

import logging
from pathlib import Path

from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)

SOURCE_NAME_KEY = "edgepipe.source_onnx_name"
SOURCE_SHA_KEY = "edgepipe.source_onnx_sha256"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_qdq_model(onnx_path: str | Path) -> bool:
    """True when the model carries Q/DQ nodes (explicit quantization: no calibrator, no INT8 flag)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def source_of(onnx_path: str | Path) -> tuple[str, str] | None:
    """(name, sha256) of the float model a Q/DQ model was made from, when it says so."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    if SOURCE_NAME_KEY in props and SOURCE_SHA_KEY in props:
        return props[SOURCE_NAME_KEY], props[SOURCE_SHA_KEY]
    return None


def _import_modelopt_quantize():
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise EdgepipeError(
            "INT8 for TensorRT 11 needs a Q/DQ ONNX model, made with NVIDIA ModelOpt: "
            "pip install 'nvidia-modelopt[onnx]' (not installed here)"
        ) from None
    return quantize


def quantize_qdq(onnx_path: str | Path, batches, output: str | Path, method: str = "entropy") -> Path:
    """Write a Q/DQ INT8 copy of `onnx_path` to `output`, calibrated on `batches` (CalibrationBatches)."""
    import onnx
    import onnxruntime as ort

    from edgepipe.core.files import sha256_file

    quantize = _import_modelopt_quantize()
    onnx_path, output = Path(onnx_path), Path(output)
    model = onnx.load(str(onnx_path), load_external_data=False)
    if len(model.graph.input) != 1:
        raise EdgepipeError(f"{onnx_path}: expected one input, got {len(model.graph.input)}")
    input_name = model.graph.input[0].name
    data = batches.array()
    log.info("quantizing %s with ModelOpt on %d image(s) of %s", onnx_path.name, data.shape[0], data.shape[1:])
    # Calibrate on the GPU when ONNX Runtime can; ModelOpt falls back along this list.
    eps = ["cuda:0", "cpu"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]
    output.parent.mkdir(parents=True, exist_ok=True)
    quantize(onnx_path=str(onnx_path), quantize_mode="int8", calibration_data={input_name: data},
             calibration_method=method, calibration_eps=eps, output_path=str(output))
    if not output.is_file():
        raise EdgepipeError(f"ModelOpt did not write {output}")
    qdq = onnx.load(str(output))
    for key, value in ((SOURCE_NAME_KEY, onnx_path.name), (SOURCE_SHA_KEY, sha256_file(onnx_path))):
        entry = qdq.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(qdq, str(output))
    return output
