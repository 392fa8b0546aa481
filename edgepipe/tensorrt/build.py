"""ONNX -> TensorRT plan, for TensorRT 10.x and 11.x (dispatched on `tensorrt.__version__`).

Both: `Builder.create_network(0)`, `OnnxParser.parse_from_file`, one optimization profile for the
dynamic N/H/W input, `set_memory_pool_limit(WORKSPACE, ...)`, `build_serialized_network`, and an
`IProgressMonitor` that keeps a status line going during the (minutes-long, on a Jetson) build.

Precision:
                 TensorRT 10.x                              TensorRT 11.x (always strongly typed)
    fp32    TF32 cleared (exact fp32)                  TF32 cleared, ONNX as is
    fp16    BuilderFlag.FP16                           ONNX converted to fp16 first (inputs/outputs kept fp32)
    int8    BuilderFlag.INT8 (+FP16) and an            a Q/DQ ONNX (explicit quantization) made with
            IInt8EntropyCalibrator2 with a cache       ModelOpt; TensorRT only compiles it
A Q/DQ ONNX given to TensorRT 10 is built as a strongly typed network (no calibrator, no flags).
"""
from __future__ import annotations

import logging
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from edgepipe import __version__
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_write
from edgepipe.engines.onnx_engine import onnx_weights_id
from edgepipe.engines.tensorrt_engine import import_tensorrt, make_logger, tensorrt_major
from edgepipe.tensorrt.settings import DEFAULT_SHAPES, BuildSettings, default_cache_path

if TYPE_CHECKING:
    from edgepipe.engines.plan_sidecar import PlanSidecar

log = logging.getLogger(__name__)


# --- `edgepipe build-engine` ---------------------------------------------------------------------


def build_engine(settings: BuildSettings) -> str:
    """Build the plan and its sidecar as `settings` ask; returns what to tell the user (two lines).

    The options are parsed first, then the model file is checked, then TensorRT is looked for: a typo is
    named before a missing file, and a missing file before a missing install."""
    from edgepipe.engines import resolve_model

    options = settings.options()
    onnx = resolve_model(settings.model)
    if not onnx.is_file():
        raise EdgepipeError(f"ONNX model not found: {onnx}")
    if onnx.suffix.lower() != ".onnx":
        raise EdgepipeError(f"build-engine takes an ONNX model, got {onnx.name}")
    trt = import_tensorrt("build-engine")
    options.int8.cache = options.int8.cache or default_cache_path(onnx)
    output = settings.output or Path.cwd() / f"{onnx.stem}-{settings.precision}.plan"
    sidecar = builder_for(trt).build(onnx, output, options)
    return (f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, {sidecar.precision}, TensorRT "
            f"{sidecar.tensorrt_version}, {sidecar.gpu_name}) and {output.name}.json\n"
            f"run it: edgepipe capture --engine {output} ...")


# --- version dispatch (the TensorRT import and release check live in edgepipe.engines.tensorrt_engine) ----


def builder_class(trt: ModuleType) -> "type[PlanBuilder]":
    """The builder for the installed TensorRT (10.x: flags and calibrators; 11.x: strongly typed only)."""
    return {10: TensorRT10Builder, 11: TensorRT11Builder}[tensorrt_major(trt)]


def builder_for(trt: ModuleType) -> "PlanBuilder":
    return builder_class(trt)(trt)


# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile for the NCHW input."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            shape = getattr(self, name)
            if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
                raise EdgepipeError(f"{name} shape must be N x 3 x H x W with positive sizes, got {shape}")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise EdgepipeError(f"shapes must satisfy min <= opt <= max in every dimension: "
                                f"{_fmt(self.min)} : {_fmt(self.opt)} : {_fmt(self.max)}")

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max))

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def describe(self) -> str:
        return " : ".join(_fmt(s) for s in (self.min, self.opt, self.max))


def _fmt(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720), with the capture loop's own parser (any size of at least 1x1)."""
    from edgepipe.media.sources import parse_size as parse_frame_size

    size = parse_frame_size(text, min_side=1)
    if size is None:
        raise EdgepipeError("size must look like WIDTHxHEIGHT, e.g. 1280x720, got an empty string")
    return size


