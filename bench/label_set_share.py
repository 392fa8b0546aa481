"""Where does a pre-transform move the recognizer's answers: onto the training label set, or nowhere?

    python bench/label_set_share.py --pre none,ours --limit 500 --out bench/results/label_set_share.json

Every edgepipe ED is trained on Imagenette: 10 of the recognizer's 1000 classes. On Imagenette val almost every
1000-way error of the codec alone is an answer outside those 10 classes, so an ED can raise top-1 over 1000
classes by moving the recognizer's belief onto them, which buys nothing on photos of anything else. This
splits what each pre-transform does, on the first --limit images of `edgepipe eval`'s fixed order of --data
(uncoded, and through HEVC intra at --qps):
* `top1`: top-1 over the 1000 classes (what `edgepipe eval` scores by default);
* `top1_among_labels`: top-1 among the classes of --data's labels (`edgepipe eval --score top1-among-labels`);
* `answer_in_labels`: the share of images whose 1000-way answer is one of those classes, right or wrong;
* `mass_in_labels`: the mean softmax probability on them.
On the camera clips' unseen tail (every 3rd frame from 70 %, --clip-frames per clip, seen as the monitor sees
them: 224 high, centre square) the same shares, where no frame shows one of the 10 classes: a pre-transform that
raises them there is pulling unrelated scenes towards its training labels.
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

from edgepipe.core.datasets import list_labelled_images, read_rgb  # noqa: E402
from edgepipe.engines import load_engine  # noqa: E402
from edgepipe.evaluation.runner import ordered_images  # noqa: E402
from edgepipe.media.codecs import bits_per_pixel, decode_image, encode_image  # noqa: E402
from edgepipe.recognition import Classifier  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from clip_agreement import DEFAULT_CLIPS, read_frames  # noqa: E402


def shares(logits: np.ndarray, classes: np.ndarray, labels: np.ndarray | None = None) -> dict:
    top = logits.argmax(1)
    z = np.exp(logits - logits.max(1, keepdims=True))
    p = z / z.sum(1, keepdims=True)
    out = {"answer_in_labels": float(np.isin(top, classes).mean()), "mass_in_labels": float(p[:, classes].sum(1).mean())}
    if labels is not None:
        out["top1"] = float((top == labels).mean())
        out["top1_among_labels"] = float((classes[logits[:, classes].argmax(1)] == labels).mean())
    return out


def hevc_round_trip(frames: np.ndarray, qp: int) -> tuple[np.ndarray, float]:
    out, bpp = [], []
    for f in frames:
        data = encode_image("hevc", f, qp, threads=1)
        bpp.append(bits_per_pixel(len(data), f.shape[1], f.shape[0]))
        out.append(decode_image("hevc", data, f.shape[1], f.shape[0]))
    return np.stack(out), float(np.mean(bpp))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--pre", default="none,ours", help="comma list: none, shipped model names or model files")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imagenette" / "val"))
    ap.add_argument("--limit", type=int, default=500, help="images: the first N of eval's fixed shuffled order")
    ap.add_argument("--qps", default="47,42,37", help="HEVC intra QPs")
    ap.add_argument("--clips", default=str(DEFAULT_CLIPS), help="folder of .mp4 clips")
    ap.add_argument("--clip-frames", type=int, default=60, help="frames per clip from its unseen tail")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    t0 = time.time()
    qps = [int(q) for q in a.qps.split(",")]
    items = ordered_images(a.data, a.limit)
    classes = np.array(sorted({it.label for it in list_labelled_images(a.data)}), np.int64)
    labels = np.array([it.label for it in items])
    images = [read_rgb(it.path) for it in items]
    if any(im is None or im.shape != images[0].shape for im in images):
        sys.exit("every image of --data must be readable and of one size (Imagenette val is 224x224)")
    images = np.stack(images)
    clips = sorted(Path(a.clips).glob("*.mp4"))
    frames = np.concatenate([read_frames(c, 3, a.clip_frames, start=0.7) for c in clips]) if clips else None
    # the monitor's view: the shorter side to 224 (area filter), the centre square; 224x224 photos pass unchanged
    classifier = Classifier(threads=a.threads, view="centre-crop")
    results = {}
    for spec in [p.strip() for p in a.pre.split(",") if p.strip()]:
        engine = None if spec == "none" else load_engine(spec, a.threads)
        def apply(x: np.ndarray, batch: int) -> np.ndarray:
            if engine is None:
                return x
            return np.concatenate([engine.run(x[i:i + batch]) for i in range(0, len(x), batch)])
        y = apply(images, 32)
        row = {"uncoded": shares(classifier.logits(y), classes, labels)}
        for qp in qps:
            decoded, bpp = hevc_round_trip(y, qp)
            row[f"hevc_qp{qp}"] = shares(classifier.logits(decoded), classes, labels) | {"bpp": bpp}
        if frames is not None:
            yf = apply(frames, 8)
            row["clips_uncoded"] = shares(classifier.logits(yf), classes)
            for qp in qps:
                decoded, _ = hevc_round_trip(yf, qp)
                row[f"clips_hevc_qp{qp}"] = shares(classifier.logits(decoded), classes)
        results[spec] = row
        print(spec, json.dumps({k: {m: round(v, 4) for m, v in r.items()} for k, r in row.items() if not k.startswith("clips")}),
              flush=True)
    report = {"command": " ".join(sys.argv), "images": len(items), "label_classes": len(classes),
              "clip_frames": 0 if frames is None else len(frames), "results": results,
              "seconds": round(time.time() - t0, 1), "machine": platform.processor() or platform.machine()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
