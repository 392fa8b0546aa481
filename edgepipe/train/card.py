"""Model cards for shipped EDs: evaluate a checkpoint on a fixed validation subset and write <name>.md.

    python -m edgepipe.train.card edgepipe/data/models/ours.pt --val-data ../shared/data/imagenette/val \
        --val-limit 1000 --bpp-limit 200 --sweep runs/sweep/lam1.pt --sweep runs/sweep/lam5.pt ...

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


def evaluate(checkpoints: list[Path], val_data: str, val_limit: int, bpp_limit: int, qp: int,
             threads: int | None = None) -> list[dict[str, float]]:
    """Metrics of each checkpoint on one validation subset; the input's figures are computed once."""
    from edgepipe.recognition import Classifier
    from edgepipe.train.data import validation_set
    from edgepipe.train.validate import Validator

    ckpts = [read_checkpoint(c) for c in checkpoints]
    recognizers = {(c.get("args", {}).get("recognizer", "efficientnet-lite0"), c.get("args", {}).get("weights"))
                   for c in ckpts}
    if len(recognizers) != 1:
        raise ValueError(f"checkpoints were trained against different recognizers: {sorted(map(str, recognizers))}")
    name, weights = recognizers.pop()
    frames, labels, _ = validation_set(val_data, val_limit)
    validator = Validator(frames, labels, Classifier(name, weights, threads=threads), qp, bpp_limit)
    return [validator(model_from_checkpoint(c, p)) for c, p in zip(ckpts, checkpoints)]


def _sweep_table(checkpoints: list[Path]) -> str:
    """One row per sweep run: its metrics JSON (re-evaluated with this code) when present, else the last
    validation row of its log."""
    rows = ["| λ | steps | train min | top-1 input | top-1 ED | bpp input | bpp ED | Δbpp | TV input | TV ED |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(checkpoints, key=lambda p: read_checkpoint(p)["args"]["lambda_tv"]):
        ckpt = read_checkpoint(path)
        metrics_path = path.with_suffix(".metrics.json")
        if metrics_path.exists():
            f = json.loads(metrics_path.read_text())
        else:
            f = {k: float(v) for k, v in list(csv.DictReader(open(path.with_suffix(".csv"))))[-1].items()
                 if k != "reason" and v not in ("", None)}
        rows.append(f"| {ckpt['args']['lambda_tv']:g} | {ckpt['step']} | {ckpt['elapsed'] / 60:.1f} | "
                    f"{100 * f['top1_input']:.1f} % | {100 * f['top1_ed']:.1f} % | {f['bpp_input']:.4f} | "
                    f"{f['bpp_ed']:.4f} | {-100 * f['bpp_saving']:+.1f} % | {f['tv_input']:.4f} | {f['tv_ed']:.4f} |")
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
        f"| Training data | `{args.get('data')}`"
        + (" (Imagenette train: 10 ImageNet classes, 9469 images) |" if "imagenette" in str(args.get("data")) else " |"),
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
        f"| Training time | {ckpt.get('elapsed', 0) / 60:.1f} min wall clock of training steps "
        f"on {ckpt.get('device', 'cpu')}"
        + (f", {args['threads']} thread(s)" if args.get("threads") else "")
        + " (validation and checkpoints not counted) |",
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
    parser = argparse.ArgumentParser(description="Evaluate trained EDs and write their model cards.")
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--val-data", required=True)
    parser.add_argument("--val-limit", type=int, default=1000)
    parser.add_argument("--bpp-limit", type=int, default=200)
    parser.add_argument("--qp", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sweep", type=Path, action="append", default=[], help="sweep run checkpoints (.pt)")
    parser.add_argument("--sweep-for", default="ours", help="the card that shows the sweep table")
    parser.add_argument("--notes-dir", type=Path, default=None, help="NAME.md there is appended as 'Notes'")
    parser.add_argument("--reuse", action="store_true", help="reuse NAME.metrics.json where present")
    parser.add_argument("--no-card", action="store_true", help="only evaluate (write NAME.metrics.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    todo = [c for c in args.checkpoints if not (args.reuse and c.with_suffix(".metrics.json").exists())]
    if todo:
        for path, metrics in zip(todo, evaluate(todo, args.val_data, args.val_limit, args.bpp_limit, args.qp,
                                                args.threads)):
            path.with_suffix(".metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for path in args.checkpoints:
        metrics = json.loads(path.with_suffix(".metrics.json").read_text())
        print(path.stem, json.dumps(metrics))
        if args.no_card:
            continue
        notes_file = args.notes_dir / f"{path.stem}.md" if args.notes_dir else None
        notes = notes_file.read_text() if notes_file and notes_file.exists() else ""
        sweep = args.sweep if path.stem == args.sweep_for else []
        write_card(path, metrics, args.qp, sweep, notes, path.with_suffix(".md"))


if __name__ == "__main__":
    main()
