"""Run a sweep of `edgepipe train` recipes side by side, each in its own process, resumable.

    python bench/train_sweep.py bench/recipes/codec_loop.json --data TRAIN --out runs/sweep \
        --minutes 8 --parallel 5 --device cuda --codec-workers 3

Each recipe in the JSON list is {"name": ..., "args": [train flags...]}; it trains to OUT/NAME.pt with a
log in OUT/NAME.csv and stdout/stderr in OUT/NAME.log. A recipe whose checkpoint exists is resumed
(`--resume`), so running the sweep again with a larger --minutes continues every run. The recipes are
then ranked by BD-Rate(accuracy) with `edgepipe eval` on a hold-out carved out of the training images
(`edgepipe holdout`), never on the val images that report results.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _command(recipe: dict, args: argparse.Namespace, out: Path) -> list[str]:
    ckpt = out / f"{recipe['name']}.pt"
    cmd = [sys.executable, "-m", "edgepipe.cli", "train", "--data", args.data, "--out", str(ckpt),
           "--max-minutes", str(args.minutes), "--no-progress", "--checkpoint-every", "100", "--epochs", "1000"]
    if args.device:
        cmd += ["--device", args.device]
    if args.codec_workers:
        cmd += ["--codec-workers", str(args.codec_workers)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.weights:
        cmd += ["--weights", args.weights]
    if ckpt.exists():
        cmd.append("--resume")
    return cmd + [str(a) for a in recipe["args"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", help="JSON list of {name, args}")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=None, help="comma list of recipe names")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per recipe (total over resumes)")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--codec-workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default=None, help="recognizer weights file")
    args = ap.parse_args()

    recipes = json.loads(Path(args.recipes).read_text())
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {r["name"] for r in recipes}
        if unknown:
            print(f"train_sweep: unknown recipe(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        recipes = [r for r in recipes if r["name"] in wanted]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending = list(recipes)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    failed = []
    started = time.time()
    while pending or running:
        while pending and len(running) < args.parallel:
            recipe = pending.pop(0)
            cmd = _command(recipe, args, out)
            logf = open(out / f"{recipe['name']}.log", "a")
            logf.write("$ " + " ".join(cmd) + "\n")
            logf.flush()
            running[recipe["name"]] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                                         env={**os.environ, "PYTHONUNBUFFERED": "1"}), time.time())
        time.sleep(2)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                if proc.returncode:
                    failed.append(name)
                print(f"[{time.time() - started:7.0f} s] {name}: {status} after {time.time() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
