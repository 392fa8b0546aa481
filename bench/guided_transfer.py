"""Does what the guided pre-transform keeps survive a server that looks a little differently?

The guided pictures are optimised against one recognizer seeing the decoded picture exactly as coded. A gain
that lives in a pixel-exact pattern (an adversarial one) would vanish when the server mirrors or rescales the
picture before classifying it; a gain in what the picture shows would stay. For the first --limit images of
--data (the evaluation's order) at one HEVC QP: the codec alone and `guided`, each decoded picture scored as it
is, mirrored left-right, and area-rescaled by --scale, with top-1 over 1000 classes and among the data's classes.

    python bench/guided_transfer.py --data ../shared/data/imagenette/val --limit 128 --qp 47 \
        --out bench/results/guided_transfer_val.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=128)
    ap.add_argument("--qp", type=int, default=47)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--scale", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import cv2

    from edgepipe.core.datasets import list_labelled_images, read_rgb
    from edgepipe.evaluation.runner import ordered_images
    from edgepipe.guidance.guided import GuidanceSettings, GuidedPreTransform
    from edgepipe.media.codecs import bits_per_pixel, decode_image, encode_image
    from edgepipe.recognition import Classifier

    items = ordered_images(args.data, args.limit)
    pictures = [read_rgb(it.path) for it in items]
    keep = [i for i, p in enumerate(pictures) if p is not None and p.shape == pictures[0].shape]
    x = np.stack([pictures[i] for i in keep])
    labels = np.asarray([items[i].label for i in keep])
    among = np.asarray(sorted({it.label for it in list_labelled_images(args.data)}))
    clf = Classifier(threads=args.threads)
    t0 = time.time()
    guide = GuidedPreTransform(GuidanceSettings(steps=args.steps), threads=args.threads)
    made = {"none": x, "guided": guide.run(x, "hevc", args.qp)}
    guide.close()
    h, w = x.shape[1:3]
    side = (round(w * args.scale), round(h * args.scale))
    views = {"as coded": lambda f: f, "mirrored": lambda f: np.ascontiguousarray(f[:, :, ::-1]),
             f"rescaled x{args.scale:g}": lambda f: np.stack([cv2.resize(p, side, interpolation=cv2.INTER_AREA) for p in f])}
    rows = []
    for name, y in made.items():
        decoded, bits = [], []
        for p in y:
            data = encode_image("hevc", p, args.qp, threads=1)
            bits.append(bits_per_pixel(len(data), w, h))
            decoded.append(decode_image("hevc", data, w, h))
        decoded = np.stack(decoded)
        for view, fn in views.items():
            logits = clf.logits(fn(decoded))
            rows.append({"variant": name, "view": view, "bpp": float(np.mean(bits)),
                         "top1": float(100 * np.mean(logits.argmax(1) == labels)),
                         "among": float(100 * np.mean(among[logits[:, among].argmax(1)] == labels))})
            r = rows[-1]
            print(f"{name:>7} {view:>14}: {r['bpp']:.4f} bpp, top-1 {r['top1']:.1f} %, among the labels {r['among']:.1f} %")
    result = {"command": "bench/guided_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "images": len(x), "qp": args.qp, "seconds": round(time.time() - t0, 1), "machine": platform.platform(),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from edgepipe.core.errors import EdgepipeError

    try:
        raise SystemExit(main())
    except EdgepipeError as exc:  # a missing or empty data folder: one line
        raise SystemExit(f"error: {exc}") from None