def parse_shapes(text: str, max_batch: int = 1) -> ShapeProfile:
    """'MIN:OPT:MAX', each WIDTHxHEIGHT (batch 1..max_batch, opt batch 1) or a full NCHW 'Nx3xHxW'."""
    parts = text.split(":")
    if len(parts) != 3:
        raise EdgepipeError(f"--shapes must be MIN:OPT:MAX (e.g. {DEFAULT_SHAPES}), got {text!r}")
    if max_batch < 1:
        raise EdgepipeError(f"--max-batch must be at least 1, got {max_batch}")
    shapes = []
    for i, part in enumerate(parts):
        dims = part.lower().split("x")
        if len(dims) == 4:
            try:
                shapes.append(tuple(int(d) for d in dims))
            except ValueError:
                raise EdgepipeError(f"bad NCHW shape {part!r} in --shapes") from None
        else:
            w, h = parse_size(part)
            shapes.append((max_batch if i == 2 else 1, 3, h, w))
    return ShapeProfile(*shapes)


def parse_workspace(text: str | int) -> int:
    """'1G', '512M', '1GiB', '1073741824' -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise EdgepipeError(f"workspace must look like 512M or 2G, got {text!r}")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " ")
    if value < 1 << 20:
        raise EdgepipeError(f"workspace {text} is too small (at least 1M)")
    return int(value)


@dataclass
class Int8Options:
    """Where INT8 scales come from: a calibration cache (TensorRT 10), real images, or both."""

    data: Path | None = None  # image folder (calibrate on it unless the cache is valid)
    cache: Path | None = None  # TensorRT 10 calibration cache (read, and written after calibrating)
    size: tuple[int, int] = (224, 224)  # calibration WIDTHxHEIGHT
    batch_size: int = 8
    max_images: int | None = 512
    qdq_output: Path | None = None  # TensorRT 11: where the Q/DQ ONNX goes (a temp file when None)


@dataclass
class BuildOptions:
    precision: str = "fp16"
    shapes: ShapeProfile = field(default_factory=lambda: parse_shapes(DEFAULT_SHAPES))
    workspace: int = 1 << 30
    int8: Int8Options = field(default_factory=Int8Options)
    progress: bool = True


# --- helpers shared by both builders -------------------------------------------------------------


def make_progress_monitor(trt: ModuleType, stream=None):
    """An IProgressMonitor drawing one status line (phase > sub-phase step/total, elapsed) on a terminal,
    or logging top-level phases otherwise. TensorRT calls it from several threads: all under one lock."""
    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, list] = {}  # name -> [parent, steps, done], in start order
            self._t0 = time.monotonic()
            self._last = 0.0
            self._width = 0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._phases[phase_name] = [parent_phase, num_steps, 0]
                if parent_phase is None and not tty:
                    log.info("TensorRT build: %s (%d step(s)) at %.0f s", phase_name, num_steps,
                             time.monotonic() - self._t0)
                self._draw(force=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                if phase_name in self._phases:
                    self._phases[phase_name][2] = step + 1
                self._draw()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._phases.pop(phase_name, None)
                self._draw(force=True)

        def _draw(self, force: bool = False) -> None:
            if not tty:
                return
            now = time.monotonic()
            if not force and now - self._last < 0.1:
                return
            self._last = now
            parts = [f"{name} {done}/{steps}" for name, (_, steps, done) in self._phases.items()]
            line = f"building: {' > '.join(parts) or 'finishing'} [{now - self._t0:.0f} s]"[:160]
            stream.write("\r" + line.ljust(self._width))
            stream.flush()
            self._width = len(line)

        def close(self) -> None:
            if tty and self._width:
                stream.write("\r" + " " * self._width + "\r")
                stream.flush()

    return _Progress()


def detect_gpu(memory=None):
    """(name, compute capability) of device 0, from the CUDA Python layer, PyTorch or nvidia-smi; None if unknown."""
    from edgepipe.engines.cuda_memory import GpuInfo, open_cuda_memory

    if memory is not None:
        return memory.gpu_info()
    try:
        mem = open_cuda_memory()
        try:
            return mem.gpu_info()
        finally:
            mem.close()
    except EdgepipeError as exc:
        log.debug("GPU identity via the CUDA Python layer failed: %s", exc)
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}")
    except Exception as exc:  # a CPU-only or broken torch must not stop a build
        log.debug("GPU identity via torch failed: %s", exc)
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            name, cc = [v.strip() for v in out.splitlines()[0].split(",")[:2]]
            return GpuInfo(name, cc)
        except Exception as exc:
            log.debug("GPU identity via nvidia-smi failed: %s", exc)
    return None


def convert_to_fp16(onnx_path: Path, output: Path) -> Path:
    """A float16 copy of the model with float32 inputs and outputs (TensorRT 11 takes precision from the
    ONNX types). Uses ONNX Runtime's converter, or onnxconverter-common's (same function)."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError:
            raise EdgepipeError("fp16 with TensorRT 11 needs an ONNX float16 converter: "
                                "pip install onnxruntime (or onnxconverter-common)") from None
    model = onnx.load(str(onnx_path))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(output))
    return output


