"""`edgepipe calibrate`: INT8 calibration from real images, preprocessed as the capture loop does.

TensorRT 10 -> a calibration cache (TensorRT's entropy calibrator runs inside an INT8 build on the GPU);
`build-engine --precision int8` then reuses it. TensorRT 11 (no calibrators) -> a Q/DQ ONNX model made
with NVIDIA ModelOpt; `build-engine` compiles it.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable

from edgepipe.core.errors import EdgepipeError
from edgepipe.tensorrt.settings import CalibrateSettings

log = logging.getLogger(__name__)


def choose_format(requested: str, trt_major: int | None, modelopt: bool) -> str:
    """auto -> 'cache' with TensorRT 10, 'qdq' with TensorRT 11 or without TensorRT (when ModelOpt is there)."""
    if requested == "cache":
        if trt_major is None:
            raise EdgepipeError("a calibration cache is made by TensorRT 10, which is not installed here "
                                "(see deploy/jetson.md); --format qdq makes a Q/DQ model with ModelOpt instead")
        if trt_major >= 11:
            raise EdgepipeError("TensorRT 11 has no calibrators (no calibration cache): use --format qdq")
        return "cache"
    if requested == "qdq":
        return "qdq"
    if trt_major == 10:
        return "cache"
    if trt_major is not None or modelopt:
        return "qdq"
    raise EdgepipeError("calibrate needs TensorRT 10 (calibration cache) or NVIDIA ModelOpt (Q/DQ model for "
                        "TensorRT 11); neither is installed: sudo apt install python3-libnvinfer on a Jetson, "
                        "pip install tensorrt or 'nvidia-modelopt[onnx]' on a desktop")


def _installed_trt_major() -> int | None:
    from edgepipe.engines.tensorrt_engine import import_tensorrt, tensorrt_major

    try:
        trt = import_tensorrt("calibrate")
    except EdgepipeError as exc:
        log.debug("%s", exc)
        return None
    return tensorrt_major(trt)


def _modelopt_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("modelopt.onnx.quantization") is not None
    except ModuleNotFoundError:
        return False


def calibrate(settings: CalibrateSettings, say: Callable[[str], None] = print) -> Path:
    """Calibrate as `settings` ask, telling `say` what it does and what it wrote; returns the file written
    (a TensorRT 10 calibration cache or a Q/DQ ONNX model)."""
    from edgepipe.engines import resolve_model
    from edgepipe.tensorrt.build import parse_size, parse_workspace
    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    s = settings
    wh, ws = parse_size(s.size), parse_workspace(s.workspace)
    fmt = choose_format(s.format, _installed_trt_major(), _modelopt_installed())
    onnx = resolve_model(s.model)
    if not onnx.is_file():
        raise EdgepipeError(f"ONNX model not found: {onnx}")
    batches = CalibrationBatches(s.data, wh, s.batch_size, s.max_images)  # checks the folder before any GPU work
    say(f"calibrating {onnx.name} on {len(batches.paths)} image(s) from {s.data} at {wh[0]}x{wh[1]}, "
        f"batch {s.batch_size} ({fmt})")
    if fmt == "qdq":
        from edgepipe.tensorrt.calibration.qdq import quantize_qdq

        output = s.output or Path.cwd() / f"{onnx.stem}.int8.onnx"
        quantize_qdq(onnx, batches, output)
        say(f"wrote {output}: build it with edgepipe build-engine {output} --precision int8")
        return output
    output = s.output or Path.cwd() / f"{onnx.stem}.calib"
    _calibrate_cache(onnx, batches, output, ws)
    say(f"wrote {output} ({output.stat().st_size} bytes): "
        f"edgepipe build-engine {onnx.name} --precision int8 --calib-cache {output} reuses it")
    return output


def _calibrate_cache(onnx: Path, batches, output: Path, workspace: int) -> None:
    """TensorRT 10: run an INT8 build with the entropy calibrator; keep the cache, drop the plan."""
    from edgepipe.engines.tensorrt_engine import import_tensorrt
    from edgepipe.tensorrt.build import BuildOptions, Int8Options, ShapeProfile, builder_for

    trt = import_tensorrt("calibrate")
    for stale in (output, output.with_name(output.name + ".json")):
        stale.unlink(missing_ok=True)  # calibrate means measure again, never reuse
    shape = batches.shape
    options = BuildOptions(
        precision="int8", shapes=ShapeProfile(shape, shape, shape), workspace=workspace,
        int8=Int8Options(data=batches.root, cache=output, size=batches.size, batch_size=batches.batch_size,
                         max_images=batches.max_images),
    )
    with tempfile.TemporaryDirectory(prefix="edgepipe-calib-") as tmp:
        builder_for(trt).build(onnx, Path(tmp) / "calibration.plan", options)
    if not output.is_file():
        raise EdgepipeError("TensorRT finished without writing a calibration cache (see the log with -vv)")
