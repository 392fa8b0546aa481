"""Pre-transform on ONNX Runtime: CPU everywhere, CUDA/TensorRT providers where installed.

On the CPU provider the engine runs an exactly equivalent, faster graph (engines/onnx_graph.py, issue 13 item 2):
pixel-shuffle upsampling as ConvTranspose, and for frames whose sides divide the ED's total stride a second graph
without the no-op crops. Each rewritten graph is checked against the file's own on a small random input when it
loads, and dropped (the file's graph runs) when it differs.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import sha256_file
from edgepipe.engines.base import from_model_output, to_model_input, weights_id
from edgepipe.engines.registry import EngineKind, EngineThreads, register_engine

log = logging.getLogger(__name__)

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = _PREFERRED[:2]
_REWRITE_TOLERANCE = 1e-4  # on [0, 1] pixels: float summation order only (a wrong rewrite is off by far more)


def onnx_weights_id(path: Path) -> str:
    """The weights id of an ONNX model (as its source checkpoint's); the file hash for a graph without weights."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
        tensors = [(t.name, numpy_helper.to_array(t)) for t in graph.initializer]
    except Exception:  # noqa: BLE001 - external data or an odd graph: fall back to the file's bytes
        tensors = []
    return weights_id(tensors) if tensors else sha256_file(path)[:8]


class OnnxEngine:
    def __init__(self, path: str | Path, providers: list[str] | None = None,
                 threads: int | EngineThreads | None = None, rewrite: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgepipeError("onnxruntime is not installed: pip install onnxruntime") from None
        path = Path(path)
        if not path.is_file():
            raise EdgepipeError(f"model file not found: {path}")
        available = ort.get_available_providers()
        providers = providers or [p for p in _PREFERRED if p in available]
        options = session_options(ort, EngineThreads.of(threads))
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise EdgepipeError(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0][:200]}") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EdgepipeError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0].name, outputs[0].name
        self.providers = self._session.get_providers()
        self.model_id = f"{path.stem}-{onnx_weights_id(path)}"  # the same id as its source checkpoint
        # the faster graphs (CPU only: CUDA and TensorRT fuse pixel-shuffle themselves)
        self._aligned, self.alignment, self.rewrites = None, 0, []
        if rewrite and self.providers == ["CPUExecutionProvider"]:
            self._rewrite(ort, path, options)

    def _rewrite(self, ort, path: Path, options) -> None:
        import onnx

        from edgepipe.engines import onnx_graph

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - external data or an odd file: the loaded session runs as is
            log.debug("%s: no graph rewrite (%s)", path, exc)
            return
        a = onnx_graph.alignment(model)
        odd, even = (3 * a + 1, 5 * a + 3), (4 * a, 6 * a)  # check sizes: odd sides (crops at work), aligned
        generic = copy.deepcopy(model)
        n = onnx_graph.pixel_shuffle_as_conv_transpose(generic)
        n += onnx_graph.depth_to_space_as_conv_transpose(generic)
        if n:
            session = self._checked(ort, generic, options, odd, path, "pixel-shuffle as ConvTranspose")
            if session is not None:
                self._session = session
                self.rewrites.append(f"conv_transpose:{n}")
            else:
                generic = model
        aligned = copy.deepcopy(generic)
        if a > 1 and onnx_graph.without_crops(aligned):
            self._aligned = self._checked(ort, aligned, options, even, path, "without crops")
            if self._aligned is not None:
                self.alignment = a
                self.rewrites.append(f"without_crops:{a}")

    def _checked(self, ort, model, options, size: tuple[int, int], path: Path, what: str):
        """A session for the rewritten `model` when it matches the loaded one on a random `size` input, else None."""
        x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            got = session.run([self._output], {self._input: x})[0]
        except Exception as exc:  # noqa: BLE001 - a graph ORT will not take: keep the file's
            log.warning("%s: %s rewrite not used (%s)", path.name, what, str(exc).splitlines()[0][:160])
            return None
        ref = self._session.run([self._output], {self._input: x})[0]
        if got.shape != ref.shape or not np.allclose(got, ref, rtol=0, atol=_REWRITE_TOLERANCE):
            log.warning("%s: %s rewrite not used (it differs from the file's graph)", path.name, what)
            return None
        return session

    def session_for(self, height: int, width: int):
        """The ONNX Runtime session that runs frames of this size (the crop-free graph where it is exact)."""
        if self._aligned is not None and height % self.alignment == 0 and width % self.alignment == 0:
            return self._aligned
        return self._session

    def run(self, frames: np.ndarray) -> np.ndarray:
        session = self.session_for(frames.shape[1], frames.shape[2]) if frames.ndim == 4 else self._session
        y = session.run([self._output], {self._input: to_model_input(frames)})[0]
        return from_model_output(y)

    def close(self) -> None:
        self._session = self._aligned = None


def session_options(ort, threads: EngineThreads):
    """ONNX Runtime's session options for a thread budget (None fields: ORT's own defaults)."""
    options = ort.SessionOptions()
    # ORT's default, stated: every graph optimisation, NCHWc blocked layout on x86 included (bench/ed_speed.py:
    # EXTENDED, without NCHWc, ran the ED slower at 224 and 720p)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads.count:
        options.intra_op_num_threads = threads.count
        # the ED is one chain of operators: run them in order, with no second (inter-op) pool beside the first
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
    if threads.spin is not None:
        # a spinning idle thread holds its core between operators, which the encoder may need meanwhile
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads.spin else "0")
    return options


def _computes_on_cpu() -> bool:
    """No GPU provider here: ONNX Runtime runs the model on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        return True  # loading will say what is missing
    return not set(_GPU_PROVIDERS) & set(ort.get_available_providers())


register_engine(EngineKind("onnx", lambda path, threads: OnnxEngine(path, threads=threads), suffixes=(".onnx",),
                           computes_on_cpu=_computes_on_cpu,
                           concurrent_runs=True))  # ONNX Runtime's Run() is thread-safe; run() keeps no state
