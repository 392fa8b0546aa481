"""ED pre-transform speed on ONNX Runtime CPU: ms/frame at 224x224 and 1280x720, FLOPs per pixel, and the
distance to the FLOP floor measured in the same run.

    .venv/bin/python bench/ed_speed.py --out bench/results/ed_speed.json            # shipped models
    .venv/bin/python bench/ed_speed.py --model path/to/ed.onnx --threads 2
    .venv/bin/python bench/ed_speed.py --model ours --variants file,engine,int8 \
        --calibration-data ../shared/data/imagenette/train --runs 3 --out bench/results/ed_floor.json

Prints and writes JSON. Timings are the median (and p90) of `--repeats` single-frame runs after warm-up,
input already float32 NCHW (the engine's uint8 conversion is not included). All shipped EDs share one
architecture, so their speed is the same up to noise; ms/frame depends on the other load on the machine.

The floor (issue 13 item 2): FLOPs of the model / SGEMM throughput, the latter measured with torch.matmul on
the same thread count, on the shape of the ED's widest convolution as a GEMM (the 64 -> 64 3x3 body conv at
1/4 of 720p: 57,600 x 576 x 64). Within a run each repetition times the SGEMM and then one frame of every
variant, interleaved, so a machine whose load changes meets all of them alike; `ratio` is the variant's ms per
frame over the floor's ms, both medians of the same repetitions. With `--runs N` the run repeats N times and
each row gives the median over runs (per run in `runs`), with the load average before and after each run.

Every session's idle threads sleep (`session.intra_op.allow_spinning` 0, the capture's plan on 2 cores) and so do
OpenMP's (OMP_WAIT_POLICY=PASSIVE unless set): a variant's pool spinning after its frame would otherwise take the
cores from the next variant in the interleaved order.

Variants: `file` (the .onnx as written, ONNX Runtime's default session: ORT_ENABLE_ALL, the figure this
script gave before), `file-extended` (ORT_ENABLE_EXTENDED: no NCHWc blocked layout), `file-basic`
(ORT_ENABLE_BASIC: no Conv+activation fusion either), `engine` (the session OnnxEngine runs for that size: the
rewritten graph of engines/onnx_graph.py), `engine-extended`, and `int8` (engines/onnx_quantize.py's Q/DQ
model calibrated on --calibration-data, through OnnxEngine).
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see the docstring

SIZES = {"224x224": (224, 224), "1280x720": (720, 1280)}


VARIANTS = ("file", "file-extended", "file-basic", "engine", "engine-extended", "int8")
GEMM_SHAPE = (57_600, 576, 64)  # M x K x N: the body conv (64 -> 64, 3x3) at 1/4 of 720p as one GEMM


def _summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"ms_median": round(statistics.median(times), 3),
            "ms_p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
            "fps": round(1000 / statistics.median(times), 1)}


def _sgemm(threads: int):
    """A callable timing one float32 GEMM of GEMM_SHAPE on `threads` threads: returns (ms, GFLOP/s)."""
    import torch

    torch.set_num_threads(threads)
    m, k, n = GEMM_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(m, k, generator=gen), torch.rand(k, n, generator=gen)
    out = torch.empty(m, n)
    flop = 2.0 * m * k * n

    def once() -> tuple[float, float]:
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        ms = (time.perf_counter() - t) * 1000
        return ms, flop / ms / 1e6

    for _ in range(3):
        once()
    return once


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _time_interleaved(runners: dict, sgemm, h: int, w: int, gflop: float, repeats: int,
                      warmup: int = 2) -> tuple[dict, dict]:
    """Per variant, the frame times; and the SGEMM's, with one SGEMM before each repetition's frames."""
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    times = {name: [] for name in runners}
    gemm = []
    for _ in range(repeats):
        gemm.append(sgemm()[1])
        for name, run in runners.items():
            t = time.perf_counter()
            run(x)
            times[name].append((time.perf_counter() - t) * 1000)
    gflops = statistics.median(gemm)
    floor_ms = gflop / gflops * 1000
    return times, {"sgemm_gflops": round(gflops, 1), "floor_ms": round(floor_ms, 3)}


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


def _runners(ort, path: Path, variants: list[str], threads: int, int8: Path | None) -> tuple[dict, dict]:
    """name -> run(x) for each variant of one model, and the ms each took to load."""
    from edgepipe.engines import EngineThreads
    from edgepipe.engines.onnx_engine import OnnxEngine

    budget = EngineThreads(count=threads, spin=False)
    levels = {"file": "ORT_ENABLE_ALL", "file-extended": "ORT_ENABLE_EXTENDED", "file-basic": "ORT_ENABLE_BASIC"}
    runners, load_ms = {}, {}
    for name in variants:
        t = time.perf_counter()
        if name == "engine-extended":
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            runners[name] = _rewritten(ort, path, options)
        elif name in levels:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[name])
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runners[name] = lambda x, s=session: s.run(None, {s.get_inputs()[0].name: x})
        else:
            engine = OnnxEngine(int8 if name == "int8" else path, providers=["CPUExecutionProvider"], threads=budget)
            runners[name] = lambda x, e=engine: e.session_for(x.shape[2], x.shape[3]).run(None, {"image": x})
        load_ms[name] = round((time.perf_counter() - t) * 1000, 1)
    return runners, load_ms


def _rewritten(ort, path: Path, options):
    """run(x) on the engine's rewritten graphs (engines/onnx_graph.py) under other session options."""
    import copy

    import onnx

    from edgepipe.engines import onnx_graph

    model = onnx.load(str(path))
    a = onnx_graph.alignment(model)
    onnx_graph.pixel_shuffle_as_conv_transpose(model)
    onnx_graph.depth_to_space_as_conv_transpose(model)
    aligned = copy.deepcopy(model)
    onnx_graph.without_crops(aligned)
    generic, aligned = (ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                        for m in (model, aligned))
    return lambda x: (aligned if x.shape[2] % a == 0 and x.shape[3] % a == 0 else generic).run(None, {"image": x})


