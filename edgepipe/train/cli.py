"""`edgepipe train` and `edgepipe export`. The same command trains on a laptop CPU (EfficientNet-Lite0,
Imagenette, minutes) and on a GPU (VGG-16, ImageNet, hours): CUDA is used whenever it is available."""
from __future__ import annotations

import json
import logging

import click

from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS

log = logging.getLogger(__name__)


@click.command()
@click.option("--data", required=True, type=click.Path(), help="Training images, ImageNet layout ROOT/<synset>/*.")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True,
              help="Frozen recognizer (vgg16 needs --weights).")
@click.option("--weights", type=click.Path(), default=None, help="Recognizer weight file (vgg16 needs one).")
@click.option("--lambda-tv", "lambda_tv", type=float, default=1.0, show_default=True,
              help="Weight of the per-pixel anisotropic TV term.")
@click.option("--tv", "tv_kind", type=click.Choice(["anisotropic", "isotropic"]), default="anisotropic",
              show_default=True)
@click.option("--no-bypass", is_flag=True, help="Plain encoder-decoder without skip/residual connections.")
@click.option("--out", required=True, type=click.Path(), help="Checkpoint to write (rewritten atomically).")
@click.option("--widths", default="16,32,64", show_default=True, help="ED channels at its three scales.")
@click.option("--blocks", "n_blocks", type=int, default=1, show_default=True, help="Residual blocks in the body.")
@click.option("--stem-stride", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="2: work at half resolution from the first conv on (ours-fast, ~1/4 of the FLOPs).")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--crop", type=int, default=128, show_default=True, help="Random crop side (native pixel scale).")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--recon-warmup", type=int, default=0, show_default=True,
              help="First steps train MSE(ED(x), x) only (Palacio et al. pre-train the AE to reconstruct).")
@click.option("--finetune-lr", type=float, default=None,
              help="Learning rate once the reconstruction warm-up ends (default: --lr).")
@click.option("--codec", default=None, metavar="RANGES",
              help="Real codec in the loop: comma list of CODEC:LOW-HIGH, taking turns per step, e.g. "
                   "hevc:31-47,jpeg:5-40 (HEVC intra QP, JPEG quality). The loss then sees the decoded output.")
@click.option("--codec-workers", type=int, default=None, help="Threads coding crops (default: cores, at most 8).")
@click.option("--codec-preset", default="medium", show_default=True, help="libx265 preset in the loop.")
@click.option("--backward", type=click.Choice(["dct", "identity"]), default="dct", show_default=True,
              help="Gradient through the codec: a differentiable 8x8-DCT soft-quantisation model, or identity.")
@click.option("--clean-weight", type=float, default=0.5, show_default=True,
              help="With --codec: weight of the task loss on the uncoded ED output (the coded one weighs 1).")
@click.option("--lambda-rate", type=float, default=0.0, show_default=True,
              help="Weight of the block-DCT rate term, calibrated to measured bits per pixel (needs --codec).")
@click.option("--lambda-mse", type=float, default=0.0, show_default=True,
              help="Fidelity anchor: weight of MSE(ED(x), x), keeps the stream watchable.")
@click.option("--distill", type=float, default=None, metavar="T",
              help="Distil at temperature T: match the recognizer's output on the original image, no labels.")
@click.option("--rescale-min", type=float, default=1.0, show_default=True,
              help="Area-downscale each image by a random factor in [RESCALE_MIN, 1] before cropping "
                   "(washes out the JPEG grid of the training images).")
@click.option("--holdout", type=float, default=0.0, show_default=True,
              help="Fraction of --data left out for choosing models (write it with edgepipe holdout).")
@click.option("--max-minutes", type=float, default=None, help="Wall-clock training budget (summed over resumes).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps in total.")
@click.option("--val-data", type=click.Path(), default=None, help="Labelled images validated after each epoch.")
@click.option("--val-limit", type=int, default=200, show_default=True, help="Validation images (top-1).")
@click.option("--bpp-limit", type=int, default=48, show_default=True, help="Of those, how many are HEVC-encoded.")
@click.option("--qp", type=int, default=32, show_default=True, help="HEVC intra QP for the bits-per-pixel check.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option("--init", "init", type=click.Path(), default=None,
              help="Fine-tune: start from this checkpoint's weights and architecture (new optimiser, new run).")
@click.option("--log", "log_path", type=click.Path(), default=None, help="CSV log (default: OUT with .csv).")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Steps between checkpoints.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def train(data, recognizer, weights, lambda_tv, tv_kind, no_bypass, out, widths, n_blocks, stem_stride, epochs, crop, batch_size, lr,
          recon_warmup, finetune_lr, codec, codec_workers, codec_preset, backward, clean_weight, lambda_rate, lambda_mse,
          distill, rescale_min, holdout, max_minutes, max_steps, val_data, val_limit, bpp_limit, qp, seed, resume, init, log_path,
          checkpoint_every, device, threads, no_progress) -> None:
    """Train an ED pre-transform against a frozen recognizer.

    loss = CE(recognizer(ED(x)), y) + LAMBDA_TV * TV(ED(x)) by default (the paper). With --codec the
    recognizer also judges the decoded ED output (real HEVC/JPEG round trip, gradient through a DCT model of it),
    and --lambda-rate, --lambda-mse and --distill add a calibrated rate term, a fidelity anchor and
    label-free distillation (docs/training.md)."""
    from edgepipe.core.errors import EdgepipeError
    from edgepipe.train.loop import TrainConfig
    from edgepipe.train.loop import train as run

    try:
        width_list = tuple(int(w) for w in widths.split(","))
    except ValueError:
        raise EdgepipeError(f"--widths must be three integers like 16,32,64, got {widths!r}") from None

    cfg = TrainConfig(
        data=data, out=out, recognizer=recognizer, weights=weights, lambda_tv=lambda_tv, tv_kind=tv_kind,
        bypass=not no_bypass, widths=width_list, n_blocks=n_blocks, stem_stride=int(stem_stride), epochs=epochs, crop=crop, batch_size=batch_size, lr=lr, recon_warmup=recon_warmup, finetune_lr=finetune_lr,
        codec=codec, codec_workers=codec_workers, codec_preset=codec_preset, backward=backward, clean_weight=clean_weight,
        lambda_rate=lambda_rate, lambda_mse=lambda_mse, distill=distill, rescale_min=rescale_min, holdout=holdout,
        max_minutes=max_minutes, max_steps=max_steps, val_data=val_data, val_limit=val_limit,
        bpp_limit=bpp_limit, qp=qp, seed=seed, resume=resume, init=init, log=log_path, checkpoint_every=checkpoint_every,
        device=device, threads=threads, progress=not no_progress,
    )
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
@click.option("--washed", type=int, default=None, metavar="SIZE",
              help="Area-downscale to SIZE x SIZE and save PNG (washes out the JPEG grid), instead of links.")
def holdout(data, out, fraction, washed) -> None:
    """Write the images `train --holdout FRACTION` leaves out, as a labelled folder for `edgepipe eval`."""
    from edgepipe.train.split import write_holdout

    n = write_holdout(data, out, fraction, washed)
    click.echo(f"{n} images written to {out}" + (f" ({washed}x{washed} PNG)" if washed else " (links)"))
