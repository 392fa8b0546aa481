"""Label-free check on real camera footage: does a pre-transform keep the recognizer's answer at fewer bits?

    python bench/clip_agreement.py --pre none,ours --out bench/results/clip_agreement.json

For every K-th frame of each clip (never JPEG-coded, unlike Imagenette), the recognizer's top-1 on the
source frame is the reference. Each pre-transform's output is coded with HEVC intra at the evaluation's
QPs (libx265 preset medium, native frame size), decoded and classified. Per QP: mean bpp, agreement
(coded top-1 == reference top-1), the mean probability the coded frame gives the reference class, top-5
overlap (shared classes of the two top-5 lists / 5) and the mean KL divergence of the coded frame's output
from the reference's. Top-1 agreement is unstable on scenes without an ImageNet object (the reference class
often has p < 0.02); the last two are steadier (issue 14). `ed_*` fields: the pre-transform's output before
any codec against the reference, i.e. what the pre-transform alone changes. BD-Rate of each quality measure
(KL as its negative) against `none` uses the evaluation's BD code; negative means the same quality for fewer
bits.

`--compare-to NAME[,NAME]` (of --pre) adds, for each other pre-transform and each NAME, its top-5-overlap BD
against NAME (BD-rate, and BD-overlap: points of top-5 overlap at equal bits, PCHIP) with 95 % intervals from a
paired block bootstrap: the sampled frames of a clip in blocks of --block (consecutive frames are not independent),
the same resampled blocks for both pre-transforms.
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

from edgepipe.core.bdrate import compare  # noqa: E402
from edgepipe.engines import load_engine  # noqa: E402
from edgepipe.guidance.guided import GuidanceSettings, GuidedPreTransform, is_guided  # noqa: E402
from edgepipe.media.codecs import bits_per_pixel, decode_image, encode_image  # noqa: E402
from edgepipe.recognition import Classifier  # noqa: E402

DEFAULT_CLIPS = ROOT.parent / "shared" / "data" / "video"
QPS = (47, 43, 37, 31)


def read_frames(path: Path, every: int, limit: int, start: float = 0.0, first_frame: int | None = None) -> np.ndarray:
    """Every `every`-th frame, at most `limit`, from the fraction `start` of the clip on (0.7: the tail that
    `edgepipe train --frames` leaves for judging, edgepipe/train/frames.py), or from frame index `first_frame`."""
    import av

    first = first_frame or 0
    if first_frame is None and start > 0:
        with av.open(str(path)) as container:
            first = int(sum(1 for _ in container.decode(video=0)) * start)
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= first and (i - first) % every == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= limit:
                break
    if not frames:
        raise ValueError(f"{path.name} has no frames from frame {first} on")
    return np.stack(frames)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def top5_overlaps(logits: np.ndarray, ref_logits: np.ndarray) -> np.ndarray:
    """Per frame: classes shared by the two top-5 lists, / 5."""
    top, ref = np.argsort(-logits, 1)[:, :5], np.argsort(-ref_logits, 1)[:, :5]
    return np.array([len(set(a) & set(b)) / 5 for a, b in zip(top, ref)])


def top5_overlap(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    return float(np.mean(top5_overlaps(logits, ref_logits)))


def paired_overlap_bd(anchor: dict, test: dict, block: int, n_boot: int = 200, seed: int = 0) -> dict:
    """BD of `test` against `anchor` on top-5 overlap, with a paired block bootstrap over frames. Each argument:
    {clip: {qp: (bits per frame, overlap per frame)}}; the clips' blocks are pooled."""
    import warnings

    def bd(pick):
        curves = []
        for arrays in (anchor, test):
            rates, quality = [], []
            for qp in QPS:
                bits = np.concatenate([arrays[c][qp][0][i] for c, i in pick])
                over = np.concatenate([arrays[c][qp][1][i] for c, i in pick])
                rates.append(bits.mean())
                quality.append(over.mean())
            curves += [np.array(rates), np.array(quality)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = compare(*curves)
        return c.rate_pchip, 100 * c.quality_pchip
    blocks = [(c, np.arange(len(anchor[c][QPS[0]][0]))[i:i + block]) for c in anchor
              for i in range(0, len(anchor[c][QPS[0]][0]), block)]
    rate, points = bd(blocks)
    rng = np.random.default_rng(seed)
    draws = [bd([blocks[j] for j in rng.integers(0, len(blocks), len(blocks))]) for _ in range(n_boot)]
    r = np.array([d[0] for d in draws], float)
    q = np.array([d[1] for d in draws], float)
    r, q = r[np.isfinite(r)], q[np.isfinite(q)]
    def ci(v: np.ndarray) -> list[float] | None:  # none from fewer than 90 % valid resamples: it would be biased
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) >= 0.9 * n_boot else None
    return {"bd_rate_top5_pchip_pct": rate, "bd_rate_ci95": ci(r), "bd_top5_overlap_pchip_pts": points,
            "bd_top5_overlap_ci95": ci(q), "blocks": len(blocks), "block": block}