def _quantised(path: Path, data: Path, images: int, out_dir: Path) -> Path:
    from edgepipe.engines.onnx_quantize import quantize_int8
    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    target = out_dir / f"{path.stem}.int8.onnx"
    quantize_int8(path, target, CalibrationBatches(data, (224, 224), 8, images))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="ONNX file (repeatable); default: shipped")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (and the SGEMM's)")
    parser.add_argument("--repeats", type=int, default=20, help="frames per variant per run (at 720p: a third)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement; rows give medians")
    parser.add_argument("--variants", default="file", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--calibration-data", type=Path, default=None, help="images for the int8 variant")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if "int8" in variants and args.calibration_data is None:
        parser.error("the int8 variant needs --calibration-data DIR (real images)")

    import onnxruntime as ort
    import torch

    from edgepipe.engines import resolve_model
    from edgepipe.models.ed import EncoderDecoder, flops_per_pixel, load_ed

    sgemm = _sgemm(args.threads)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="ed-speed-"))
    for path in _models([str(resolve_model(m)) for m in args.model]):
        int8 = _quantised(path, args.calibration_data, args.calibration_images, tmp) if "int8" in variants else None
        runners, load_ms = _runners(ort, path, variants, args.threads, int8)
        pt = path.with_suffix(".pt")
        model = load_ed(pt) if pt.is_file() else EncoderDecoder()
        fpp = flops_per_pixel(model)
        for label, (h, w) in SIZES.items():
            gflop = fpp * h * w / 1e9
            repeats = args.repeats if h * w <= 224 * 224 else max(3, args.repeats // 3)
            per_run = []
            for _ in range(args.runs):
                before = _load()
                times, floor = _time_interleaved(runners, sgemm, h, w, gflop, repeats)
                per_run.append((times, floor, before, _load()))
            for name in variants:
                runs = [{**_summary(times[name]), **floor,
                         "ratio": round(statistics.median(times[name]) / floor["floor_ms"], 2),
                         "load_before": before, "load_after": after}
                        for times, floor, before, after in per_run]
                rows.append({"model": path.stem, "variant": name, "size": label, "provider": "CPUExecutionProvider",
                             "flops_per_pixel": fpp, "gflop_per_frame": round(gflop, 3),
                             **_summary([r["ms_median"] for r in runs]),
                             "ms_p90": round(statistics.median(r["ms_p90"] for r in runs), 3),
                             "floor_ms": round(statistics.median(r["floor_ms"] for r in runs), 3),
                             "sgemm_gflops": round(statistics.median(r["sgemm_gflops"] for r in runs), 1),
                             "ratio": round(statistics.median(r["ratio"] for r in runs), 2),
                             "load_ms": load_ms[name], "runs": runs})
                print(f"{path.stem:10s} {label:9s} {name:16s} {rows[-1]['ms_median']:9.2f} ms/frame  floor "
                      f"{rows[-1]['floor_ms']:8.2f} ms  ratio {rows[-1]['ratio']:5.2f}  load {per_run[-1][2]}",
                      file=sys.stderr)
    result = {
        "bench": "ed_speed", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "onnxruntime": ort.__version__, "torch": torch.__version__, "threads": args.threads,
        "repeats": args.repeats, "runs": args.runs, "gemm_shape_mkn": list(GEMM_SHAPE),
        "variants": variants, "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
