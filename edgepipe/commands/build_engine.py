"""`edgepipe build-engine`: ONNX model -> TensorRT `.plan` + `.plan.json` sidecar."""
from __future__ import annotations

from pathlib import Path

import click

from edgepipe.core.errors import EdgepipeError


def default_cache_path(onnx: Path) -> Path:
    """Where `calibrate` writes and `build-engine --precision int8` looks for a TensorRT 10 cache."""
    return Path.cwd() / f"{onnx.stem}.calib"


@click.command("build-engine")
@click.argument("model")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Plan file to write [default: ./MODEL-PRECISION.plan].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True)
@click.option("--shapes", default="32x32:1280x720:1920x1080", show_default=True,
              help="Input sizes MIN:OPT:MAX, each WIDTHxHEIGHT (or NCHW as Nx3xHxW). OPT is tuned for.")
@click.option("--max-batch", type=int, default=1, show_default=True, help="Largest batch the plan accepts.")
@click.option("--workspace", default="1G", show_default=True, help="Builder scratch memory limit, e.g. 512M, 2G.")
@click.option("--calib-data", type=click.Path(file_okay=False, path_type=Path),
              help="int8: folder of real images to calibrate on (labelled or flat).")
@click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="int8 on TensorRT 10: calibration cache, reused when valid [default: ./MODEL.calib].")
@click.option("--calib-size", default="224x224", show_default=True, help="int8: calibration WIDTHxHEIGHT.")
@click.option("--calib-batch", type=int, default=8, show_default=True)
@click.option("--calib-images", type=int, default=512, show_default=True, help="At most this many images.")
@click.option("--no-progress", is_flag=True, help="No status line during the build.")
def build_engine(model: str, output: Path | None, precision: str, shapes: str, max_batch: int, workspace: str,
                 calib_data: Path | None, calib_cache: Path | None, calib_size: str, calib_batch: int,
                 calib_images: int, no_progress: bool) -> None:
    """Build a TensorRT plan from an ONNX MODEL (a path, or a shipped model name such as `ours`)."""
    from edgepipe.engines import resolve_model
    from edgepipe.engines.tensorrt_engine import import_tensorrt
    from edgepipe.tensorrt.build import BuildOptions, Int8Options, parse_shapes, parse_size, parse_workspace

    # Options first (pure parsing), then files, then TensorRT: a typo is named before a missing install.
    options = BuildOptions(
        precision=precision, shapes=parse_shapes(shapes, max_batch), workspace=parse_workspace(workspace),
        int8=Int8Options(data=calib_data, size=parse_size(calib_size), batch_size=calib_batch,
                         max_images=calib_images),
        progress=not no_progress,
    )
    onnx = resolve_model(model)
    if not onnx.is_file():
        raise EdgepipeError(f"ONNX model not found: {onnx}")
    if onnx.suffix.lower() != ".onnx":
        raise EdgepipeError(f"build-engine takes an ONNX model, got {onnx.name}")
    trt = import_tensorrt("build-engine")
    from edgepipe.tensorrt.build import builder_for

    options.int8.cache = calib_cache or default_cache_path(onnx)
    output = output or Path.cwd() / f"{onnx.stem}-{precision}.plan"
    sidecar = builder_for(trt).build(onnx, output, options)
    click.echo(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, {sidecar.precision}, TensorRT "
               f"{sidecar.tensorrt_version}, {sidecar.gpu_name}) and {output.name}.json")
    click.echo(f"run it: edgepipe capture --engine {output} ...")
