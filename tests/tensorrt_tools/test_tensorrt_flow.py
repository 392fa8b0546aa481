"""The build and runtime code paths, run end to end against a *simulated* `tensorrt` module.

What this proves: our Python around TensorRT (version dispatch, which flags each major gets, the TRT 11
fp16 conversion, the calibrator loop and cache reuse, sidecars, buffer handling across shape changes and
threads, no per-frame allocation) runs and does what we intend. What it does not prove: anything about
TensorRT itself. The simulated module only has names confirmed in the real bindings (TensorRT 10.16.1 /
11.4.0, see docs/engines.md); its "engine" runs the ONNX model with ONNX Runtime on host memory. The real
thing is tested in test_tensorrt_gpu.py.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.cuda_memory import CudaMemory, CudaStream, DeviceBuffer, GpuInfo, PinnedBuffer

try:
    from test_tensorrt_build import export_tiny_net
except ImportError:  # tests/engines made a package
    from .test_tensorrt_build import export_tiny_net


class HostMemory(CudaMemory):
    """'Device' buffers are host arrays at fake addresses; counts allocations."""

    backend, device = "host", 0

    def __init__(self) -> None:
        self.device_data: dict[int, np.ndarray] = {}
        self.allocs = 0
        self.freed = 0

    def gpu_info(self) -> GpuInfo:
        return GpuInfo("Simulated GPU", "8.7")

    def activate(self):
        return contextlib.nullcontext()

    def pinned(self, nbytes: int) -> PinnedBuffer:
        self.allocs += 1
        return PinnedBuffer(np.zeros(nbytes, np.uint8), nbytes)

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        self.allocs += 1
        ptr = 0x10000 * (len(self.device_data) + 1)
        self.device_data[ptr] = np.zeros(nbytes, np.uint8)
        return DeviceBuffer(ptr, nbytes)

    def create_stream(self) -> CudaStream:
        return CudaStream(42, lambda s: None)

    def copy_htod_async(self, dst, src, stream) -> None:
        assert src.flags.c_contiguous and src.nbytes <= dst.nbytes
        self.device_data[dst.ptr][: src.nbytes] = src.view(np.uint8).ravel()

    def copy_dtoh_async(self, dst, src, stream) -> None:
        dst.view(np.uint8).ravel()[:] = self.device_data[src.ptr][: dst.nbytes]

    def free(self, buf) -> None:
        self.freed += 1

    def _release(self, kind: str, handle) -> None:
        pass  # free() and close() are its own: nothing goes through the registry

    def close(self) -> None:
        pass


def fake_tensorrt(version: str, memory: HostMemory) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # what the builder asked for

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    trt.ILogger, trt.IProgressMonitor = ILogger, IProgressMonitor
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.float32 = "float32"
    trt.nptype = lambda t: {"float32": np.float32}[t]
    if major == 10:
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    else:  # TensorRT 11: strongly typed only; no FP16/INT8 flags, no calibrators
        trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")

    def dims_of(model: onnx.ModelProto) -> tuple:
        t = model.graph.input[0].type.tensor_type
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.model = flags, None

        num_inputs = property(lambda self: len(self.model.graph.input))
        num_outputs = property(lambda self: len(self.model.graph.output))

        def get_input(self, i):
            return types.SimpleNamespace(name=self.model.graph.input[i].name, shape=dims_of(self.model))

        def get_output(self, i):
            return types.SimpleNamespace(name=self.model.graph.output[i].name)

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            self.network.model = onnx.load(path)
            self.network.path = path
            return True

        def get_error(self, i):
            return "error"

    class Profile:
        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.flags, self.int8_calibrator, self.progress_monitor, self.profiles = set(), None, None, []

        def set_memory_pool_limit(self, pool, size) -> None:
            trt.calls.append(("workspace", size))

        def add_optimization_profile(self, p) -> None:
            self.profiles.append(p)

        def set_flag(self, flag) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag) -> None:
            trt.calls.append(("clear", flag))

        if major == 10:
            def set_calibration_profile(self, p) -> None:
                self.calibration_profile = p

    class Builder:
        platform_has_fast_fp16 = platform_has_fast_int8 = True

        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int = 0):
            trt.calls.append(("network_flags", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("flags", sorted(config.flags)))
            calib = config.int8_calibrator
            if calib is not None:  # what TensorRT 10 does with a calibrator
                if calib.read_calibration_cache() is None:
                    n = 0
                    while calib.get_batch(["input"]) is not None:
                        n += 1
                    trt.calls.append(("calibrated_batches", n))
                    calib.write_calibration_cache(b"simulated scales")
                else:
                    trt.calls.append(("cache_reused", True))
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 1)
                config.progress_monitor.step_complete("Building engine", 0)
                config.progress_monitor.phase_finish("Building engine")
            return network.model.SerializeToString()  # the "plan": the model as parsed

    class Context:
        def __init__(self, engine) -> None:
            self.engine, self.addr, self.shape = engine, {}, None

        def set_input_shape(self, name, shape) -> bool:
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shape if self.shape else (-1, 3, -1, -1)

        def set_tensor_address(self, name, ptr) -> None:
            self.addr[name] = ptr

        def execute_async_v3(self, stream_handle) -> bool:
            n = int(np.prod(self.shape))
            x = memory.device_data[self.addr["input"]][: n * 4].view(np.float32).reshape(self.shape)
            y = self.engine.session.run(None, {"input": x})[0]
            memory.device_data[self.addr["output"]][: y.nbytes] = y.view(np.uint8).ravel()
            return True

    class Engine:
        def __init__(self, blob: bytes) -> None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            self.names = ["input", "output"]

        num_io_tensors = 2

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.float32

        def get_tensor_profile_shape(self, name, index):
            return [(1, 3, 32, 32), (1, 3, 224, 224), (2, 3, 720, 1280)]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes):
            return Engine(blob)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return export_tiny_net(tmp_path_factory.mktemp("flow") / "tiny.onnx")


@pytest.fixture
def sim(monkeypatch, request):
    """Install a simulated tensorrt of the requested version (and no GPU probing)."""
    def install(version: str):
        mem = HostMemory()
        trt = fake_tensorrt(version, mem)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr("edgepipe.tensorrt.build.detect_gpu", lambda memory=None: mem.gpu_info())
        return trt, mem
    return install


def _build(trt, tiny, plan, precision, **int8):
    from edgepipe.tensorrt.build import BuildOptions, Int8Options, builder_for, parse_shapes

    options = BuildOptions(precision=precision, shapes=parse_shapes("32x32:224x224:1280x720", 2),
                           int8=Int8Options(**int8), progress=True)
    return builder_for(trt).build(tiny, plan, options)


@pytest.mark.parametrize("version, precision, flags, cleared", [
    ("10.16.1.11", "fp32", [], ["TF32"]),
    ("10.16.1.11", "fp16", ["FP16"], []),
    ("11.4.0.106", "fp32", [], ["TF32"]),
    ("11.4.0.106", "fp16", [], []),  # precision comes from the converted ONNX instead
])
def test_build_flags_per_major(sim, tiny, tmp_path, version, precision, flags, cleared):
    from edgepipe.engines.plan_sidecar import read_sidecar

    trt, _ = sim(version)
    sidecar = _build(trt, tiny, tmp_path / "t.plan", precision)
    assert ("network_flags", 0) in trt.calls and ("workspace", 1 << 30) in trt.calls
    assert ("flags", flags) in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "clear"] == cleared
    plan_model = onnx.load_from_string((tmp_path / "t.plan").read_bytes())
    weight_types = {i.data_type for i in plan_model.graph.initializer if len(i.dims) == 4}
    fp16_onnx = version.startswith("11") and precision == "fp16"
    assert weight_types == {onnx.TensorProto.FLOAT16 if fp16_onnx else onnx.TensorProto.FLOAT}
    assert read_sidecar(tmp_path / "t.plan") == sidecar
    assert sidecar.tensorrt_version == version and sidecar.gpu_name == "Simulated GPU"
    assert sidecar.shapes["max"] == [2, 3, 720, 1280]


def test_trt11_int8_without_data_points_to_calibrate(sim, tiny, tmp_path):
    trt, _ = sim("11.4.0.106")
    with pytest.raises(EdgepipeError, match="Q/DQ ONNX model: pass --calib-data DIR, or make one with edgepipe calibrate"):
        _build(trt, tiny, tmp_path / "t.plan", "int8")


def test_trt10_int8_calibrates_once_then_reuses_the_cache(sim, tiny, tmp_path, small_val_folder, monkeypatch):
    trt, mem = sim("10.16.1.11")
    monkeypatch.setattr("edgepipe.engines.cuda_memory.open_cuda_memory", lambda *a, **k: mem)
    cache = tmp_path / "tiny.calib"
    first = _build(trt, tiny, tmp_path / "a.plan", "int8", data=small_val_folder, cache=cache, size=(64, 64),
                   batch_size=4, max_images=None)
    assert ("flags", ["FP16", "INT8"]) in trt.calls
    assert ("calibrated_batches", 3) in trt.calls and cache.read_bytes() == b"simulated scales"
    assert first.calibration["reused_cache"] is False and first.calibration["images"] == 12
    trt.calls.clear()
    second = _build(trt, tiny, tmp_path / "b.plan", "int8", data=small_val_folder, cache=cache, size=(64, 64),
                    batch_size=4)
    assert ("cache_reused", True) in trt.calls and second.calibration["reused_cache"] is True
    # without images, the cache alone is enough; with neither, a clear line
    _build(trt, tiny, tmp_path / "c.plan", "int8", cache=cache, size=(64, 64), batch_size=4)
    with pytest.raises(EdgepipeError, match="needs calibration images"):
        _build(trt, tiny, tmp_path / "d.plan", "int8", cache=tmp_path / "none.calib")


def test_engine_runs_frames_like_onnxruntime_without_per_frame_allocation(sim, tiny, tmp_path, small_val_folder):
    from edgepipe.engines.onnx_engine import OnnxEngine
    from edgepipe.engines.tensorrt_engine import TensorRTEngine
    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    trt, mem = sim("10.16.1.11")
    sidecar = _build(trt, tiny, tmp_path / "t.plan", "fp32")
    engine = TensorRTEngine(tmp_path / "t.plan", memory=mem)
    reference = OnnxEngine(tiny, providers=["CPUExecutionProvider"])
    assert engine.model_id == sidecar.model_id == f"{reference.model_id}-trt-fp32"  # the ONNX model's id, + how
    allocs_at_start = mem.allocs  # buffers for the opt shape (224x224)

    small = np.stack(list(CalibrationBatches(small_val_folder, (224, 224), 1, 4).frames()))
    for frame in small:
        np.testing.assert_array_equal(engine.run(frame[None]), reference.run(frame[None]))
    assert mem.allocs == allocs_at_start  # same shape: nothing allocated per frame

    big = np.stack(list(CalibrationBatches(small_val_folder, (640, 360), 2, 2).frames()))
    np.testing.assert_array_equal(engine.run(big), reference.run(big))  # batch 2 and a bigger frame: regrow once
    grown = mem.allocs
    assert grown > allocs_at_start
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(y=engine.run(small[:1])))  # smaller again, other thread
    worker.start()
    worker.join(30)
    np.testing.assert_array_equal(out["y"], reference.run(small[:1]))
    assert mem.allocs == grown  # shrinking reuses the larger buffers

    with pytest.raises(EdgepipeError, match="outside what t.plan was built for"):
        engine.run(np.zeros((1, 1080, 1920, 3), np.uint8))
    engine.close()
    assert mem.freed >= 4
    with pytest.raises(EdgepipeError, match="closed"):
        engine.run(small[:1])


def test_engine_refuses_a_plan_for_another_gpu_before_loading_it(sim, tiny, tmp_path):
    import json

    from edgepipe.engines.tensorrt_engine import TensorRTEngine

    trt, mem = sim("10.16.1.11")
    _build(trt, tiny, tmp_path / "t.plan", "fp16")
    meta = json.loads((tmp_path / "t.plan.json").read_text())
    meta.update(gpu_name="Orin", compute_capability="8.7")
    (tmp_path / "t.plan.json").write_text(json.dumps(meta))
    with pytest.raises(EdgepipeError, match=r"built for GPU Orin \(sm 8.7\); this machine has Simulated GPU"):
        TensorRTEngine(tmp_path / "t.plan", memory=mem)


def test_build_engine_cli_end_to_end(sim, tiny, tmp_path):
    from click.testing import CliRunner

    from edgepipe.cli import cli

    sim("11.4.0.106")
    plan = tmp_path / "out.plan"
    result = CliRunner().invoke(cli, ["build-engine", str(tiny), "-o", str(plan), "--precision", "fp16",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert plan.is_file() and (tmp_path / "out.plan.json").is_file()
    assert "fp16, TensorRT 11.4.0.106, Simulated GPU" in result.output


def test_calibrate_cli_with_trt10_writes_a_cache_and_no_plan(sim, tiny, tmp_path, small_val_folder, monkeypatch):
    from click.testing import CliRunner

    from edgepipe.cli import cli

    trt, mem = sim("10.16.1.11")
    monkeypatch.setattr("edgepipe.engines.cuda_memory.open_cuda_memory", lambda *a, **k: mem)
    cache = tmp_path / "tiny.calib"
    result = CliRunner().invoke(cli, ["calibrate", str(tiny), "--data", str(small_val_folder), "--size", "64x64",
                                      "--batch", "4", "-o", str(cache)])
    assert result.exit_code == 0, result.output
    assert "batch 4 (cache)" in result.output and f"wrote {cache}" in result.output
    assert ("calibrated_batches", 3) in trt.calls and cache.read_bytes() == b"simulated scales"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.calib", "tiny.calib.json"]  # no plan kept
