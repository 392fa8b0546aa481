"""Average the weights of sibling ED checkpoints (a "model soup"): runs fine-tuned from one start, with other seeds.

    python bench/average_checkpoints.py runs/sweep9/sweep/w61.pt runs/sweep9/sweep/w62.pt runs/sweep9/sweep/w63.pt \
        --out runs/sweep9/soup_w.pt

The result is an ordinary checkpoint for `edgepipe eval`, `export` and `train --init` (not `--resume`); its
`averaged_from` lists the inputs. edgepipe/train/averaging.py says when averaging makes sense.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_path
from edgepipe.train.averaging import average_checkpoints


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="two or more edgepipe train checkpoints of one architecture")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    try:
        soup = average_checkpoints(args.checkpoints)
    except EdgepipeError as exc:
        print(f"average_checkpoints: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        torch.save(soup, tmp)
    print(f"{args.out}: mean of {len(args.checkpoints)} checkpoints, {soup['step']} steps in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
