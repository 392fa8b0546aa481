"""`edgepipe quantize`: an int8 Q/DQ copy of an ED's ONNX model for ONNX Runtime on the CPU (issue 13 item 2).

Its options are the fields of QuantizeSettings (engines/onnx_quantize.py), each declared once there. Calibration
runs on real images shaped as the capture loop shapes frames (tensorrt/calibration/data.py, the batches
`calibrate` uses); engines/onnx_quantize.py says what is quantised and why. Its speed and its accuracy cost
(BD-rate against the float model) are in docs/benchmarks.md; the float model stays the default.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.onnx_quantize import QuantizeSettings


@click.command("quantize")
@click.argument("model")
@options_from(QuantizeSettings)
def quantize(model: str, **params) -> None:
    """int8 (Q/DQ, per-channel) copy of an ED's ONNX MODEL (a path or shipped name) for ONNX Runtime's CPU."""
    settings = build(QuantizeSettings, params, model=model)
    from edgepipe.engines import resolve_model
    from edgepipe.engines.onnx_quantize import quantize_int8
    from edgepipe.tensorrt.build import parse_size
    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    size = parse_size(settings.size)
    onnx = resolve_model(settings.model)
    if not onnx.is_file():
        raise EdgepipeError(f"ONNX model not found: {onnx}")
    batches = CalibrationBatches(settings.data, size, min(8, settings.max_images), settings.max_images)
    output = settings.output or Path.cwd() / f"{onnx.stem}.int8.onnx"
    report = quantize_int8(onnx, output, batches, min_channels=settings.min_channels)
    if batches.skipped:
        report["unreadable_images_skipped"] = batches.skipped
    click.echo(json.dumps(report))
