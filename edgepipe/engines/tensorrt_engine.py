"""Pre-transform on TensorRT: runs a `.plan` built by `edgepipe build-engine` behind the common Engine
interface (uint8 NHWC RGB in, same out).

Runtime API (the same in TensorRT 10.x and 11.x): `Runtime.deserialize_cuda_engine`, the name-based
tensor API (`num_io_tensors`, `get_tensor_name/mode/dtype`, `get_tensor_profile_shape`) and, per shape,
`set_input_shape` + `set_tensor_address` + `execute_async_v3(stream)`.

Memory: one stream; one pinned host + one device buffer per tensor. They are sized for the profile's
opt shape and regrown only when a frame needs more (a camera's frames all have one size, so after the
first frame nothing is allocated per frame; preprocessing writes straight into the pinned buffer).
All CUDA work goes through `edgepipe.engines.cuda_memory`, whose `activate()` makes this safe to build on
one thread and run on another (the capture loop does exactly that).
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.base import from_model_output, to_model_input
from edgepipe.engines.registry import EngineKind, register_engine

log = logging.getLogger(__name__)

# The TensorRT module, its release and a logger: what the runtime engine needs, and the offline builder
# (edgepipe.tensorrt.build) reuses.

SUPPORTED_MAJORS = (10, 11)
TRT_MISSING = ("TensorRT is not installed (no 'tensorrt' Python module): {what} needs it on a machine with an "
               "NVIDIA GPU; on a Jetson: sudo apt install python3-libnvinfer, on a desktop: pip install tensorrt "
               "(see deploy/jetson.md, deploy/desktop-gpu.md)")


def import_tensorrt(what: str = "this command") -> ModuleType:
    """The tensorrt module, or one line saying it is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EdgepipeError(TRT_MISSING.format(what=what)) from None
    except OSError as exc:  # the bindings are there but libnvinfer is not (half-installed TensorRT)
        raise EdgepipeError(f"TensorRT's Python bindings are installed but its libraries do not load: {exc}") from None
    return trt


def tensorrt_major(trt: ModuleType) -> int:
    version = str(getattr(trt, "__version__", ""))
    match = re.match(r"(\d+)\.", version)
    if not match:
        raise EdgepipeError(f"cannot tell the TensorRT version from tensorrt.__version__ = {version!r}")
    major = int(match.group(1))
    if major not in SUPPORTED_MAJORS:
        raise EdgepipeError(
            f"TensorRT {version} is not supported: edgepipe builds with TensorRT 10.x (JetPack 6, desktops) or 11.x"
        )
    return major


def make_logger(trt: ModuleType, errors: list[str] | None = None):
    """A TensorRT logger that forwards to Python logging (TensorRT INFO is chatty: it goes to DEBUG)
    and keeps the error messages, so a failed build can say why in one line."""
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.ERROR, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
              sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG}
    trt_log = logging.getLogger("edgepipe.tensorrt")

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR and errors is not None:
                errors.append(msg)
            trt_log.log(level, "%s", msg)

    return _Logger()