# --- builders -----------------------------------------------------------------------------------


class PlanBuilder:
    """Shared flow; subclasses decide the network flags and how precision is expressed."""

    major: int = 0

    def __init__(self, trt: ModuleType):
        self.trt = trt
        self.errors: list[str] = []
        self.logger = make_logger(trt, self.errors)

    # subclass hooks
    def network_flags(self, qdq: bool) -> int:
        return 0

    def prepare_onnx(self, onnx_path: Path, options: BuildOptions, workdir: Path, qdq: bool) -> Path:
        return onnx_path

    def configure(self, builder, network, config, options: BuildOptions, qdq: bool, ctx: dict) -> None:
        pass

    # the flow
    def build(self, onnx_path: str | Path, plan_path: str | Path, options: BuildOptions,
              memory=None) -> "PlanSidecar":
        from edgepipe.core.files import sha256_file
        from edgepipe.engines.plan_sidecar import PlanSidecar, model_card_fields, write_sidecar
        from edgepipe.tensorrt.calibration.qdq import is_qdq_model, source_of

        trt = self.trt
        onnx_path, plan_path = Path(onnx_path), Path(plan_path)
        if not onnx_path.is_file():
            raise EdgepipeError(f"ONNX model not found: {onnx_path}")
        if options.precision not in ("fp32", "fp16", "int8"):
            raise EdgepipeError(f"precision must be fp32, fp16 or int8, got {options.precision!r}")
        qdq = is_qdq_model(onnx_path)
        if qdq and options.precision != "int8":
            log.warning("%s is a Q/DQ (INT8) model: building it as int8", onnx_path.name)
            options.precision = "int8"
        gpu = detect_gpu(memory)
        if gpu is None:
            log.warning("could not identify the GPU (install cuda-python or pycuda): the sidecar will not record it")
        onnx_sha = sha256_file(onnx_path)
        source_name, source_sha = (source_of(onnx_path) if qdq else None) or (onnx_path.name, onnx_sha)
        ctx: dict[str, Any] = {"onnx_sha256": source_sha, "onnx_path": onnx_path, "plan_path": plan_path,
                               "memory": memory}

        with tempfile.TemporaryDirectory(prefix="edgepipe-trt-") as tmp:
            network_onnx = self.prepare_onnx(onnx_path, options, Path(tmp), qdq)
            ctx["qdq"] = qdq or network_onnx != onnx_path and options.precision == "int8"
            builder = trt.Builder(self.logger)
            network = builder.create_network(self.network_flags(ctx["qdq"]))
            parser = trt.OnnxParser(network, self.logger)
            if not parser.parse_from_file(str(network_onnx)):
                msgs = [str(parser.get_error(i)) for i in range(parser.num_errors)] or self.errors[-1:]
                raise EdgepipeError(f"TensorRT could not parse {onnx_path.name}: {_one_line(msgs)}")
            if network.num_inputs != 1 or network.num_outputs != 1:
                raise EdgepipeError(f"{onnx_path.name}: expected one input and one output, "
                                    f"got {network.num_inputs} and {network.num_outputs}")
            inp, out = network.get_input(0), network.get_output(0)
            shapes = self._fit_profile(tuple(inp.shape), options.shapes, onnx_path.name)

            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace)
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, shapes.min, shapes.opt, shapes.max)
            config.add_optimization_profile(profile)
            ctx["profile"] = profile
            self.configure(builder, network, config, options, ctx["qdq"], ctx)

            monitor = make_progress_monitor(trt) if options.progress else None
            if monitor is not None:
                config.progress_monitor = monitor
            log.info("building %s plan from %s (TensorRT %s, shapes %s)", options.precision, onnx_path.name,
                     trt.__version__, shapes.describe())
            t0 = time.monotonic()
            try:
                serialized = builder.build_serialized_network(network, config)
            finally:
                if monitor is not None:
                    monitor.close()
                feeder = ctx.get("feeder")
                if feeder is not None:
                    feeder.close()
                if ctx.get("own_memory") is not None:
                    ctx["own_memory"].close()
            if serialized is None:
                raise EdgepipeError(f"TensorRT could not build the engine: {_one_line(self.errors) or 'see the log (-vv)'}")
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(plan_path, serialized)
            log.info("built %s in %.0f s", plan_path, time.monotonic() - t0)

        sidecar = PlanSidecar(
            onnx_name=source_name, onnx_sha256=source_sha, precision=options.precision,
            tensorrt_version=trt.__version__,
            gpu_name=gpu.name if gpu else "unknown", compute_capability=gpu.compute_capability if gpu else "unknown",
            input_name=inp.name, output_name=out.name, shapes=shapes.as_dict(), edgepipe_version=__version__,
            model_card=model_card_fields(onnx_path), workspace_bytes=options.workspace,
            calibration=ctx.get("calibration"), weights_id=onnx_weights_id(Path(onnx_path)),
        )
        write_sidecar(plan_path, sidecar)
        return sidecar

    @staticmethod
    def _fit_profile(dims: tuple[int, ...], shapes: ShapeProfile, name: str) -> ShapeProfile:
        """Check the requested profile against the model's input dims (-1 = dynamic)."""
        if len(dims) != 4 or dims[1] not in (3, -1):
            raise EdgepipeError(f"{name}: expected an N x 3 x H x W input, got {dims}")
        fixed = [(i, d) for i, d in enumerate(dims) if d >= 0]
        for i, d in fixed:
            if any(s[i] != d for s in (shapes.min, shapes.opt, shapes.max)):
                axis = "NCHW"[i]
                raise EdgepipeError(f"{name} has a fixed {axis} = {d}; --shapes asks for "
                                    f"{shapes.describe()} (export the model with dynamic axes)")
        return shapes


