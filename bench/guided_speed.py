"""What the recognizer-guided pre-transform costs per frame on this machine: ms/frame at 224x224 and 1280x720
for several step counts, beside the shipped ED on ONNX Runtime.

    .venv/bin/python bench/guided_speed.py --steps 1,2,4,8 --threads 2 --out bench/results/guided_speed.json

Each step is one real coding and decoding (HEVC intra at --qp, libx265 preset medium, as the evaluation codes)
and one forward and backward pass of the recognizer (EfficientNet-Lite0, PyTorch CPU); the first pass (the
original picture) adds one more. Frames are a real Imagenette val photo (224x224) and a frame of the shared
car clip upscaled to 1280x720. Timings: median and p90 of --repeats single-frame runs after one warm-up run,
with the load average before and after; `ed_ms` is the shipped `ours` through its ONNX engine on the same
threads, for scale.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def frames(size: str) -> np.ndarray:
    import cv2

    from edgepipe.core.datasets import list_labelled_images, read_rgb

    if size == "224":
        val = ROOT.parent / "shared" / "data" / "imagenette" / "val"
        return read_rgb(list_labelled_images(val)[0].path)[None]
    cap = cv2.VideoCapture(str(ROOT.parent / "shared" / "data" / "video" / "car-detection.mp4"))
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        raise SystemExit("error: cannot read a frame of ../shared/data/video/car-detection.mp4")
    return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (1280, 720), interpolation=cv2.INTER_CUBIC)[None]


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up: encoders, thread pools, allocations
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ms.append(1000.0 * (time.perf_counter() - t))
    ms.sort()
    return {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))], "runs": len(ms)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--sizes", default="224,720")
    ap.add_argument("--qp", type=int, default=43)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from edgepipe.engines import load_engine
    from edgepipe.guidance.guided import GuidanceSettings, GuidedPreTransform

    rows = []
    ed = load_engine("ours", args.threads)
    for size in args.sizes.split(","):
        x = frames(size)
        load0 = os.getloadavg()[0]
        row = {"size": f"{x.shape[2]}x{x.shape[1]}", "ed_ms": timed(lambda: ed.run(x), args.repeats)["median_ms"]}
        for steps in (int(s) for s in args.steps.split(",")):
            guide = GuidedPreTransform(GuidanceSettings(steps=steps, batch=1), threads=args.threads)
            row[f"guided_{steps}"] = timed(lambda: guide.run(x, "hevc", args.qp), args.repeats)
            guide.close()
            print(f"{row['size']}: guided:{steps} {row[f'guided_{steps}']['median_ms']:.0f} ms/frame "
                  f"(ED {row['ed_ms']:.1f} ms)", file=sys.stderr)
        row["load_before"], row["load_after"] = load0, os.getloadavg()[0]
        rows.append(row)
    ed.close()
    result = {"command": "bench/guided_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": platform.platform(), "cpu_count": os.cpu_count(), "qp": args.qp, "threads": args.threads,
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
