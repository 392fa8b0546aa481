"""ms/frame of the conversions around every engine: uint8 NHWC frame -> float NCHW model input, and the
model's float NCHW output -> the uint8 NHWC frame the encoder takes (edgepipe/engines/base.py).

    .venv/bin/python bench/engine_io_speed.py --out bench/results/engine_io_speed.json

Each is timed on one frame per size against the plain numpy way of writing it (a strided casting copy), as
medians of --repeats calls after warm-up, with OpenCV's and numpy's thread settings as the process has them
(pass --cv-threads to set OpenCV's). The output is checked: the two ways give the same pixels except where the
plain way rounds half up and OpenCV half to even. Writes JSON with the machine's load.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgepipe.engines.base import from_model_output, to_model_input  # noqa: E402


def plain_output(x: np.ndarray) -> np.ndarray:
    """The numpy way (as edgepipe had it): scale, round half up, clamp, then one strided casting copy."""
    y = np.multiply(x, 255.0)
    y += 0.5
    np.clip(y, 0, 255, out=y)
    out = np.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]), np.uint8)
    np.copyto(out, y.transpose(0, 2, 3, 1), casting="unsafe")
    return out


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224x224,1280x720", help="WIDTHxHEIGHT,...")
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--cv-threads", type=int, default=None, help="cv2.setNumThreads (default: as it is)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import cv2

    if args.cv_threads is not None:
        cv2.setNumThreads(args.cv_threads)
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        frame = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        y = rng.random((1, 3, h, w), dtype=np.float32) * 1.2 - 0.1  # a model's output, a little out of range
        differ = int(np.count_nonzero(from_model_output(y) != plain_output(y)))
        rows.append({
            "size": size,
            "to_model_input_ms": round(median_ms(lambda: to_model_input(frame), args.repeats), 3),
            "from_model_output_ms": round(median_ms(lambda: from_model_output(y), args.repeats), 3),
            "from_model_output_plain_numpy_ms": round(median_ms(lambda: plain_output(y), args.repeats), 3),
            "samples_that_differ_from_half_up": differ,
        })
        print(json.dumps(rows[-1]))
    report = {"command": " ".join(["bench/engine_io_speed.py", *sys.argv[1:]]), "rows": rows,
              "load_avg_at_start": os.getloadavg(), "cpu_count": os.cpu_count(), "cv_threads": cv2.getNumThreads(),
              "machine": platform.machine(), "numpy": np.__version__, "opencv": cv2.__version__}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
