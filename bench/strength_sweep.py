"""Accuracy and bits of an ED's output at several residual strengths, per codec setting.

A bypass ED outputs y = clamp(x + r(x)). Moving part way to its output or beyond it,
y_s = x + s * (y - x) (in uint8, from the engine's own output, so any engine kind could do it), gives a
family of pre-transforms from the codec alone (s = 0) through the trained model (s = 1) and beyond,
with no retraining. A capture knows the QP it codes at, so it can use a different s per QP. This
script measures, per image, bits and top-1 for every (s, setting) pair, so a strength schedule can
be chosen on one set of images (a hold-out) and judged on another (val).

    python bench/strength_sweep.py --data runs/holdout --model edgepipe/data/models/ours.pt \
        --strengths 0,0.5,0.75,1,1.25,1.5 --codec hevc --out bench/results/strength_holdout.npz

Output: an .npz with strengths, settings, labels, and bpp / correct arrays of shape
(strengths, settings, images); --jobs worker processes, one thread each.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

_W: dict = {}


def _init(model: str, recognizer: str) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from edgepipe.engines import load_engine
    from edgepipe.recognition import Classifier

    _W["engine"] = load_engine(model, 1)
    _W["clf"] = Classifier(recognizer, threads=1, batch_size=32)


def scaled(x: np.ndarray, y: np.ndarray, strength: float) -> np.ndarray:
    """x + strength * (y - x) in uint8: the engine's own (clamped, rounded) output, moved part way or beyond."""
    out = x.astype(np.float32) + strength * (y.astype(np.float32) - x.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _work(task):
    paths, labels, strengths, codec, settings = task
    from edgepipe.core.datasets import read_rgb
    from edgepipe.media.codecs import bits_per_pixel, decode_image, encode_image

    n = len(paths)
    bpp = np.full((len(strengths), len(settings), n), np.nan)
    correct = np.full((len(strengths), len(settings), n), -1, np.int8)
    for i, p in enumerate(paths):
        x = read_rgb(p)
        full = _W["engine"].run(x[None])[0]
        h, w = x.shape[:2]
        for a, s in enumerate(strengths):
            y = scaled(x, full, s)
            decoded = []
            for b, q in enumerate(settings):
                data = encode_image(codec, y, q, threads=1)
                bpp[a, b, i] = bits_per_pixel(len(data), w, h)
                decoded.append(decode_image(codec, data, w, h))
            pred = _W["clf"].top1(np.stack(decoded))
            correct[a, :, i] = (pred == labels[i]).astype(np.int8)
    return bpp, correct


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--strengths", default="0,0.5,0.75,1,1.25,1.5")
    ap.add_argument("--codec", default="hevc")
    ap.add_argument("--settings", default=None, help="comma list; default: the codec's candidates")
    ap.add_argument("--recognizer", default="efficientnet-lite0")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from edgepipe.evaluation.runner import ordered_images
    from edgepipe.media.codecs import CODECS

    images = ordered_images(args.data, args.limit)
    strengths = [float(s) for s in args.strengths.split(",")]
    settings = ([int(q) for q in args.settings.split(",")] if args.settings
                else sorted(CODECS[args.codec].candidates))
    paths = [str(im.path) for im in images]
    labels = [int(im.label) for im in images]
    step = 16
    tasks = [(paths[i:i + step], labels[i:i + step], strengths, args.codec, settings)
             for i in range(0, len(paths), step)]
    t0 = time.time()
    parts = []
    with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=(args.model, args.recognizer)) as pool:
        for k, part in enumerate(pool.map(_work, tasks)):
            parts.append(part)
            print(f"\r{(k + 1) * step}/{len(paths)} images, {time.time() - t0:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    bpp = np.concatenate([p[0] for p in parts], axis=2)
    correct = np.concatenate([p[1] for p in parts], axis=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, strengths=np.array(strengths), settings=np.array(settings), labels=np.array(labels),
             bpp=bpp, correct=correct, codec=args.codec, model=args.model, data=args.data)
    print(f"wrote {args.out} ({len(paths)} images, {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
