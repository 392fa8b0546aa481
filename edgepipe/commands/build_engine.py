"""`edgepipe build-engine`: ONNX model -> TensorRT `.plan` + `.plan.json` sidecar. Its options are the fields of
BuildSettings (tensorrt/settings.py), each declared once there."""
from __future__ import annotations

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.tensorrt.settings import BuildSettings


@click.command("build-engine")
@click.argument("model")
@options_from(BuildSettings)
def build_engine(model: str, **params) -> None:
    """Build a TensorRT plan from an ONNX MODEL (a path, or a shipped model name such as `ours`)."""
    from edgepipe.tensorrt.build import build_engine as run

    click.echo(run(build(BuildSettings, params, model=model)))
