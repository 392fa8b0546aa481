"""The monitor's recognizer rate (issue 13 item 4): frames/s of EfficientNet-Lite0 on ONNX Runtime CPU as the
monitor runs it, by view and batch size, at 224x224 and 1280x720.

    .venv/bin/python bench/classify_rate.py --out bench/results/classify_rate.json

`centre-crop` is the monitor's default view (the centre square at 224: a 720p frame costs about what a 224 one
does, plus the crop); `native` feeds the whole frame (eval's view; 720p is ~18x the pixels). Batch 1 is a
monitor that keeps up (each frame its own batch); 16 is its largest batch under load. 224x224 frames are
Imagenette val photos; 1280x720 ones the car-detection clip upscaled, as in pipeline_bench.py. Each figure is
the median of --repeats runs over --frames frames, with the load average beside it: the rate depends on what
else the machine runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepipe.media.sources import ReadStatus, open_source  # noqa: E402
from edgepipe.recognition import Classifier  # noqa: E402

SHARED = Path(os.environ.get("EDGEPIPE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def frames_of(spec: str, size: tuple[int, int], n: int) -> np.ndarray:
    src = open_source(spec, size, crop=True, loop=True)
    out = []
    while len(out) < n:
        status, frame = src.read()
        if status is ReadStatus.OK:
            out.append(frame.image)
        elif status is ReadStatus.EOS:
            break
    src.close()
    return np.stack(out)


def rate(classifier: Classifier, frames: np.ndarray, batch: int, repeats: int) -> float:
    """Median frames/s of the monitor's path: the per-frame view (prepare), then logits per batch."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(frames), batch):
            classifier.logits(np.stack([classifier.prepare(f) for f in frames[i:i + batch]]))
        runs.append(len(frames) / (time.perf_counter() - t0))
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the recognizer")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "classify_rate.json"))
    args = ap.parse_args()
    val, clip = SHARED / "imagenette" / "val", SHARED / "video" / "car-detection.mp4"
    for needed in (val, clip):
        if not needed.exists():
            ap.error(f"{needed} not found: point EDGEPIPE_SHARED_DATA at the shared data folder")
    sizes = {"224x224": (f"folder:{val}", (224, 224)), "1280x720": (str(clip), (1280, 720))}
    rows = []
    for view in ("centre-crop", "native"):
        classifier = Classifier("efficientnet-lite0", threads=args.threads, view=view)
        for name, (spec, size) in sizes.items():
            frames = frames_of(spec, size, args.frames)
            classifier.logits(np.stack([classifier.prepare(f) for f in frames[:2]]))  # warm-up
            for batch in (1, 16):
                load = os.getloadavg()[0]
                fps = rate(classifier, frames, batch, args.repeats)
                rows.append({"view": view, "size": name, "batch": batch, "frames_per_s": round(fps, 1),
                             "load_1min": round(load, 2)})
                print(json.dumps(rows[-1]), flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "threads": args.threads,
              "frames": args.frames, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
