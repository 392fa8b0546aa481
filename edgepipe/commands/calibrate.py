"""`edgepipe calibrate`: INT8 calibration data for TensorRT from real images (tensorrt/calibration/run.py). Its
options are the fields of CalibrateSettings (tensorrt/settings.py), each declared once there."""
from __future__ import annotations

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.tensorrt.settings import CalibrateSettings


@click.command("calibrate")
@click.argument("model")
@options_from(CalibrateSettings)
def calibrate(model: str, **params) -> None:
    """INT8 calibration data for MODEL (an ONNX path or shipped name) from the images in --data."""
    from edgepipe.tensorrt.calibration.run import calibrate as run

    run(build(CalibrateSettings, params, model=model), say=click.echo)
