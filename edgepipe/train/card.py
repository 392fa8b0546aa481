"""Model cards for shipped EDs: evaluate a checkpoint on a fixed validation subset and write <name>.md.

    python -m edgepipe.train.card edgepipe/data/models/ours.pt --val-data ../shared/data/imagenette/val \
        --val-limit 1000 --bpp-limit 200 --sweep runs/sweep/lam1.csv --sweep runs/sweep/lam5.csv ...

The card states what was trained (data, recognizer, lambda, bypass, crop, steps, time), the exact command
that reproduces it (rebuilt from the arguments stored in the checkpoint), and validation top-1 and HEVC
bits per pixel of the ED output against the untransformed input on the same images.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

from edgepipe.train.loop import TrainConfig
from edgepipe.train.model import flops_per_pixel, model_from_checkpoint, read_checkpoint

log = logging.getLogger(__name__)

_DEFAULTS = TrainConfig(data="", out="").args()
_FLAGS = {"lambda_tv": "--lambda-tv", "tv_kind": "--tv", "batch_size": "--batch-size",
          "recon_warmup": "--recon-warmup", "max_minutes": "--max-minutes", "max_steps": "--max-steps",
          "val_data": "--val-data", "val_limit": "--val-limit", "bpp_limit": "--bpp-limit",
          "checkpoint_every": "--checkpoint-every"}
_SKIP = {"out", "resume", "progress", "log", "device", "threads", "widths", "n_blocks", "data", "bypass"}


def command_of(args: dict[str, Any], out: str) -> str:
    """The `edgepipe train` command line that reproduces a checkpoint's run (non-default options only)."""
    parts = ["edgepipe", "train", "--data", str(args["data"])]
    for key, value in args.items():
        if key in _SKIP or value is None or value == _DEFAULTS.get(key):
            continue
        parts += [_FLAGS.get(key, "--" + key.replace("_", "-")), str(value)]
    if not args.get("bypass", True):
        parts.append("--no-bypass")
    parts += ["--out", out]
    return " ".join(parts)


def evaluate(checkpoint: Path, val_data: str, val_limit: int, bpp_limit: int, qp: int,
             threads: int | None = None) -> dict[str, float]:
    from edgepipe.recognition import Classifier
    from edgepipe.train.data import validation_set
    from edgepipe.train.validate import Validator

    ckpt = read_checkpoint(checkpoint)
    args = ckpt.get("args", {})
    frames, labels, _ = validation_set(val_data, val_limit)
    classifier = Classifier(args.get("recognizer", "efficientnet-lite0"), args.get("weights"), threads=threads)
    return Validator(frames, labels, classifier, qp, bpp_limit)(model_from_checkpoint(ckpt, checkpoint))


