"""Offline P-frame check: does a pre-transform still save bits when HEVC codes it as a stream with inter frames?

    python bench/clip_inter.py --pre none,ours --out bench/results/clip_inter.json
    python bench/clip_inter.py --pre none,ours --images runs/holdout160 --limit 40 \\
        --out bench/results/clip_inter_pans.json

Sources. Clips (default, for reporting): the first N consecutive frames (every K-th, after --start) of each
.mp4 in --clips.
Pans (--images, the train-side stand-in used to choose models): for each of the first M images of an
ImageNet-layout folder (ROOT/<synset>/*.JPEG|*.png; taken round-robin over the sorted synsets, each synset's
files sorted, so every class is represented), a synthetic video of F frames: frame k is the image translated by
k*(dx, dy) px (a seeded random sub-pixel velocity per image, |v| in 0.3..1.5 px/frame, bilinear cv2.warpAffine,
BORDER_REFLECT) plus fresh seeded Gaussian sensor noise (sigma 2/255), rounded to uint8.

Each pre-transform's output sequence is coded as ONE low-latency HEVC stream per QP (the capture's
`HevcEncoder`: libx265, no B-frames, constant QP, --preset, single-threaded; GOP --gop for clips, the pan
length for pans so frame 0 is the only I-frame), decoded with `HevcDecoder` and classified. The recognizer's
logits on the SOURCE frames are the reference (as in clip_agreement.py).

rows (one per pre, source kind, clip or "pans", QP):
    bpp, bpp_i, bpp_p     bits per pixel over all frames, over I-frames (keyframes) only, over P-frames only
    frames, i_frames, p_frames, classified   coded frames, of them I and P, frames classified (--classify-every)
    agreement, p_reference, top5_overlap, kl   clip_agreement.py's measures of the decoded frames vs reference
    top1                  pans only: top-1 accuracy of the decoded frames against the image's label (the measure
                          that chooses models: the reference measures penalise a pre-transform that corrects the
                          recognizer, and on Imagenette `ours` does so on ~1 image in 40)
    ed_*                  the same measures for the pre-transform's output before any codec
    temporal_gain         codec-free flicker diagnostic: mean |ED(x_t+1) - ED(x_t)| / mean |x_t+1 - x_t| over
                          consecutive frames (float, all pixels pooled over the source's sequences); 1.0 for
                          `none`, > 1 means the pre-transform amplifies frame-to-frame change (harder to predict)
    temporal_gain_static  the same over the source's static pixels only (|x_t+1 - x_t| <= 6 levels in every
                          channel: sensor noise, not motion), where inter prediction should find most to reuse
    temporal_gain_mc      pans only (their motion is known): sum |ED(x_t+1) - shift(ED(x_t), v)| over the same for
                          the source, bilinear shift by the pan's velocity, a 1.5*F+2 px border left out; > 1 means
                          the output is harder to predict by motion compensation than its input (None for clips)
bd (per pre vs the first, per clip, "pans" and "all" = the mean curve of the run's sources): BD-Rate of each
    measure (kl as its negative) with edgepipe.core.bdrate.compare, cubic and PCHIP, in %; negative = same
    quality for fewer bits.
ratios (per pre vs the first, per source and "all", per QP): bpp_ratio, bpp_i_ratio, bpp_p_ratio = plain
    bits ratios at equal QP (pre / anchor).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import clip_agreement  # noqa: E402
from clip_agreement import DEFAULT_CLIPS, QUALITY, bd_entry, measures, read_frames  # noqa: E402

from edgepipe.core.datasets import list_labelled_images  # noqa: E402
from edgepipe.core.errors import EdgepipeError  # noqa: E402
from edgepipe.engines import load_engine  # noqa: E402
from edgepipe.engines.registry import parse_spec  # noqa: E402
from edgepipe.media.codecs.hevc import HevcDecoder, HevcEncoder  # noqa: E402
from edgepipe.recognition import Classifier  # noqa: E402

QPS = clip_agreement.QPS
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
ED_BATCH = 16  # frames per engine.run call (the ED's activations at 768x432 are large)


class UsageError(Exception):
    """A one-line problem with the inputs (exit code 2)."""


def list_images(folder: Path, limit: int) -> list[Path]:
    """The first `limit` images, round-robin over the sorted synset folders (each one's files sorted)."""
    if not folder.is_dir():
        raise UsageError(f"not a readable folder: {folder}")
    per_class = [sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                 for d in sorted(folder.iterdir()) if d.is_dir()]
    per_class = [files for files in per_class if files]
    if not per_class:
        raise UsageError(f"no images in {folder} (expected {folder}/<synset>/*.JPEG or *.png)")
    picked, i = [], 0
    while len(picked) < limit and any(i < len(files) for files in per_class):
        picked += [files[i] for files in per_class if i < len(files)]
        i += 1
    return picked[:limit]


def pan(image: np.ndarray, frames: int, rng: np.random.Generator, noise: float = 2.0) -> tuple[np.ndarray, list]:
    """A synthetic pan: frame k = image shifted by k*v (sub-pixel, bilinear, reflected border) + sensor noise."""
    speed, angle = rng.uniform(0.3, 1.5), rng.uniform(0.0, 2 * np.pi)
    v = (speed * np.cos(angle), speed * np.sin(angle))
    h, w = image.shape[:2]
    src = image.astype(np.float32)
    out = []
    for k in range(frames):
        m = np.float32([[1, 0, k * v[0]], [0, 1, k * v[1]]])
        f = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        f = f + rng.normal(0.0, noise, f.shape).astype(np.float32)
        out.append(np.clip(np.rint(f), 0, 255).astype(np.uint8))
    return np.stack(out), [float(v[0]), float(v[1])]


def load_sources(args) -> tuple[str, dict[str, list[np.ndarray]], dict]:
    """(kind, {name: [sequence (T, H, W, 3) uint8, ...]}, details). Clips: one sequence each; pans: one name."""
    if args.images:
        files = list_images(Path(args.images), args.limit)
        label_of = {i.path: i.label for i in list_labelled_images(args.images)}
        rng = np.random.default_rng(args.seed)
        seqs, velocities = [], []
        for f in files:
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                raise UsageError(f"unreadable image: {f}")
            seq, v = pan(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), args.pan_frames, rng)
            seqs.append(seq)
            velocities.append(v)
        return "pans", {"pans": seqs}, {"images": [str(f.relative_to(args.images)) for f in files],
                                        "labels": [int(label_of[f]) for f in files],
                                        "velocities_px_per_frame": velocities}
    clips = sorted(Path(args.clips).glob("*.mp4"))
    if not clips:
        raise UsageError(f"no .mp4 clips in {args.clips}")
    sources = {}
    for c in clips:
        try:
            sources[c.name] = [read_clip(c, args.start, args.every, args.frames)]
        except UsageError:
            raise
        except Exception as exc:  # av's errors vary by version
            raise UsageError(f"cannot read {c}: {exc}") from None
    return "clip", sources, {"clips": [c.name for c in clips]}