def _one_line(messages: list[str]) -> str:
    text = " | ".join(m.strip().splitlines()[0] for m in messages if m and m.strip())
    return text[:400]


class TensorRT10Builder(PlanBuilder):
    major = 10

    def network_flags(self, qdq: bool) -> int:
        # 0 = explicit batch (the only mode in 10.x; the EXPLICIT_BATCH flag is deprecated and ignored).
        # Q/DQ models build strongly typed: their types say everything and no precision flag applies.
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if qdq else 0

    def configure(self, builder, network, config, options: BuildOptions, qdq: bool, ctx: dict) -> None:
        trt = self.trt
        if qdq:
            ctx["calibration"] = {"method": "explicit Q/DQ in the ONNX model"}
            return
        if options.precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default; fp32 here means fp32
        elif options.precision == "fp16":
            if not builder.platform_has_fast_fp16:
                log.warning("this GPU has no fast FP16: the fp16 plan may not be faster than fp32")
            config.set_flag(trt.BuilderFlag.FP16)
        elif options.precision == "int8":
            if not builder.platform_has_fast_int8:
                log.warning("this GPU has no fast INT8: the int8 plan may not be faster")
            # FP16 too: layers without an INT8 kernel fall back to FP16 rather than FP32.
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)
            self._attach_calibrator(builder, network, config, options, ctx)

    def _attach_calibrator(self, builder, network, config, options: BuildOptions, ctx: dict) -> None:
        from edgepipe.engines.cuda_memory import open_cuda_memory
        from edgepipe.tensorrt.calibration.data import CalibrationBatches
        from edgepipe.tensorrt.calibration.trt10 import BatchFeeder, CalibrationCache, make_entropy_calibrator

        o = options.int8
        w, h = o.size
        shape = (o.batch_size, 3, h, w)
        cache_path = o.cache or ctx["plan_path"].with_suffix(".calib")  # the CLI passes ./MODEL.calib
        cache = CalibrationCache(cache_path, ctx["onnx_sha256"], shape)
        has_cache = cache.path.is_file() and cache.read() is not None  # the calibrator reads it again
        if not has_cache and o.data is None:
            raise EdgepipeError(f"int8 needs calibration images (--calib-data DIR) or a calibration cache for this "
                                f"model (none valid at {cache_path}; make one with edgepipe calibrate)")
        batches = None
        if not has_cache:
            batches = CalibrationBatches(o.data, o.size, o.batch_size, o.max_images)
            cache.info = batches.describe()
            log.info("calibrating on %d image(s) from %s at %dx%d", len(batches.paths), o.data, w, h)
        memory = ctx.get("memory")
        if memory is None and not has_cache:
            memory = ctx["own_memory"] = open_cuda_memory()
        feeder = BatchFeeder(batches, memory, shape)
        calibrator = make_entropy_calibrator(self.trt, feeder, cache)
        ctx["feeder"], ctx["calibrator"] = feeder, calibrator  # keep alive for the whole build
        config.int8_calibrator = calibrator
        # Dynamic shapes: calibration runs at one fixed shape, given by its own profile.
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(network.get_input(0).name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
        ctx["calibration"] = {"method": "TensorRT 10 IInt8EntropyCalibrator2", "cache": str(cache_path),
                              "reused_cache": has_cache, **(batches.describe() if batches else {})}


class TensorRT11Builder(PlanBuilder):
    major = 11

    def network_flags(self, qdq: bool) -> int:
        return 0  # every TensorRT 11 network is strongly typed; the flag is ignored

    def prepare_onnx(self, onnx_path: Path, options: BuildOptions, workdir: Path, qdq: bool) -> Path:
        if options.precision == "fp16" and not qdq:
            log.info("TensorRT 11 is strongly typed: converting %s to fp16 (inputs/outputs stay fp32)", onnx_path.name)
            return convert_to_fp16(onnx_path, workdir / f"{onnx_path.stem}.fp16.onnx")
        if options.precision == "int8" and not qdq:
            o = options.int8
            if o.data is None:
                raise EdgepipeError(
                    "TensorRT 11 builds INT8 from a Q/DQ ONNX model: pass --calib-data DIR, or make one with "
                    f"edgepipe calibrate {onnx_path.name} --data DIR and build from it")
            from edgepipe.tensorrt.calibration.data import CalibrationBatches
            from edgepipe.tensorrt.calibration.qdq import quantize_qdq

            batches = CalibrationBatches(o.data, o.size, o.batch_size, o.max_images)
            out = o.qdq_output or workdir / f"{onnx_path.stem}.int8.onnx"
            quantize_qdq(onnx_path, batches, out)
            self._calibration = {"method": "ModelOpt Q/DQ (explicit)", "qdq_onnx": str(out), **batches.describe()}
            return out
        return onnx_path

    def configure(self, builder, network, config, options: BuildOptions, qdq: bool, ctx: dict) -> None:
        if options.precision == "fp32":
            config.clear_flag(self.trt.BuilderFlag.TF32)
        if options.precision == "int8":
            ctx["calibration"] = getattr(self, "_calibration", None) or {"method": "explicit Q/DQ in the ONNX model"}


def build_plan(onnx_path: str | Path, plan_path: str | Path, options: BuildOptions, trt: ModuleType | None = None):
    """Build `plan_path` (+ its sidecar) from `onnx_path` with the installed TensorRT."""
    trt = trt or import_tensorrt("build-engine")
    return builder_for(trt).build(onnx_path, plan_path, options)
