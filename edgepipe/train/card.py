"""Model cards for shipped EDs: evaluate a checkpoint on a fixed validation subset and write <name>.md.

    python -m edgepipe.train.card edgepipe/data/models/ours.pt --val-data ../shared/data/imagenette/val \
        --val-limit 1000 --bpp-limit 200 --eval docs/results --notes-dir docs/cards

The card states what was trained (data, recognizer, the loss with its weights, bypass, architecture and
kFLOP/pixel, steps, time), the exact command that reproduces it (rebuilt from the arguments stored in the
checkpoint), the BD-Rate(accuracy) rows of the model from an `edgepipe eval` folder, and the top-1 and
PSNR of the uncompressed ED output against its input.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from edgepipe.core.options import flag_name
from edgepipe.models.ed import flops_per_pixel, model_from_checkpoint, read_checkpoint
from edgepipe.train.config import TrainConfig
from edgepipe.train.frames import TAIL

log = logging.getLogger(__name__)

_DEFAULTS = TrainConfig(data="", out="").args()
_FLAGS = {f.name: flag_name(f) for f in dataclasses.fields(TrainConfig)}  # declared once, in config.py
_SKIP = {"out", "resume", "progress", "log", "device", "threads", "data", "bypass", "codec_workers", "weights"}


def command_of(args: dict[str, Any], out: str) -> str:
    """The `edgepipe train` command line that reproduces a checkpoint's run (non-default options only)."""
    parts = ["edgepipe", "train", "--data", str(args["data"])]
    for key, value in args.items():
        if key in _SKIP or value is None or value == _DEFAULTS.get(key):
            continue
        if isinstance(value, bool):  # an on/off flag that is off by default (--no-bypass is the one inverted)
            parts.append(_FLAGS[key])
            continue
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts += [_FLAGS[key], text]
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


def _recipe(args: dict[str, Any]) -> str:
    """The loss in one line, from the arguments stored in a checkpoint."""
    task = (f"KL to the recognizer's output on the original, T = {args['distill']:g}" if args.get("distill")
            else "CE with the labels, softmax over the training data's classes only" if args.get("label_scope") == "dataset"
            else "CE with the labels")
    parts = []
    if args.get("codec"):
        parts.append(f"{task} on the **decoded** ED output (real codec in the loop: {args['codec']}, "
                     f"backward through the {args.get('backward', 'identity')} model of the codec)")
        parts.append(f"{args.get('clean_weight', 0.5):g} × the same on the uncoded output")
    else:
        parts.append(f"{task} on the ED output")
    if args.get("lambda_rate"):
        parts.append(f"λ_rate = {args['lambda_rate']:g} × block-DCT rate (calibrated to measured bpp)")
    if args.get("lambda_tv"):
        parts.append(f"λ_TV = {args['lambda_tv']:g} × TV ({args.get('tv_kind', 'anisotropic')})")
    if args.get("lambda_mse"):
        parts.append(f"λ_MSE = {args['lambda_mse']:g} × MSE(ED(x), x)")
    if args.get("lambda_temporal"):
        parts.append(f"λ_temporal = {args['lambda_temporal']:g} × change of the output between a crop and a moved, "
                     "noisier copy, beyond its input's")
    if args.get("lambda_frames") and args.get("frames"):
        clips = ", ".join(Path(c).name for c in str(args["frames"]).split(","))
        parts.append(f"λ_frames = {args['lambda_frames']:g} × KL of the recognizer's answer on the decoded ED output "
                     f"of camera frames to its answer on the frames (no labels; the first {round(100 * (1 - TAIL))} % of {clips}"
                     + (f", zoomed out by a factor in [{args['frames_rescale_min']:g}, 1]"
                        if args.get("frames_rescale_min", 1.0) < 1.0 else "") + ")")
    return " + ".join(parts)