def run_engine(engine, seq: np.ndarray) -> np.ndarray:
    return np.concatenate([engine.run(seq[i:i + ED_BATCH]) for i in range(0, len(seq), ED_BATCH)])


STATIC_DIFF = 6  # |x_t+1 - x_t| (uint8 levels, max over RGB) at or below which a source pixel counts as static


def temporal_change(seq: np.ndarray, source: np.ndarray) -> tuple[float, float]:
    """Sums of |y_t+1 - y_t| over consecutive pairs, in float: (all pixels, the source's static pixels)."""
    total = static = 0.0
    for t in range(len(seq) - 1):
        d = np.abs(seq[t + 1].astype(np.float32) - seq[t].astype(np.float32))
        still = np.abs(source[t + 1].astype(np.int16) - source[t].astype(np.int16)).max(-1) <= STATIC_DIFF
        total += float(d.sum(dtype=np.float64))
        static += float(d[still].sum(dtype=np.float64))
    return total, static


def mc_residual(seq: np.ndarray, v: tuple[float, float], margin: int) -> float:
    """Sum of |y_t+1 - shift(y_t, v)| (bilinear, the pan's own motion) inside a `margin` px border, in float."""
    h, w = seq.shape[1:3]
    m = np.float32([[1, 0, v[0]], [0, 1, v[1]]])
    total = 0.0
    for t in range(len(seq) - 1):
        pred = cv2.warpAffine(seq[t].astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
        d = np.abs(seq[t + 1].astype(np.float32) - pred)[margin:h - margin, margin:w - margin]
        total += float(d.sum(dtype=np.float64))
    return total


def read_clip(path: Path, start: int, every: int, limit: int) -> np.ndarray:
    """clip_agreement.read_frames from frame index `start` on."""
    try:
        return read_frames(path, every, limit, first_frame=start)
    except ValueError as e:
        raise UsageError(str(e)) from None


def code_stream(seq: np.ndarray, qp: int, gop: int, preset: str) -> tuple[np.ndarray, list[int], list[bool]]:
    """Code a sequence as one HEVC stream; (decoded frames, bytes per frame, keyframe flags) in frame order."""
    t, h, w = seq.shape[:3]
    enc = HevcEncoder(w, h, qp=qp, gop=gop, preset=preset, threads=1)
    packets = []
    for f in seq:
        packets += enc.encode(f)
    packets += enc.flush()
    packets.sort(key=lambda p: p.pts)
    dec = HevcDecoder()
    decoded = []
    for p in packets:
        decoded += dec.decode(p.data, w, h)
    if len(packets) != t or len(decoded) != t:
        raise RuntimeError(f"stream of {t} frames gave {len(packets)} packets and {len(decoded)} decoded frames")
    return np.stack(decoded), [p.size for p in packets], [p.keyframe for p in packets]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--pre", default="none,ours",
                    help="comma list: none, shipped model names or model files; the first is the BD anchor")
    ap.add_argument("--clips", default=str(DEFAULT_CLIPS), help="folder of .mp4 clips (used unless --images)")
    ap.add_argument("--frames", type=int, default=120, help="consecutive frames per clip (after --every)")
    ap.add_argument("--every", type=int, default=1, help="take every K-th frame of a clip")
    ap.add_argument("--start", type=int, default=0, help="skip this many frames at the start of each clip")
    ap.add_argument("--gop", type=int, default=20, help="GOP (keyframe interval) for clips")
    ap.add_argument("--images", default=None,
                    help="ImageNet-layout folder ROOT/<synset>/*.JPEG|*.png: code synthetic pans instead of clips")
    ap.add_argument("--limit", type=int, default=40, help="images for --images")
    ap.add_argument("--pan-frames", type=int, default=8, help="frames per synthetic pan (GOP = this: one I-frame)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pans' velocities and noise")
    ap.add_argument("--qps", default=",".join(map(str, QPS)), help="comma list of HEVC QPs")
    ap.add_argument("--preset", default="ultrafast", help="libx265 preset (the capture's default)")
    ap.add_argument("--classify-every", type=int, default=1,
                    help="classify every K-th frame of each sequence (2 halves the recognizer's time)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "clip_inter.json"), help="JSON to write")
    args = ap.parse_args()

    try:
        qps = tuple(int(q) for q in args.qps.split(",") if q.strip())
        if not qps or min(args.frames, args.every, args.gop, args.limit, args.classify_every) < 1 \
                or args.pan_frames < 2:
            raise UsageError("need QPs, --frames/--every/--gop/--limit/--classify-every >= 1, --pan-frames >= 2")
        specs = [s.strip() for s in args.pre.split(",") if s.strip()]
        if not specs:
            raise UsageError("--pre is empty")
        for spec in specs:
            parse_spec(spec)  # fail now, not after minutes of work
        kind, sources, details = load_sources(args)
    except ValueError:
        print(f"clip_inter: --qps must be a comma list of integers, got {args.qps!r}", file=sys.stderr)
        return 2
    except (UsageError, EdgepipeError) as exc:
        print(f"clip_inter: {exc}", file=sys.stderr)
        return 2

    started = time.time()
    gop = args.pan_frames if kind == "pans" else args.gop
    classifier = Classifier(threads=2)

    def picked(seqs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([s[::args.classify_every] for s in seqs])

    reference = {name: classifier.logits(picked(seqs)) for name, seqs in sources.items()}
    labels = None
    if kind == "pans":  # one label per classified frame
        labels = np.concatenate([np.full(len(s[::args.classify_every]), label)
                                 for s, label in zip(sources["pans"], details["labels"])])

    def accuracy(logits: np.ndarray, prefix: str = "") -> dict:
        return {} if labels is None else {f"{prefix}top1": float(np.mean(logits.argmax(1) == labels))}
    rows = []
    for spec in specs:
        try:
            engine = load_engine(spec, threads=2)
        except EdgepipeError as exc:
            print(f"clip_inter: {exc}", file=sys.stderr)
            return 2
        for name, seqs in sources.items():
            t0 = time.time()
            outs = [run_engine(engine, s) for s in seqs]
            ed_seconds = time.time() - t0
            # pooled over the source's sequences; same pixel count for ED output and source, so a ratio of sums
            ed_change = np.sum([temporal_change(o, s) for o, s in zip(outs, seqs)], 0)
            src_change = np.sum([temporal_change(s, s) for s in seqs], 0)
            gain, gain_static = (float(e / c) if c > 0 else float("nan") for e, c in zip(ed_change, src_change))
            gain_mc = None
            if kind == "pans":  # the pans' true motion is known: how well does motion compensation predict?
                margin = int(np.ceil(args.pan_frames * 1.5)) + 2
                vs = details["velocities_px_per_frame"]
                gain_mc = (sum(mc_residual(o, v, margin) for o, v in zip(outs, vs))
                           / sum(mc_residual(s, v, margin) for s, v in zip(seqs, vs)))
            ed_logits = classifier.logits(picked(outs))
            uncoded = {**measures(ed_logits, reference[name], "ed_"), **accuracy(ed_logits, "ed_")}
            for qp in qps:
                decoded, sizes, keys, pixels = [], [], [], []
                for o in outs:
                    d, s, k = code_stream(o, qp, gop, args.preset)
                    decoded.append(d)
                    sizes += s
                    keys += k
                    pixels += [o.shape[1] * o.shape[2]] * len(o)
                sizes, keys, pixels = np.array(sizes), np.array(keys), np.array(pixels)

                def bpp(sel: np.ndarray) -> float | None:
                    return float(sizes[sel].sum() * 8 / pixels[sel].sum()) if sel.any() else None

                logits = classifier.logits(picked(decoded))
                rows.append({"pre": spec, "source": kind, "clip": name, "qp": qp, "gop": gop,
                             "frames": int(len(sizes)), "i_frames": int(keys.sum()), "p_frames": int((~keys).sum()),
                             "classified": int(len(logits)),
                             "bpp": bpp(np.ones_like(keys)), "bpp_i": bpp(keys), "bpp_p": bpp(~keys),
                             **measures(logits, reference[name]), **accuracy(logits), **uncoded,
                             "temporal_gain": gain, "temporal_gain_static": gain_static,
                             "temporal_gain_mc": gain_mc,
                             "ed_seconds": round(ed_seconds, 1)})
                r = rows[-1]
                print(f"{spec:>12s} {name:>36s} QP {qp}: {r['bpp']:.4f} bpp (I {r['bpp_i'] or 0:.4f}, "
                      f"P {r['bpp_p'] or 0:.4f}), " + (f"top-1 {r['top1']:.3f}, " if "top1" in r else "")
                      + f"agreement {r['agreement']:.3f}, p(ref) {r['p_reference']:.3f}, "
                      f"top-5 {r['top5_overlap']:.3f}, KL {r['kl']:.3f}, temporal gain {gain:.3f} (static {gain_static:.3f}"
                      + ("" if gain_mc is None else f", motion-compensated {gain_mc:.3f}") + ")", flush=True)
        engine.close()
    names = list(sources)
    bd, ratios = [], []
    pres = list(dict.fromkeys(r["pre"] for r in rows))

    def sel(pre: str, name: str, qp: int) -> list[dict]:
        return [r for r in rows if r["pre"] == pre and (name == "all" or r["clip"] == name) and r["qp"] == qp]

    def mean(values) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    for spec in pres[1:]:
        for name in names + (["all"] if len(names) > 1 else []):
            def curve(pre: str, key: str):
                sign = -1.0 if key == "kl" else 1.0
                return (np.array([mean(r["bpp"] for r in sel(pre, name, qp)) for qp in qps]),
                        sign * np.array([mean(r[key] for r in sel(pre, name, qp)) for qp in qps]))
            bd.append(bd_entry(spec, pres[0], name, QUALITY + (("top1",) if kind == "pans" else ()), curve))
            for qp in qps:
                ratio = {"pre": spec, "anchor": pres[0], "clip": name, "qp": qp}
                for key in ("bpp", "bpp_i", "bpp_p"):
                    a = mean(r[key] for r in sel(pres[0], name, qp))
                    t = mean(r[key] for r in sel(spec, name, qp))
                    ratio[f"{key}_ratio"] = t / a if a and t is not None else None
                ratios.append(ratio)

                def fmt(v) -> str:
                    return "n/a" if v is None else f"{v:.3f}"
                print(f"bits ratio {spec} / {pres[0]} on {name} QP {qp}: all {fmt(ratio['bpp_ratio'])}, "
                      f"I {fmt(ratio['bpp_i_ratio'])}, P {fmt(ratio['bpp_p_ratio'])}")
    result = {"command": " ".join(sys.argv), "source": kind, "pre": specs, "qps": qps, "gop": gop,
              "preset": args.preset, "classify_every": args.classify_every,
              "settings": ({"images": args.images, "limit": args.limit, "pan_frames": args.pan_frames,
                            "seed": args.seed, "noise_sigma": 2 / 255, "speed_px_per_frame": [0.3, 1.5]}
                           if kind == "pans" else {"clips": args.clips, "frames": args.frames, "every": args.every,
                                 "start": args.start}),
              **details, "seconds": round(time.time() - started, 1), "machine": platform.platform(),
              "rows": rows, "bd": bd, "ratios": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
