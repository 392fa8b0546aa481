"""`edgepipe train`, `export` and `holdout`. The same `train` runs on a laptop CPU (EfficientNet-Lite0,
Imagenette, minutes) and on a GPU (VGG-16, ImageNet, hours): CUDA is used whenever it is available. Its
options are the fields of TrainConfig (train/config.py), each declared once there."""
from __future__ import annotations

import json

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.core.errors import EdgepipeError
from edgepipe.train.config import TrainConfig


@click.command()
@options_from(TrainConfig)
def train(**params) -> None:
    """Train an ED pre-transform against a frozen recognizer.

    loss = CE(recognizer(ED(x)), y) + LAMBDA_TV * TV(ED(x)) by default (the paper). With --codec the
    recognizer also judges the decoded ED output (real HEVC/JPEG round trip, gradient through a DCT model of it),
    and --lambda-rate, --lambda-mse and --distill add a calibrated rate term, a fidelity anchor and
    label-free distillation (docs/training.md)."""
    cfg = build(TrainConfig, params)  # every check that needs no data or model, before torch loads
    from edgepipe.train.loop import train as run

    result = run(cfg)
    click.echo(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}))


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--onnx", "onnx_path", required=True, type=click.Path(), help="ONNX file to write.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--check-data", type=click.Path(), default=None,
              help="Real images (a folder) for the parity check; default: the bundled demo images.")
@click.option("--tolerance", type=float, default=1e-3, show_default=True,
              help="Fail when ONNX and PyTorch differ by more than this (on [0, 1] pixels).")
def export(checkpoint, onnx_path, opset, check_data, tolerance) -> None:
    """Export a trained ED to ONNX (dynamic batch, H and W) and check it against PyTorch."""
    from edgepipe.train.export import export_onnx

    report = export_onnx(checkpoint, onnx_path, opset=opset, check_data=check_data, tolerance=tolerance)
    click.echo(json.dumps(report))


@click.command()
@click.option("--data", required=True, type=click.Path(), help="Training images, ImageNet layout ROOT/<synset>/*.")
@click.option("--out", required=True, type=click.Path(), help="New folder to write the hold-out to.")
@click.option("--fraction", type=float, default=0.05, show_default=True,
              help="The same fraction as train --holdout.")
@click.option("--washed", default=None, metavar="SIZE[,SIZE...]",
              help="Area-downscale to SIZE x SIZE and save PNG (washes out the JPEG grid), instead of links. "
                   "Several sizes write every image at each (<name>@SIZE.png); eval's intervals then draw photos "
                   "with all their views.")
def holdout(data, out, fraction, washed) -> None:
    """Write the images `train --holdout FRACTION` leaves out, as a labelled folder for `edgepipe eval`."""
    from edgepipe.train.split import write_holdout

    sizes = None
    if washed is not None:
        try:
            sizes = tuple(int(v) for v in washed.split(","))
        except ValueError:
            raise EdgepipeError(f"--washed takes sizes like 160 or 144,160,176, got {washed!r}") from None
    n = write_holdout(data, out, fraction, sizes)
    shown = ", ".join(f"{s}x{s}" for s in sizes or ())
    click.echo(f"{n} images written to {out}" + (f" ({shown} PNG)" if sizes else " (links)"))
