"""Pre-transform on ONNX Runtime: CPU everywhere, CUDA/TensorRT providers where installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import sha256_file
from edgepipe.engines.base import from_model_output, to_model_input, weights_id
from edgepipe.engines.registry import EngineKind, EngineThreads, register_engine

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = _PREFERRED[:2]


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
                 threads: int | EngineThreads | None = None):
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

    def run(self, frames: np.ndarray) -> np.ndarray:
        y = self._session.run([self._output], {self._input: to_model_input(frames)})[0]
        return from_model_output(y)

    def close(self) -> None:
        self._session = None


def session_options(ort, threads: EngineThreads):
    """ONNX Runtime's session options for a thread budget (None fields: ORT's own defaults)."""
    options = ort.SessionOptions()
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
                           computes_on_cpu=_computes_on_cpu))
