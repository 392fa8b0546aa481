"""ms/frame of the ED pre-transform through each available engine, as the capture loop calls it.

    .venv/bin/python bench/engine_speed.py --out bench/results/engine_speed.json
    .venv/bin/python bench/engine_speed.py --model ours.onnx --plans-dir /tmp/plans   # on a GPU machine

Engines: ONNX Runtime on CPU (everywhere), ONNX Runtime CUDA when its provider is installed, and TensorRT
fp32 / fp16 / int8 when `tensorrt` and a GPU are there (plans are built once into --plans-dir; int8 is
calibrated on real images from --calib-data). Each timing is `Engine.run` on one real uint8 frame at
224x224 and at 1280x720, so it includes the uint8 <-> float conversion and, for TensorRT, the
host <-> device copies: what a frame costs in the capture loop. Median and p90 of --repeats runs after
warm-up. The model is the shipped ED (`ours`) when present, else an untrained ED of the same architecture
(same speed). Writes JSON with the hardware and versions it ran on.
"""
from __future__ import annotations

import argparse
import json
import logging
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

from edgepipe.core.errors import EdgepipeError  # noqa: E402

SHARED = Path(os.environ.get("EDGEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))
SIZES = {"224x224": (224, 224), "1280x720": (1280, 720)}  # WIDTHxHEIGHT
log = logging.getLogger("engine_speed")


def model_path(spec: str | None) -> tuple[Path, str]:
    from edgepipe.engines import resolve_model

    if spec:
        return Path(spec), "given"
    try:
        return resolve_model("ours"), "shipped ED (ours.onnx)"
    except EdgepipeError:
        pass
    import torch

    from edgepipe.models.ed import EncoderDecoder

    path = Path(tempfile.mkdtemp()) / "untrained-ed.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(EncoderDecoder(), torch.zeros(1, 3, 64, 64), str(path), input_names=["image"],
                      output_names=["image_out"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": axes, "image_out": axes})
    return path, "untrained ED, default architecture (ours.onnx not shipped yet; same speed)"


def real_frames(size: tuple[int, int], n: int) -> np.ndarray:
    """n real uint8 frames at `size`, shaped as the capture loop shapes them; noise if no images are around."""
    folder = SHARED / "imagenette" / "val"
    if folder.is_dir():
        from edgepipe.tensorrt.calibration.data import CalibrationBatches

        return np.stack(list(CalibrationBatches(folder, size, 1, n).frames())[:n])
    log.warning("no images at %s: timing on noise frames", folder)
    w, h = size
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def time_engine(engine, frames: np.ndarray, repeats: int, warmup: int) -> dict:
    for i in range(warmup):
        engine.run(frames[i % len(frames)][None])
    times = []
    for i in range(repeats):
        frame = frames[i % len(frames)][None]
        t = time.perf_counter()
        engine.run(frame)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    median = statistics.median(times)
    return {"ms_median": round(median, 3), "ms_p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
            "fps": round(1000 / median, 1)}


def hardware() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        info["cpu"] = platform.processor() or platform.machine()
    model = Path("/proc/device-tree/model")  # Jetsons name themselves here
    if model.is_file():
        info["board"] = model.read_text().strip("\x00\n ")
    info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def engines_to_run(onnx: Path, args) -> list[tuple[str, str, object]]:
    """(engine, precision, factory) for every engine this machine has."""
    import onnxruntime as ort

    from edgepipe.engines.onnx_engine import OnnxEngine

    found = [("onnxruntime-cpu", "fp32",
              lambda: OnnxEngine(onnx, providers=["CPUExecutionProvider"], threads=args.threads))]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        found.append(("onnxruntime-cuda", "fp32",
                      lambda: OnnxEngine(onnx, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])))
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        log.info("TensorRT not available (%s): skipping TensorRT engines", exc)
        return found
    from edgepipe.engines.tensorrt_engine import TensorRTEngine, import_tensorrt
    from edgepipe.tensorrt.build import BuildOptions, Int8Options, builder_for, parse_shapes

    trt = import_tensorrt("the benchmark")
    plans = Path(args.plans_dir or tempfile.mkdtemp(prefix="edgepipe-bench-plans-"))
    plans.mkdir(parents=True, exist_ok=True)
    for precision in args.trt_precisions:
        plan = plans / f"{onnx.stem}-{precision}.plan"
        if not plan.is_file():
            calib = Int8Options(data=args.calib_data, cache=plans / f"{onnx.stem}.calib")
            if precision == "int8" and not (args.calib_data and args.calib_data.is_dir()):
                log.warning("no calibration images (--calib-data): skipping TensorRT int8")
                continue
            options = BuildOptions(precision=precision, shapes=parse_shapes("32x32:1280x720:1920x1080"),
                                   int8=calib, progress=sys.stderr.isatty())
            try:
                builder_for(trt).build(onnx, plan, options)
            except EdgepipeError as exc:
                log.warning("TensorRT %s build failed: %s", precision, exc)
                continue
        found.append((f"tensorrt-{trt.__version__}", precision, lambda p=plan: TensorRTEngine(p)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model [default: shipped ours.onnx, else an untrained ED]")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads [default: all cores]")
    parser.add_argument("--plans-dir", type=Path, help="where TensorRT plans are built/reused")
    parser.add_argument("--trt-precisions", nargs="+", default=["fp32", "fp16", "int8"])
    parser.add_argument("--calib-data", type=Path, default=SHARED / "imagenette" / "val")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import onnxruntime as ort

    from edgepipe.core.files import sha256_file
    from edgepipe.tensorrt.build import detect_gpu

    onnx, origin = model_path(args.model)
    frames = {label: real_frames(size, 8) for label, size in SIZES.items()}
    rows = []
    for name, precision, factory in engines_to_run(onnx, args):
        engine = factory()
        try:
            for label, batch in frames.items():
                row = {"engine": name, "precision": precision, "size": label, "batch": 1,
                       **time_engine(engine, batch, args.repeats, args.warmup)}
                rows.append(row)
                log.info("%s", row)
        finally:
            engine.close()
    gpu = None
    try:
        gpu = detect_gpu()
    except Exception as exc:  # noqa: BLE001 - hardware info is best effort
        log.debug("no GPU info: %s", exc)
    versions = {"onnxruntime": ort.__version__, "numpy": np.__version__}
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except (ImportError, OSError):
        pass
    result = {
        "bench": "engine_speed", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"path": onnx.name, "origin": origin, "sha256": sha256_file(onnx)},
        "hardware": {**hardware(), "gpu": None if gpu is None else {"name": gpu.name, "compute_capability":
                                                                    gpu.compute_capability}},
        "versions": versions, "repeats": args.repeats, "warmup": args.warmup,
        "measures": "Engine.run on one uint8 RGB frame (conversion and host<->device copies included)",
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
