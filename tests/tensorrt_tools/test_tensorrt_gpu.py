"""TensorRT for real: build fp32/fp16 (and int8 with a calibration cache on TensorRT 10) from the shipped
ONNX model, compare with ONNX Runtime on real images, run the engine from another thread and inside
the capture loop. Needs TensorRT, a CUDA Python package and an NVIDIA GPU; skipped with the reason otherwise."""
from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError

pytestmark = pytest.mark.gpu

SHAPES = "32x32:224x224:1280x720"
TOLERANCE = {"fp32": 2e-3, "fp16": 1e-2}


@pytest.fixture(scope="module")
def trt():
    try:
        import tensorrt
    except ImportError:
        pytest.skip("tensorrt is not installed (see deploy/jetson.md, deploy/desktop-gpu.md)")
    except OSError as exc:
        pytest.skip(f"tensorrt's libraries do not load: {exc}")
    return tensorrt


@pytest.fixture(scope="module")
def memory(trt):
    from edgepipe.engines.cuda_memory import open_cuda_memory

    try:
        mem = open_cuda_memory()
    except EdgepipeError as exc:
        pytest.skip(f"no usable GPU / CUDA Python package: {exc}")
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """The shipped ED when it is there; a small ED-shaped conv net otherwise."""
    from edgepipe.engines import resolve_model

    try:
        return resolve_model("ours")
    except EdgepipeError:
        try:
            from test_tensorrt_build import export_tiny_net
        except ImportError:  # tests/engines made a package
            from .test_tensorrt_build import export_tiny_net

        return export_tiny_net(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def plans(trt, memory, onnx_model, tmp_path_factory) -> dict[str, Path]:
    from edgepipe.tensorrt.build import BuildOptions, builder_for, parse_shapes

    out = tmp_path_factory.mktemp("plans")
    built = {}
    for precision in ("fp32", "fp16"):
        plan = out / f"{onnx_model.stem}-{precision}.plan"
        options = BuildOptions(precision=precision, shapes=parse_shapes(SHAPES, max_batch=4), workspace=1 << 30,
                               progress=False)
        builder_for(trt).build(onnx_model, plan, options)
        built[precision] = plan
    return built


def _ort_reference(onnx_model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("size, batch", [((224, 224), 4), ((1280, 720), 1)])
def test_plan_matches_onnxruntime_on_real_images(plans, onnx_model, small_val_folder, precision, size, batch):
    from edgepipe.engines.tensorrt_engine import TensorRTEngine
    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    x = next(iter(CalibrationBatches(small_val_folder, size, batch_size=batch, max_images=None)))
    ref = _ort_reference(onnx_model, x)
    engine = TensorRTEngine(plans[precision])
    try:
        got = engine.infer(x=x)
    finally:
        engine.close()
    assert got.shape == ref.shape
    assert _rel_err(got, ref) < TOLERANCE[precision]


def test_sidecar_records_the_build(trt, memory, plans, onnx_model):
    from edgepipe.core.files import sha256_file
    from edgepipe.engines.plan_sidecar import read_sidecar

    sc = read_sidecar(plans["fp16"])
    gpu = memory.gpu_info()
    assert sc.precision == "fp16" and sc.tensorrt_version == trt.__version__
    assert (sc.gpu_name, sc.compute_capability) == (gpu.name, gpu.compute_capability)
    assert sc.onnx_sha256 == sha256_file(onnx_model)
    assert sc.shapes == {"min": [1, 3, 32, 32], "opt": [1, 3, 224, 224], "max": [4, 3, 720, 1280]}


def test_engine_built_on_one_thread_runs_on_another(plans, small_val_folder):
    """The capture loop loads the engine on the main thread and runs it on its worker thread."""
    from edgepipe.engines import load_engine
    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    frames = np.stack(list(CalibrationBatches(small_val_folder, (320, 240), 1, 3).frames()))
    engine = load_engine(str(plans["fp32"]))
    try:
        here = engine.run(frames[:1])
        there: dict = {}
        worker = threading.Thread(target=lambda: there.update(y=engine.run(frames[:1])))
        worker.start()
        worker.join(60)
        assert here.dtype == np.uint8 and here.shape == frames[:1].shape
        np.testing.assert_array_equal(there["y"], here)
        # shape changes reuse or regrow the buffers; results stay per-frame correct
        both = engine.run(frames[:2])
        np.testing.assert_array_equal(both[:1], here)
        with pytest.raises(EdgepipeError, match="outside what"):
            engine.run(np.zeros((1, 1080, 1920, 3), np.uint8))
    finally:
        engine.close()


def test_plan_from_another_tensorrt_is_refused_in_one_line(plans, tmp_path):
    from edgepipe.engines.tensorrt_engine import TensorRTEngine

    plan = tmp_path / "old.plan"
    plan.write_bytes(plans["fp16"].read_bytes())
    meta = json.loads(Path(str(plans["fp16"]) + ".json").read_text())
    meta["tensorrt_version"] = "9.0.0.1"
    (tmp_path / "old.plan.json").write_text(json.dumps(meta))
    with pytest.raises(EdgepipeError, match="rebuild it on this machine") as exc:
        TensorRTEngine(plan)
    assert "\n" not in str(exc.value)


def test_cuda_memory_round_trip_on_every_backend(trt):
    from edgepipe.engines.cuda_memory import available_backends, open_cuda_memory

    for name in available_backends():
        mem = open_cuda_memory(name)
        try:
            _, host = mem.pinned_array((1000,), np.float32)
            _, back = mem.pinned_array((1000,), np.float32)
            dev = mem.device_alloc(host.nbytes)
            stream = mem.create_stream()
            host[:] = np.arange(1000, dtype=np.float32)

            def copy():
                mem.copy_htod_async(dev, host, stream)
                mem.copy_dtoh_async(back, dev, stream)
                stream.synchronize()

            worker = threading.Thread(target=copy)  # another thread, as in the capture loop
            worker.start()
            worker.join(30)
            np.testing.assert_array_equal(back, host)
        finally:
            mem.close()


def test_int8_calibration_cache_is_written_then_reused(trt, memory, onnx_model, small_val_folder, tmp_path, caplog):
    from edgepipe.engines.tensorrt_engine import tensorrt_major
    from edgepipe.tensorrt.build import BuildOptions, Int8Options, builder_for, parse_shapes

    if tensorrt_major(trt) != 10:
        pytest.skip("calibration caches are TensorRT 10 only (11 builds INT8 from Q/DQ models)")
    cache = tmp_path / "m.calib"

    def build(plan):
        options = BuildOptions(precision="int8", shapes=parse_shapes(SHAPES), progress=False,
                               int8=Int8Options(data=small_val_folder, cache=cache, size=(224, 224), batch_size=4))
        return builder_for(trt).build(onnx_model, plan, options, memory=memory)

    first = build(tmp_path / "a.plan")
    assert cache.is_file() and cache.stat().st_size > 0 and not first.calibration["reused_cache"]
    with caplog.at_level(logging.INFO):
        second = build(tmp_path / "b.plan")
    assert second.calibration["reused_cache"] and "reusing calibration cache" in caplog.text


def test_capture_loop_runs_with_the_plan(plans, small_val_folder):
    from edgepipe.edge.capture import CaptureLoop, CaptureSettings
    from edgepipe.engines.plan_sidecar import read_sidecar
    from edgepipe.transport.protocol import parse_message
    from edgepipe.transport.sockets import Subscriber

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=endpoint, engine=str(plans["fp16"]),
                               size=(224, 224), crop=True, frames=6, wait_subscriber_s=5.0)
    loop = CaptureLoop(settings)
    sub = Subscriber(endpoint)
    try:
        stats = loop.run()
        headers = []
        while (msg := sub.recv(timeout_ms=2000)) is not None and len(headers) < 6:
            headers.append(parse_message(msg)[0])
    finally:
        sub.close()
        loop.close()
    assert headers, "no frame reached the subscriber"
    assert {h.model_id for h in headers} == {read_sidecar(plans["fp16"]).model_id}
    assert stats.as_dict()