def _pct(x: float) -> str:
    """A BD-rate in %, with runaway extrapolations (curves that barely overlap) shown as bounds."""
    if x != x:
        return "n/a"
    return f"{x:+.1f}" if abs(x) < 1000 else (">+1000" if x > 0 else "<-1000")


def _bd_table(eval_dir: Path, name: str) -> list[str]:
    """BD-Rate rows of `name` from an `edgepipe eval` output folder (bdrate.csv)."""
    rows = [r for r in csv.DictReader(open(eval_dir / "bdrate.csv")) if r["pre"] == name]
    out = ["| codec | BD-Rate cubic | BD-Rate PCHIP | 95 % interval (cubic) | 95 % interval (PCHIP) | paper |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        f = {k: float(v) if v not in ("", "nan") else float("nan") for k, v in r.items()
             if k.startswith(("bd_", "paper"))}
        flag = " ⚠ small overlap" if r.get("small_overlap") == "True" else ""
        out.append(f"| {r['codec']}{flag} | {_pct(f['bd_rate_cubic_pct'])} % | {_pct(f['bd_rate_pchip_pct'])} % | "
                   f"[{_pct(f['bd_rate_cubic_ci95_lo'])}, {_pct(f['bd_rate_cubic_ci95_hi'])}] | "
                   f"[{_pct(f['bd_rate_pchip_ci95_lo'])}, {_pct(f['bd_rate_pchip_ci95_hi'])}] | "
                   f"{_pct(f.get('paper_bd_rate_pct', float('nan')))} % |")
    return out if rows else []


def _steps(ckpt: dict, args: dict) -> str:
    members = ckpt.get("members") or []
    if not members:
        return f"{ckpt.get('step')} steps of {args.get('batch_size')} crops"
    steps = ", ".join(f"{m['step']:,}" for m in members)
    return (f"the mean of the weights of {len(members)} runs of one recipe (a weight soup: {steps} steps of "
            f"{args.get('batch_size')} crops, {ckpt.get('step'):,} in all)")


def _seeds(ckpt: dict, args: dict) -> str:
    members = ckpt.get("members") or []
    if not members:
        return f"seed {args.get('seed')}"
    return "seeds " + ", ".join(str(m["args"].get("seed")) for m in members)


def _train_commands(args: dict, members: list[dict], name: str) -> list[str]:
    """The commands that make runs/final/<name>.pt: one train command, or one per run of a soup and the average."""
    if not members:
        return [command_of(args, f"runs/final/{name}.pt")]
    runs = [f"runs/final/{m['name']}.pt" for m in members]
    return ([command_of(m["args"], run) for m, run in zip(members, runs)]
            + [f"python bench/average_checkpoints.py {' '.join(runs)} --out runs/final/{name}.pt"])


