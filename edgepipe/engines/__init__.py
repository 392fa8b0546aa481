"""Pre-transform engines, chosen by the model file's suffix (see `load_engine`)."""
from __future__ import annotations

from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.base import Engine, IdentityEngine

__all__ = ["Engine", "IdentityEngine", "load_engine", "resolve_model"]


def resolve_model(spec: str) -> Path:
    """A model path, or the name of a model shipped in edgepipe/data/models (e.g. `ours`)."""
    path = Path(spec)
    if path.exists() or path.suffix:
        return path
    from importlib import resources

    shipped = Path(str(resources.files("edgepipe.data"))) / "models" / f"{spec}.onnx"
    if shipped.exists():
        return shipped
    raise EdgepipeError(f"model not found: {spec!r} is neither a file nor a shipped model name")


def load_engine(spec: str | None) -> Engine:
    """`none` -> no pre-transform; `.onnx` -> ONNX Runtime; `.pt`/`.pth` -> PyTorch; `.plan` -> TensorRT."""
    if spec is None or spec == "none":
        return IdentityEngine()
    path = resolve_model(spec)
    if not path.is_file():
        raise EdgepipeError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from edgepipe.engines.onnx_engine import OnnxEngine

        return OnnxEngine(path)
    if suffix in (".pt", ".pth"):
        from edgepipe.engines.torch_engine import TorchEngine

        return TorchEngine(path)
    if suffix in (".plan", ".engine"):
        from edgepipe.engines.tensorrt_engine import TensorRTEngine  # lazy: tensorrt is optional

        return TensorRTEngine(path)
    raise EdgepipeError(f"unknown model type {suffix!r} for {path}: use .onnx, .pt/.pth, .plan or 'none'")
