"""ED pre-transform speed on ONNX Runtime CPU: ms/frame at 224x224 and 1280x720, plus FLOPs per pixel.

    .venv/bin/python bench/ed_speed.py --out bench/results/ed_speed.json            # shipped models
    .venv/bin/python bench/ed_speed.py --model path/to/ed.onnx --threads 2

Prints and writes JSON. Timings are the median (and p90) of `--repeats` single-frame runs after warm-up,
input already float32 NCHW (the engine's uint8 conversion is not included). All shipped EDs share one
architecture, so their speed is the same up to noise; ms/frame depends on the other load on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"224x224": (224, 224), "1280x720": (720, 1280)}


def _time_session(session, h: int, w: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"ms_median": round(statistics.median(times), 3),
            "ms_p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
            "fps": round(1000 / statistics.median(times), 1)}


def _models(spec: list[str]) -> list[Path]:
    if spec:
        return [Path(s) for s in spec]
    shipped = sorted((REPO / "edgepipe" / "data" / "models").glob("*.onnx"))
    if shipped:
        return shipped
    # nothing shipped yet: an untrained ED of the default architecture has the same speed
    import torch

    from edgepipe.models.ed import EncoderDecoder

    path = Path(tempfile.mkdtemp()) / "untrained-ed.onnx"
    torch.onnx.export(EncoderDecoder(), torch.zeros(1, 3, 64, 64), str(path), input_names=["image"],
                      output_names=["image_out"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "image_out": {0: "n", 2: "h", 3: "w"}})
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="ONNX file (repeatable); default: shipped")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from edgepipe.models.ed import EncoderDecoder, flops_per_pixel, load_ed

    rows = []
    for path in _models(args.model):
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        pt = path.with_suffix(".pt")
        model = load_ed(pt) if pt.is_file() else EncoderDecoder()
        fpp = flops_per_pixel(model)
        for label, (h, w) in SIZES.items():
            rows.append({"model": path.stem, "size": label, "provider": "CPUExecutionProvider",
                         "flops_per_pixel": fpp, "gflop_per_frame": round(fpp * h * w / 1e9, 3),
                         **_time_session(session, h, w, args.repeats)})
    result = {
        "bench": "ed_speed", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "onnxruntime": ort.__version__, "torch": torch.__version__, "threads": args.threads,
        "repeats": args.repeats, "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