def _sweep_table(paths: list[Path]) -> str:
    rows = ["| λ | steps | train min | top-1 input | top-1 ED | bpp input | bpp ED | Δbpp | TV input | TV ED |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        ckpt = read_checkpoint(path.with_suffix(".pt")) if path.with_suffix(".pt").exists() else {}
        last = list(csv.DictReader(open(path)))[-1]
        lam = ckpt.get("args", {}).get("lambda_tv", "?")
        f = {k: float(v) for k, v in last.items() if k not in ("reason",) and v not in ("", None)}
        rows.append(f"| {lam:g} | {int(f['step'])} | {f['minutes']:.1f} | {100 * f['top1_input']:.1f} % | "
                    f"{100 * f['top1_ed']:.1f} % | {f['bpp_input']:.4f} | {f['bpp_ed']:.4f} | "
                    f"{-100 * f['bpp_saving']:+.1f} % | {f['tv_input']:.4f} | {f['tv_ed']:.4f} |")
    return "\n".join(rows)


def write_card(checkpoint: Path, metrics: dict[str, float], qp: int, sweep: list[Path], notes: str,
               out: Path) -> None:
    ckpt = read_checkpoint(checkpoint)
    args, model = ckpt.get("args", {}), model_from_checkpoint(ckpt, checkpoint)
    name = checkpoint.stem
    m = metrics
    lines = [
        f"# `{name}`: ED pre-transform ({'bypass' if model.config.bypass else 'no bypass'}, "
        f"λ = {args.get('lambda_tv'):g})", "",
        "| | |", "|---|---|",
        f"| Training data | `{args.get('data')}` (Imagenette train, 10 ImageNet classes, 9469 images) |",
        f"| Recognizer (frozen) | {args.get('recognizer')} |",
        f"| Loss | CE + λ·TV, λ = {args.get('lambda_tv'):g}, TV {args.get('tv_kind')} per pixel |",
        f"| Bypass structures | {'yes (residual body, U-Net skips, long skip: y = clamp(x + r))' if model.config.bypass else 'no (plain encoder-decoder)'} |",
        f"| Architecture | widths {list(model.config.widths)}, {model.config.n_blocks} body block(s), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {flops_per_pixel(model) / 1e3:.1f} kFLOP/pixel |",
        f"| Reconstruction warm-up | {args.get('recon_warmup', 0)} steps of MSE(ED(x), x) |",
        f"| Steps / epochs | {ckpt.get('step')} steps of {args.get('batch_size')} crops "
        f"({ckpt.get('step', 0) * args.get('batch_size', 0) / 9469:.2f} epochs) |",
        f"| Crop | {args.get('crop')}×{args.get('crop')} random crops at native scale, horizontal flips |",
        f"| Optimiser | Adam, lr {args.get('lr')}, seed {args.get('seed')} |",
        f"| Training time | {ckpt.get('elapsed', 0) / 60:.1f} min wall clock on a shared 2-core CPU |",
        "",
        f"## Validation (Imagenette val, fixed subset of {int(m['val_images'])} images at 224×224, "
        f"HEVC intra libx265 preset medium, QP {qp}, bits on the first {int(m['bpp_images'])})", "",
        "| | input (no ED) | ED output | change |", "|---|---|---|---|",
        f"| top-1 ({args.get('recognizer')}) | {100 * m['top1_input']:.1f} % | {100 * m['top1_ed']:.1f} % | "
        f"{100 * (m['top1_ed'] - m['top1_input']):+.1f} points |",
        f"| bits per pixel, HEVC QP {qp} | {m['bpp_input']:.4f} | {m['bpp_ed']:.4f} | {-100 * m['bpp_saving']:+.1f} % |",
        f"| TV per pixel | {m['tv_input']:.4f} | {m['tv_ed']:.4f} | "
        f"{100 * (m['tv_ed'] / m['tv_input'] - 1):+.1f} % |",
        "",
        "## Reproduce", "", "```",
        command_of(args, f"runs/final/{name}.pt"),
        f"edgepipe export runs/final/{name}.pt --onnx edgepipe/data/models/{name}.onnx "
        "--check-data ../shared/data/imagenette/val",
        "```", "",
        "The `.pt` next to this card is the training checkpoint (model, optimiser, step, arguments, validation "
        "history); the `.onnx` is its export (opset 17, dynamic batch, H and W).",
    ]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    if sweep:
        lines += ["", "## λ sweep (bypass + TV, same budget each; last validation of each run)", "",
                  _sweep_table(sweep)]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate a trained ED and write its model card.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--val-data", required=True)
    parser.add_argument("--val-limit", type=int, default=1000)
    parser.add_argument("--bpp-limit", type=int, default=200)
    parser.add_argument("--qp", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sweep", type=Path, action="append", default=[], help="sweep run CSV logs")
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended as 'Notes'")
    parser.add_argument("--metrics", type=Path, default=None, help="reuse metrics JSON instead of evaluating")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics_path = args.metrics or args.checkpoint.with_suffix(".metrics.json")
    if args.metrics and args.metrics.exists():
        metrics = json.loads(args.metrics.read_text())
    else:
        metrics = evaluate(args.checkpoint, args.val_data, args.val_limit, args.bpp_limit, args.qp, args.threads)
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    notes = args.notes.read_text() if args.notes else ""
    write_card(args.checkpoint, metrics, args.qp, args.sweep, notes, args.checkpoint.with_suffix(".md"))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