def write_card(checkpoint: Path, metrics: dict[str, float], qp: int, notes: str, out: Path,
               eval_dir: Path | None = None, name: str | None = None) -> None:
    ckpt = read_checkpoint(checkpoint)
    args, model = ckpt.get("args", {}), model_from_checkpoint(ckpt, checkpoint)
    name = name or checkpoint.stem
    m = metrics
    flags = [f"{k}={args[k]}" for k in ("rescale_min", "rescale_max", "holdout") if args.get(k) not in (None, 1.0, 0.0)]
    members = ckpt.get("members") or []
    lines = [
        f"# `{name}`: ED pre-transform ({'bypass' if model.config.bypass else 'no bypass'})", "",
        "| | |", "|---|---|",
        f"| Training data | `{args.get('data')}`"
        + (f" ({', '.join(flags)}: area rescale before cropping, hold-out left out for model choice)" if flags else "")
        + " |",
        f"| Recognizer (frozen) | {args.get('recognizer')} |",
        f"| Loss | {_recipe(args)} |",
        f"| λ | rate {args.get('lambda_rate', 0):g}, TV {args.get('lambda_tv', 0):g}, MSE {args.get('lambda_mse', 0):g} |",
        f"| Bypass structures | {'yes (residual body, U-Net skips, long skip: y = clamp(x + r))' if model.config.bypass else 'no (plain encoder-decoder)'} |",
        f"| Architecture | widths {list(model.config.widths)}, {model.config.n_blocks} body block(s), stem stride "
        f"{model.config.stem_stride}" + (", a context branch down to 1/16" if model.config.context else "")
        + f", {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"**{flops_per_pixel(model) / 1e3:.1f} kFLOP/pixel** |",
        f"| Reconstruction warm-up | {args.get('recon_warmup', 0)} steps of MSE(ED(x), x) |",
        f"| Steps | {_steps(ckpt, args)}"
        + (f", fine-tuning `{Path(args['init']).name}` (its own steps not counted)" if args.get("init") else "") + " |",
        f"| Crop | {args.get('crop')}×{args.get('crop')} random crops, horizontal flips |",
        f"| Optimiser | Adam, lr {args.get('lr')}"
        + (f", {args['finetune_lr']} after the warm-up" if args.get("finetune_lr") else "") + f", {_seeds(ckpt, args)} |",
        f"| Training time | {ckpt.get('elapsed', 0) / 60:.1f} min wall clock of training steps "
        f"on {ckpt.get('device', 'cpu')}{' (all runs together)' if members else ''} "
        "(validation and checkpoints not counted) |",
        "",
    ]
    if eval_dir is not None and (table := _bd_table(eval_dir, name)):
        run = json.loads((eval_dir / "run.json").read_text()) if (eval_dir / "run.json").exists() else {}
        lines += [f"## BD-Rate(accuracy) against the codec alone ({run.get('images', '?')} images, `edgepipe eval`)",
                  "", "Negative = fewer bits than the codec alone at equal top-1; the intervals are paired "
                  "bootstrap 95 % intervals over the images.", "", *table, ""]
    lines += [
        f"## Uncompressed output (Imagenette val, fixed subset of {int(m['val_images'])} images at 224×224; "
        f"bits: HEVC intra QP {qp} on the first {int(m['bpp_images'])})", "",
        "| | input (no ED) | ED output | change |", "|---|---|---|---|",
        f"| top-1 ({args.get('recognizer')}) | {100 * m['top1_input']:.1f} % | {100 * m['top1_ed']:.1f} % | "
        f"{100 * (m['top1_ed'] - m['top1_input']):+.1f} points |",
        f"| PSNR of the output against its input | | {m.get('psnr_ed', float('nan')):.1f} dB | |",
        f"| bits per pixel, HEVC QP {qp} (a fixed QP: not a criterion, see docs/training.md) | {m['bpp_input']:.4f} | "
        f"{m['bpp_ed']:.4f} | {-100 * m['bpp_saving']:+.1f} % |",
        "",
        "## Reproduce", "", "```",
        *_train_commands(args, members, name),
        f"edgepipe export runs/final/{name}.pt --onnx edgepipe/data/models/{name}.onnx "
        "--check-data ../shared/data/imagenette/val",
        "```", "",
        ("The `.pt` next to this card is the average of the runs' weights, with each run's arguments, steps and "
         "time (no optimiser: it can be evaluated, exported and trained on with --init, not resumed)"
         if members else
         "The `.pt` next to this card is the training checkpoint (model, optimiser, step, arguments, validation "
         "history)") + "; the `.onnx` is its export (opset 17, dynamic batch, H and W).",
    ]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate trained EDs and write their model cards.")
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--val-data", required=True)
    parser.add_argument("--val-limit", type=int, default=1000)
    parser.add_argument("--bpp-limit", type=int, default=200)
    parser.add_argument("--qp", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--eval", type=Path, default=None, help="edgepipe eval output folder with the BD-rates")
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
        write_card(path, metrics, args.qp, notes, path.with_suffix(".md"), args.eval)


if __name__ == "__main__":
    main()