class TensorRTEngine:
    def __init__(self, path: str | Path, memory=None, check_sidecar: bool = True):
        from edgepipe.core.files import sha256_file
        from edgepipe.engines.cuda_memory import open_cuda_memory
        from edgepipe.engines.plan_sidecar import check_compatible, read_sidecar, rebuild_hint

        path = Path(path)
        if not path.is_file():
            raise EdgepipeError(f"plan file not found: {path}")
        trt = import_tensorrt(f"running {path.name}")
        tensorrt_major(trt)  # one line for an unsupported release
        self.path = path
        self.sidecar = read_sidecar(path)
        self._own_memory = memory is None
        self._mem = memory or open_cuda_memory()
        self._lock = threading.Lock()  # one inference at a time on the one stream and buffers
        self._closed = False
        try:
            gpu = self._mem.gpu_info()
            if self.sidecar is None:
                log.warning("%s has no sidecar (%s.json): TensorRT version and GPU are not checked before loading",
                            path, path.name)
                self.model_id = f"{path.stem}-{sha256_file(path)[:8]}-trt"
            else:
                if check_sidecar:
                    check_compatible(path, self.sidecar, trt.__version__, gpu.name, gpu.compute_capability)
                self.model_id = self.sidecar.model_id
            self._errors: list[str] = []
            with self._mem.activate():
                self._logger = make_logger(trt, self._errors)  # must outlive the runtime and engine
                self._runtime = trt.Runtime(self._logger)
                self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
                if self._engine is None:
                    hint = rebuild_hint(path, self.sidecar) if self.sidecar else "rebuild it with edgepipe build-engine"
                    raise EdgepipeError(f"TensorRT {trt.__version__} could not load {path.name} on {gpu.name} "
                                        f"(built by another TensorRT version or for another GPU?): {hint}")
                self._bind_tensors(trt)
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise EdgepipeError(f"TensorRT could not create an execution context for {path.name} "
                                        f"(out of GPU memory?)")
                self._stream = self._mem.create_stream()
            self._host_in = self._host_out = self._dev_in = self._dev_out = None
            self._capacity = (0, 0)  # elements of input, output the buffers hold
            self._shape: tuple[int, ...] | None = None
            with self._mem.activate():
                self._ensure_capacity(self.profile[1])  # the opt shape: the usual frame size, allocated up front
        except BaseException:
            self.close()
            raise
        log.info("TensorRT %s engine %s ready (%s, profile %s)", trt.__version__, path.name,
                 self.sidecar.precision if self.sidecar else "unknown precision",
                 " : ".join("x".join(map(str, s)) for s in self.profile))

    def _bind_tensors(self, trt) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EdgepipeError(f"{self.path.name}: expected one input and one output tensor, "
                                f"got {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        for name, dtype in ((self.input_name, self._in_dtype), (self.output_name, self._out_dtype)):
            if dtype not in (np.float32, np.float16):
                raise EdgepipeError(f"{self.path.name}: tensor {name} is {dtype}; expected float32 or float16")
        # (min, opt, max) for profile 0, the only one build-engine makes
        self.profile = tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(self.input_name, 0))

    # --- buffers ------------------------------------------------------------------------------

    def _ensure_capacity(self, in_shape: tuple[int, ...]) -> None:
        """Set the input shape; (re)allocate buffers only when this shape needs more than they hold."""
        ctx = self._context
        if not ctx.set_input_shape(self.input_name, in_shape):
            raise EdgepipeError(f"{self.path.name} does not accept input shape {in_shape}")
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self.output_name))
        if min(out_shape, default=0) < 0:
            raise EdgepipeError(f"{self.path.name}: output shape {out_shape} is unresolved for input {in_shape}")
        n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
        if n_in > self._capacity[0] or n_out > self._capacity[1]:
            self._free_buffers()
            n_in, n_out = max(n_in, self._capacity[0]), max(n_out, self._capacity[1])
            log.debug("allocating TensorRT buffers for %d / %d elements", n_in, n_out)
            self._host_in_buf, self._host_in = self._mem.pinned_array((n_in,), self._in_dtype)
            self._host_out_buf, self._host_out = self._mem.pinned_array((n_out,), self._out_dtype)
            self._dev_in = self._mem.device_alloc(self._host_in.nbytes)
            self._dev_out = self._mem.device_alloc(self._host_out.nbytes)
            self._capacity = (n_in, n_out)
            ctx.set_tensor_address(self.input_name, self._dev_in.ptr)
            ctx.set_tensor_address(self.output_name, self._dev_out.ptr)
        self._shape, self._out_shape = tuple(in_shape), out_shape

    def _free_buffers(self) -> None:
        for name in ("_dev_in", "_dev_out", "_host_in_buf", "_host_out_buf"):
            buf = getattr(self, name, None)
            if buf is not None:
                self._mem.free(buf)
                setattr(self, name, None)
        self._host_in = self._host_out = None
        self._capacity = (0, 0)

    # --- inference ----------------------------------------------------------------------------

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise EdgepipeError(
                f"input {shape[0]}x{shape[3]}x{shape[2]} (NxWxH) is outside what {self.path.name} was built for "
                f"({lo[0]}..{hi[0]} x {lo[3]}x{lo[2]}..{hi[3]}x{hi[2]}): rebuild it with a wider --shapes/--max-batch")

    def infer(self, x: np.ndarray | None = None, frames: np.ndarray | None = None) -> np.ndarray:
        """float NCHW in -> float32 NCHW out (a copy). Give `x` (model input) or uint8 NHWC `frames`,
        which are converted straight into the pinned buffer."""
        if (x is None) == (frames is None):
            raise ValueError("give exactly one of x or frames")
        if self._closed:
            raise EdgepipeError("the TensorRT engine is closed")
        shape = tuple(x.shape) if x is not None else (frames.shape[0], 3, frames.shape[1], frames.shape[2])
        if frames is not None and (frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3):
            raise ValueError(f"expected uint8 (N, H, W, 3) RGB frames, got {frames.dtype} {frames.shape}")
        self._check_shape(shape)
        mem = self._mem
        with self._lock, mem.activate():
            if shape != self._shape:
                self._ensure_capacity(shape)
            n_in, n_out = int(np.prod(shape)), int(np.prod(self._out_shape))
            host_in = self._host_in[:n_in].reshape(shape)  # a view: no allocation
            if frames is not None and self._in_dtype == np.float32:
                to_model_input(frames, out=host_in)
            else:
                np.copyto(host_in, to_model_input(frames) if frames is not None else x, casting="same_kind")
            host_out = self._host_out[:n_out]
            mem.copy_htod_async(self._dev_in, host_in, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise EdgepipeError(f"TensorRT inference failed: {' | '.join(self._errors[-2:]) or 'see the log'}")
            mem.copy_dtoh_async(host_out, self._dev_out, self._stream)
            self._stream.synchronize()
            return host_out.reshape(self._out_shape).astype(np.float32, copy=True)

    def run(self, frames: np.ndarray) -> np.ndarray:
        y = self.infer(frames=frames)
        if y.shape[0] != frames.shape[0] or y.shape[2:] != frames.shape[1:3]:
            raise EdgepipeError(f"{self.path.name} returned {y.shape} for frames {frames.shape}: not a pre-transform")
        return from_model_output(y)

    def close(self) -> None:
        mem = getattr(self, "_mem", None)
        self._closed = True
        if mem is None:  # closed already, or __init__ failed before any CUDA
            return
        with getattr(self, "_lock", threading.Lock()):
            try:
                with mem.activate():
                    stream = getattr(self, "_stream", None)
                    if stream is not None:
                        stream.synchronize()
                    self._free_buffers()
                    if stream is not None:
                        mem.free(stream)
                        self._stream = None
                    # TensorRT objects go in reverse order of creation, while the context is current.
                    for name in ("_context", "_engine", "_runtime"):
                        if hasattr(self, name):
                            setattr(self, name, None)
            except Exception as exc:  # teardown: report, never mask the error that led here
                log.warning("closing the TensorRT engine: %s", exc)
            finally:
                if self._own_memory:
                    mem.close()
                self._mem = None

    def __del__(self) -> None:  # best effort; the capture loop calls close()
        try:
            if getattr(self, "_mem", None) is not None:
                self.close()
        except Exception:
            pass


# Importing this module needs no TensorRT: the engine imports it when a plan is loaded.
def _computes_on_cpu() -> bool:
    return False  # a plan runs on the GPU; the CPU only copies frames in and out


register_engine(EngineKind("tensorrt", lambda path, threads: TensorRTEngine(path), suffixes=(".plan", ".engine"),
                           computes_on_cpu=_computes_on_cpu))
