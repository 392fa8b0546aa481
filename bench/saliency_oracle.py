"""How many bits could a pre-transform save by knowing where the object is? An oracle, no training.

The ED sees ~27 px around each pixel (~110 with --context): it can soften texture, not tell the object from
the wall behind it. This measures what that knowledge would be worth at best, with the recognizer itself as
the oracle: its class activation map (CAM, Zhou et al. 2016: EfficientNet-Lite0 ends in global pooling and
one linear layer, so the predicted class's logit splits exactly over the last feature map, forward only, no
labels) marks the object; the picture is kept where the map is high and blurred elsewhere, then coded.

    python bench/saliency_oracle.py --data runs/holdout160 --codec hevc --points 43,39,35,31 \
        --out bench/results/saliency_oracle_hevc_washed.json

Variants (each a pre-transform of the source image, no ED):
* `none`: the codec alone (the anchor);
* `cam-K-bS`: a soft mask keeping the fraction K of the area where the CAM is highest, a Gaussian blur of
  sigma S px outside it;
* `centre-K-bS`: the same blur outside a centred ellipse of the same area: the "objects sit in the middle" prior,
  which needs no recognizer (if it matches the CAM, knowing the object buys nothing over the prior);
* `anti-cam-K-bS`: the map's check: the same blur where the map is *high* (it should hurt most);
* `global-bS`: the blur everywhere at the mean strength of the others: a lower-detail picture, i.e. what a
  coarser quantiser already does.
Per variant and codec setting: mean bpp and top-1 (labels of --data); and each variant's top-1 uncoded.
BD-Rate(accuracy) of each variant against `none` (cubic / PCHIP, the evaluation's code) at --points, with 95 %
intervals from a paired bootstrap over images. Negative: the same top-1 for fewer bits.
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

from edgepipe.core.bdrate import compare, paired_bootstrap  # noqa: E402


def cam_maps(model, images: np.ndarray) -> np.ndarray:
    """(N, H, W) class activation map of each image's own top-1 class, upsampled to the image, in [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        feats = model.features(x)                                      # (N, 1280, h, w)
        logits = model._fc(feats.mean(dim=(2, 3)))
        cls = logits.argmax(1)
        w = model._fc.weight[cls]                                      # (N, 1280)
        cam = torch.einsum("nc,nchw->nhw", w, feats)
        cam = F.interpolate(cam[:, None], size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    cam = cam.numpy()
    lo = cam.min(axis=(1, 2), keepdims=True)
    hi = cam.max(axis=(1, 2), keepdims=True)
    return (cam - lo) / np.maximum(hi - lo, 1e-6)


def soft_mask_top(score: np.ndarray, keep: float, soft: float = 0.1) -> np.ndarray:
    """1 where score is in its top `keep` fraction, falling to 0 over the next `soft` fraction of the ranks."""
    ranks = score.ravel().argsort().argsort().reshape(score.shape) / (score.size - 1)  # 0 low .. 1 high
    return np.clip((ranks - (1 - keep - soft)) / soft, 0.0, 1.0)


def centre_score(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return -(((yy - (h - 1) / 2) / h) ** 2 + ((xx - (w - 1) / 2) / w) ** 2)


def blend(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    blurred = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    m = mask[..., None].astype(np.float32)
    out = m * image.astype(np.float32) + (1 - m) * blurred.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def variants(image: np.ndarray, cam: np.ndarray, keeps: list[float], sigmas: list[float]) -> dict[str, np.ndarray]:
    h, w = image.shape[:2]
    out = {"none": image}
    centre = centre_score(h, w)
    for s in sigmas:
        for k in keeps:
            out[f"cam-{k:g}-b{s:g}"] = blend(image, soft_mask_top(cam, k), s)
            out[f"centre-{k:g}-b{s:g}"] = blend(image, soft_mask_top(centre, k), s)
            # The check on the map: blur where it is *high* instead; if it marks what matters, this hurts most.
            out[f"anti-cam-{k:g}-b{s:g}"] = blend(image, soft_mask_top(-cam, k), s)
        # The masked variants keep about the mean of `keeps` sharp; the global one mixes in that much blur.
        out[f"global-b{s:g}"] = blend(image, np.full((h, w), float(np.mean(keeps)), np.float32), s)
    return out


def curve(bpp: np.ndarray, correct: np.ndarray, idx=None) -> tuple[list[float], list[float]]:
    b = bpp if idx is None else bpp[:, idx]
    c = correct if idx is None else correct[:, idx]
    return list(np.nanmean(b, axis=1)), list(100.0 * c.mean(axis=1))


def bd_with_intervals(bpp: dict, correct: dict, name: str, n_boot: int, seed: int = 0) -> dict:
    base = compare(*curve(bpp["none"], correct["none"]), *curve(bpp[name], correct[name]))
    ci = paired_bootstrap(lambda idx: curve(bpp["none"], correct["none"], idx),
                          lambda idx: curve(bpp[name], correct[name], idx), bpp["none"].shape[1], n_boot, seed)
    return {"variant": name, "bd_rate_cubic_pct": base.rate_cubic, "bd_rate_pchip_pct": base.rate_pchip,
            "bd_top1_pchip_pts": base.quality_pchip, "notes": list(base.notes),
            "bd_rate_cubic_ci95": ci["cubic"], "bd_rate_pchip_ci95": ci["pchip"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="labelled images, ImageNet layout")
    ap.add_argument("--codec", default="hevc", help="hevc, jpeg or jpeg2000-db")
    ap.add_argument("--points", default="43,39,35,31", help="codec settings (HEVC QP, JPEG quality, dB)")
    ap.add_argument("--keeps", default="0.35,0.5", help="fractions of the area kept sharp")
    ap.add_argument("--sigmas", default="2,4", help="Gaussian blur sigmas (px) outside the kept area")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from edgepipe.core.datasets import read_rgb
    from edgepipe.evaluation.runner import ordered_images
    from edgepipe.media.codecs import bits_per_pixel, decode_image, encode_image
    from edgepipe.recognition import Classifier
    from edgepipe.recognition.registry import build_recognizer

    images = ordered_images(args.data, args.limit)
    points = [int(q) for q in args.points.split(",")]
    keeps = [float(k) for k in args.keeps.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    model = build_recognizer("efficientnet-lite0")
    clf = Classifier("efficientnet-lite0", threads=args.threads, batch_size=32)
    bpp: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    uncoded: dict[str, list[bool]] = {}
    skipped: list[str] = []
    t0 = time.time()
    for i, im in enumerate(images):
        x = read_rgb(im.path)
        if x is None:  # counted and left out of every variant's columns below
            skipped.append(str(im.path))
            continue
        h, w = x.shape[:2]
        cam = cam_maps(model, x[None])[0]
        made = variants(x, cam, keeps, sigmas)
        for name, hit in zip(made, clf.top1(np.stack(list(made.values()))) == im.label):
            uncoded.setdefault(name, []).append(bool(hit))
        for name, y in made.items():
            if name not in bpp:
                bpp[name] = np.full((len(points), len(images)), np.nan)
                correct[name] = np.zeros((len(points), len(images)), np.int8)
            decoded = []
            for j, q in enumerate(points):
                data = encode_image(args.codec, y, q, threads=1)
                bpp[name][j, i] = bits_per_pixel(len(data), w, h)
                decoded.append(decode_image(args.codec, data, w, h))
            correct[name][:, i] = clf.top1(np.stack(decoded)) == im.label
        print(f"\r{i + 1}/{len(images)} images, {time.time() - t0:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    left_out = set(skipped)
    kept = [i for i, im in enumerate(images) if str(im.path) not in left_out]
    bpp = {n: v[:, kept] for n, v in bpp.items()}
    correct = {n: v[:, kept] for n, v in correct.items()}
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", file=sys.stderr)
    rows = [{"variant": n, "point": q, "bpp": float(np.nanmean(bpp[n][j])), "top1": float(100 * correct[n][j].mean())}
            for n in bpp for j, q in enumerate(points)]
    rows += [{"variant": n, "point": "uncoded", "top1": float(100 * np.mean(v))} for n, v in uncoded.items()]
    bd = [bd_with_intervals(bpp, correct, n, args.boot) for n in bpp if n != "none"]
    result = {"command": "bench/saliency_oracle.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": args.data, "images": len(kept), "skipped": skipped, "codec": args.codec, "points": points,
              "seconds": round(time.time() - t0, 1), "machine": platform.platform(), "rows": rows, "bd": bd}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in bd:
        ci = r["bd_rate_pchip_ci95"]
        span = f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "[—]"
        print(f"{r['variant']:>16}: BD-rate {r['bd_rate_cubic_pct']:+.1f} / {r['bd_rate_pchip_pct']:+.1f} % "
              f"(PCHIP 95 % {span}), BD-top-1 {r['bd_top1_pchip_pts']:+.2f} pt {'; '.join(r['notes'])}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from edgepipe.core.errors import EdgepipeError

    try:
        raise SystemExit(main())
    except EdgepipeError as exc:  # a missing or empty --data folder: one line
        raise SystemExit(f"error: {exc}") from None