def mean_kl(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    """KL(reference || coded), nats, averaged over frames."""
    p, q = softmax(ref_logits), softmax(logits)
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), 1)))


def measures(logits: np.ndarray, ref_logits: np.ndarray, prefix: str = "") -> dict:
    ref_top1 = ref_logits.argmax(1)
    prob = softmax(logits)[np.arange(len(ref_top1)), ref_top1]
    return {f"{prefix}agreement": float(np.mean(logits.argmax(1) == ref_top1)),
            f"{prefix}p_reference": float(prob.mean()),
            f"{prefix}top5_overlap": top5_overlap(logits, ref_logits),
            f"{prefix}kl": mean_kl(logits, ref_logits)}


QUALITY = ("agreement", "p_reference", "top5_overlap", "kl")  # kl enters BD as -kl (lower is better)


def _span(interval: list[float] | None) -> str:
    return "[n/a]" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def bd_entry(spec: str, anchor: str, name: str, keys, curve) -> dict:
    """BD-Rate of `spec` against `anchor` on source `name` for each measure in `keys` (cubic, PCHIP and notes),
    printed in one line; curve(pre, key) gives that pre-transform's (rates, qualities) over the QPs."""
    entry = {"pre": spec, "anchor": anchor, "clip": name}
    for key in keys:
        c = compare(*curve(anchor, key), *curve(spec, key))
        entry[f"bd_rate_{key}_cubic_pct"] = c.rate_cubic
        entry[f"bd_rate_{key}_pchip_pct"] = c.rate_pchip
        entry[f"{key}_notes"] = list(c.notes)
    print(f"BD-Rate {spec} vs {anchor} on {name} (cubic / PCHIP): " + ", ".join(
        f"{key} {entry[f'bd_rate_{key}_cubic_pct']:+.1f} % / {entry[f'bd_rate_{key}_pchip_pct']:+.1f} %"
        for key in keys))
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pre", default="none,ours", help="comma list: none, shipped model names, model files, or "
                    "guided[:STEPS[@PSNR_DB]] (edgepipe/guidance)")
    ap.add_argument("--clips", default=str(DEFAULT_CLIPS), help="folder of .mp4 clips")
    ap.add_argument("--every", type=int, default=10, help="take every K-th frame")
    ap.add_argument("--limit", type=int, default=40, help="frames per clip")
    ap.add_argument("--start", type=float, default=0.0,
                    help="skip this fraction of each clip first (0.7: only the part `train --frames` never saw)")
    ap.add_argument("--start-frame", type=int, default=None,
                    help="start at this frame index instead of --start (a stretch no earlier judgement read)")
    ap.add_argument("--clip", action="append", default=None,
                    help="only this clip file name from --clips (repeatable; default: every .mp4)")
    ap.add_argument("--compare-to", default=None, help="one of --pre, or a comma list of them: every other one's "
                    "paired BD against each, with block-bootstrap intervals")
    ap.add_argument("--block", type=int, default=10, help="sampled frames per bootstrap block")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "clip_agreement.json"))
    args = ap.parse_args()
    specs = [s.strip() for s in args.pre.split(",") if s.strip()]
    anchors = [a.strip() for a in (args.compare_to or "").split(",") if a.strip()]
    if set(anchors) - set(specs):
        print(f"clip_agreement: --compare-to {', '.join(sorted(set(anchors) - set(specs)))} is not one of --pre",
              file=sys.stderr)
        return 2

    clips = sorted(Path(args.clips).glob("*.mp4"))
    if args.clip:
        missing = sorted(set(args.clip) - {c.name for c in clips})
        if missing:
            print(f"clip_agreement: --clip {', '.join(missing)} is not a clip in {args.clips}", file=sys.stderr)
            return 2
        clips = [c for c in clips if c.name in args.clip]
    if not clips:
        print(f"clip_agreement: no .mp4 clips in {args.clips}", file=sys.stderr)
        return 2
    try:
        frames = {c.name: read_frames(c, args.every, args.limit, args.start, args.start_frame) for c in clips}
    except ValueError as e:
        print(f"clip_agreement: {e}", file=sys.stderr)
        return 2
    classifier = Classifier(threads=2)
    reference = {name: classifier.logits(f) for name, f in frames.items()}
    started = time.time()
    rows = []
    per_frame: dict[str, dict] = {}  # spec -> clip -> qp -> (bits per frame, top-5 overlap per frame)
    for spec in specs:
        guided = is_guided(spec)  # a picture of its own per QP, guided by the recognizer that scores it (native view)
        engine = GuidedPreTransform(GuidanceSettings.parse(spec), threads=2) if guided else load_engine(spec)
        for name, source in frames.items():
            out = source if guided else engine.run(source)
            uncoded = measures(classifier.logits(out), reference[name], "ed_")
            for qp in QPS:
                if guided:
                    out = engine.run(source, "hevc", qp)
                decoded, sizes = [], []  # sizes: bytes per frame
                for f in out:
                    data = encode_image("hevc", f, qp)
                    sizes.append(len(data))
                    decoded.append(decode_image("hevc", data, f.shape[1], f.shape[0]))
                logits = classifier.logits(np.stack(decoded))
                per_frame.setdefault(spec, {}).setdefault(name, {})[qp] = (
                    np.array([bits_per_pixel(s, out.shape[2], out.shape[1]) for s in sizes]),
                    top5_overlaps(logits, reference[name]))
                rows.append({"pre": spec, "clip": name, "qp": qp, "frames": len(out),
                             "bpp": bits_per_pixel(sum(sizes), out.shape[2], out.shape[1]) / len(out),
                             **measures(logits, reference[name]), **uncoded})
                r = rows[-1]
                print(f"{spec:>12s} {name:>36s} QP {qp}: {r['bpp']:.4f} bpp, agreement {r['agreement']:.3f}, "
                      f"p(ref) {r['p_reference']:.3f}, top-5 overlap {r['top5_overlap']:.3f}, KL {r['kl']:.3f} "
                      f"(uncoded: agreement {r['ed_agreement']:.3f}, KL {r['ed_kl']:.3f})", flush=True)
        engine.close()
    bd = []
    pres = list(dict.fromkeys(r["pre"] for r in rows))
    for spec in pres[1:]:
        for name in list(frames) + ["all"]:
            def curve(pre: str, key: str):
                sel = [r for r in rows if r["pre"] == pre and (name == "all" or r["clip"] == name)]
                by_qp = {qp: [r for r in sel if r["qp"] == qp] for qp in QPS}
                sign = -1.0 if key == "kl" else 1.0
                return (np.array([np.mean([r["bpp"] for r in v]) for v in by_qp.values()]),
                        sign * np.array([np.mean([r[key] for r in v]) for v in by_qp.values()]))
            bd.append(bd_entry(spec, pres[0], name, QUALITY, curve))
    paired = []
    for anchor in anchors:
        for spec in specs:
            if spec != anchor:
                p = {"pre": spec, "against": anchor, **paired_overlap_bd(per_frame[anchor], per_frame[spec], args.block)}
                paired.append(p)
                print(f"paired {spec} vs {anchor}, {len(frames)} clip(s): top-5 overlap BD-rate (PCHIP) "
                      f"{p['bd_rate_top5_pchip_pct']:+.1f} % {_span(p['bd_rate_ci95'])}, BD-overlap "
                      f"{p['bd_top5_overlap_pchip_pts']:+.2f} points {_span(p['bd_top5_overlap_ci95'])} "
                      f"({p['blocks']} blocks of {args.block} frames)")
    result = {"command": " ".join(sys.argv), "every": args.every, "limit": args.limit, "start": args.start,
              "start_frame": args.start_frame, "clips": list(frames), "qps": QPS,
              "seconds": round(time.time() - started, 1), "machine": platform.platform(), "rows": rows, "bd": bd,
              "paired": paired}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
