"""The recognizer-guided pre-transform at any codec settings, scored three ways, beside the codec alone and EDs.

`edgepipe eval --pre guided` measures it at the evaluation's own points; this script measures it where the
evaluation does not reach, and with a label-free score: the guided pre-transform (edgepipe/guidance/guided.py:
each picture optimised through the real codec at the setting it is coded at, so that the recognizer's answer on
the decoded picture stays its answer on the original, within a PSNR budget) at --points, with --steps and
--psnr-floor, on a folder of one picture size (a hold-out of one view, e.g. runs/holdout160).

    python bench/guided_sweep.py --data runs/holdout160 --codec hevc --points 51,47,43,39,35,31 \
        --limit 240 --steps 8 --psnr-floor 30 --pre ours --out bench/results/guided_sweep_hevc_washed.json

Variants: `none` (the codec alone, the anchor), `guided`, and each --pre engine (e.g. `ours`: the shipped ED,
coded the same way), all scored by the evaluation's recognizer (ONNX Runtime) on the decoded pictures coded by
the evaluation's encoder. Per variant and setting: mean bpp; top-1 over 1000 classes; top-1 among the data's
classes (`edgepipe eval --score top1-among-labels`); agreement with the recognizer's top-1 on the original
(label-free, the clips' measure); PSNR of the pre-transformed picture against the original. BD-Rate of each
variant against `none` for the three scores (cubic / PCHIP, the evaluation's code), with 95 % intervals from a
paired bootstrap over images. Negative: the same score for fewer bits.
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

from saliency_oracle import bd_with_intervals  # noqa: E402  (the same paired BD per variant, one score at a time)

SCORES = ("top1", "among", "agree")


def bits_at_equal_score(rows: list[dict], variant: str, score: str) -> list[dict]:
    """For each of the variant's points whose score the codec alone also reaches between two of its points: the
    bits the codec alone needs for that score (log-rate interpolated between its neighbouring points, along its
    running best score so the curve is monotone) and the variant's saving against them. A BD fit needs the two
    curves to overlap widely and to rise strictly; on a curve as flat as the guided one it fails, this does not."""
    anchor = sorted((r for r in rows if r["variant"] == "none" and r["point"] != "uncoded"), key=lambda r: r["bpp"])
    log_bpp = np.log([r["bpp"] for r in anchor])
    best = np.maximum.accumulate([r[score] for r in anchor])
    out = []
    for r in rows:
        if r["variant"] != variant or r["point"] == "uncoded" or not best[0] <= r[score] <= best[-1]:
            continue
        k = int(np.searchsorted(best, r[score]))  # first anchor point at or above the score
        if k == 0:
            needed = float(np.exp(log_bpp[0]))
        else:
            lo, hi = best[k - 1], best[k]
            t = 0.0 if hi == lo else (r[score] - lo) / (hi - lo)
            needed = float(np.exp(log_bpp[k - 1] + t * (log_bpp[k] - log_bpp[k - 1])))
        out.append({"variant": variant, "score": score, "point": r["point"], "bpp": r["bpp"], "value": r[score],
                    "codec_alone_bpp": needed, "saving_pct": 100.0 * (1.0 - r["bpp"] / needed)})
    return out


def mse_each(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))


def pooled_psnr(mse: np.ndarray) -> float:
    """PSNR of the mean squared error over the pictures (a mean of PSNRs would let unchanged ones count as inf)."""
    return float(10.0 * np.log10(255.0**2 / max(float(np.mean(mse)), 1e-10)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="labelled images of one size, ImageNet layout")
    ap.add_argument("--codec", default="hevc", help="hevc, jpeg or jpeg2000-db")
    ap.add_argument("--points", default="43,39,35,31", help="codec settings (HEVC QP, JPEG quality, dB)")
    ap.add_argument("--limit", type=int, default=240)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=24, help="Adam steps per image and setting")
    ap.add_argument("--lr", type=float, default=2.0 / 255.0)
    ap.add_argument("--psnr-floor", type=float, default=30.0, help="fidelity budget of the guided pictures (dB)")
    ap.add_argument("--pre", default="", help="engines to code the same way beside it, e.g. ours")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    torch.manual_seed(0)
    from edgepipe.core.datasets import read_rgb
    from edgepipe.core.errors import EdgepipeError
    from edgepipe.engines import load_engine
    from edgepipe.evaluation.runner import ordered_images
    from edgepipe.guidance.guided import GuidanceSettings, GuidedPreTransform
    from edgepipe.media.codecs import bits_per_pixel, decode_image, encode_image
    from edgepipe.recognition import Classifier

    images = ordered_images(args.data, args.limit)
    pictures, labels, skipped = [], [], []
    for im in images:
        x = read_rgb(im.path)
        if x is None:
            skipped.append(str(im.path))
            continue
        pictures.append(x)
        labels.append(im.label)
    shapes = {p.shape for p in pictures}
    if len(shapes) != 1:
        raise EdgepipeError(f"--data must hold pictures of one size (a hold-out of one view), found {sorted(shapes)}")
    originals = np.stack(pictures)
    labels = np.asarray(labels)
    among = np.asarray(sorted(set(labels.tolist())))
    points = [int(q) for q in args.points.split(",")]
    if len(points) < 2:
        raise EdgepipeError(f"--points needs at least two settings for a BD-rate, got {args.points}")
    n, h, w = originals.shape[:3]

    guide = GuidedPreTransform(GuidanceSettings(steps=args.steps, psnr_floor_db=args.psnr_floor, lr=args.lr,
                                                batch=args.batch), threads=args.threads)
    clf = Classifier("efficientnet-lite0", threads=args.threads, batch_size=32)
    reference = clf.logits(originals).argmax(1)

    def score(frames: np.ndarray) -> dict[str, np.ndarray]:
        logits = clf.logits(frames)
        return {"top1": (logits.argmax(1) == labels).astype(np.int8),
                "among": (among[logits[:, among].argmax(1)] == labels).astype(np.int8),
                "agree": (logits.argmax(1) == reference).astype(np.int8)}

    variants = ["none", "guided"] + [s.strip() for s in args.pre.split(",") if s.strip()]
    bpp = {v: np.full((len(points), n), np.nan) for v in variants}
    scores = {v: {s: np.zeros((len(points), n), np.int8) for s in SCORES} for v in variants}
    fidelity = {v: np.full((len(points), n), np.nan) for v in variants}
    uncoded = {"none": score(originals)}
    pre_pictures = {}
    for spec in variants[2:]:
        engine = load_engine(spec, args.threads)
        pre_pictures[spec] = np.concatenate([engine.run(originals[i:i + args.batch])
                                             for i in range(0, n, args.batch)])
        engine.close()
        uncoded[spec] = score(pre_pictures[spec])

    t0 = time.time()
    for j, q in enumerate(points):
        made = {"none": originals, **pre_pictures}
        guided = []
        for s in range(0, n, args.batch):
            guided.append(guide.run(originals[s:s + args.batch], args.codec, q))
            done = j * n + s + len(guided[-1])
            print(f"\r{args.codec} {q}: {s + len(guided[-1])}/{n} images, {done}/{n * len(points)} in all, "
                  f"{time.time() - t0:.0f} s", end="", file=sys.stderr)
        made["guided"] = np.concatenate(guided)
        for v in variants:
            decoded = []
            for i, y in enumerate(made[v]):
                data = encode_image(args.codec, y, q, threads=1)
                bpp[v][j, i] = bits_per_pixel(len(data), w, h)
                decoded.append(decode_image(args.codec, data, w, h))
            for s_name, hits in score(np.stack(decoded)).items():
                scores[v][s_name][j] = hits
            fidelity[v][j] = mse_each(made[v], originals)
    print(file=sys.stderr)
    guide.close()

    rows = []
    for v in variants:
        for j, q in enumerate(points):
            rows.append({"variant": v, "point": q, "bpp": float(np.nanmean(bpp[v][j])),
                         **{s: float(100 * scores[v][s][j].mean()) for s in SCORES},
                         "psnr_vs_original_db": None if v == "none" else pooled_psnr(fidelity[v][j]),
                         "changed_share": float(np.mean(fidelity[v][j] > 0))})
        if v in uncoded:
            rows.append({"variant": v, "point": "uncoded", **{s: float(100 * uncoded[v][s].mean()) for s in SCORES}})
    bd = [{"score": s, **bd_with_intervals(bpp, {v: scores[v][s] for v in variants}, v, args.boot)}
          for v in variants[1:] for s in SCORES]
    equal = [e for v in variants[1:] for s in SCORES for e in bits_at_equal_score(rows, v, s)]
    result = {"command": "bench/guided_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": args.data, "images": n, "skipped": skipped, "codec": args.codec, "points": points,
              "steps": args.steps, "lr": args.lr, "psnr_floor_db": args.psnr_floor,
              "seconds": round(time.time() - t0, 1), "machine": platform.platform(), "rows": rows, "bd": bd,
              "bits_at_equal_score": equal}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        if r["point"] == "uncoded":
            print(f"{r['variant']:>8} uncoded: top-1 {r['top1']:.1f}, among {r['among']:.1f}, agree {r['agree']:.1f}")
        else:
            fid = "" if r["psnr_vs_original_db"] is None else f", {r['psnr_vs_original_db']:.1f} dB"
            print(f"{r['variant']:>8} {r['point']}: {r['bpp']:.4f} bpp, top-1 {r['top1']:.1f}, "
                  f"among {r['among']:.1f}, agree {r['agree']:.1f}{fid}")
    for r in bd:
        ci = r["bd_rate_pchip_ci95"]
        span = f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "[—]"
        print(f"{r['variant']:>8} {r['score']:>6}: BD-rate {r['bd_rate_cubic_pct']:+.1f} / "
              f"{r['bd_rate_pchip_pct']:+.1f} % (PCHIP 95 % {span}) {'; '.join(r['notes'])}")
    for e in equal:
        print(f"{e['variant']:>8} {e['score']:>6} at {e['point']}: {e['value']:.1f} % at {e['bpp']:.4f} bpp; the codec "
              f"alone needs {e['codec_alone_bpp']:.4f} bpp: {e['saving_pct']:+.1f} % saved")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from edgepipe.core.errors import EdgepipeError

    try:
        raise SystemExit(main())
    except EdgepipeError as exc:  # a missing, empty or mixed-size --data folder: one line
        raise SystemExit(f"error: {exc}") from None
