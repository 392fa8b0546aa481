"""Runtime pre-transforms, one module per kind, each registered in `ENGINES` (registry.py):

    base.py             the Engine interface and `none` (identity)
    onnx_engine.py      `.onnx` files and shipped model names: ONNX Runtime
    torch_engine.py     `.pt` / `.pth` ED checkpoints: PyTorch
    tensorrt_engine.py  `.plan` / `.engine` files: TensorRT (built offline by edgepipe.tensorrt)
    tvl1.py             `tvl1[:LAMBDA]`: the classical TV-L1 baseline

beside them: onnx_graph.py (the exact, faster graph ONNX Runtime's CPU runs), onnx_quantize.py (`edgepipe
quantize`: an int8 Q/DQ copy for it).

`load_engine(spec, threads)` is the one way in (threads: an `EngineThreads` budget, or a count). A new kind is one module that calls `register_engine`, and its
import below. Heavy packages (onnxruntime, torch, tensorrt) are imported only when an engine loads.
"""
from __future__ import annotations

from edgepipe.engines import onnx_engine, tensorrt_engine, torch_engine, tvl1  # noqa: F401  (they register)
from edgepipe.engines.base import Engine, IdentityEngine
from edgepipe.engines.registry import (
    ENGINES,
    EngineKind,
    EngineThreads,
    describe_specs,
    load_engine,
    model_id_of,
    parse_spec,
    register_engine,
    resolve_model,
)

__all__ = ["ENGINES", "Engine", "EngineKind", "EngineThreads", "IdentityEngine", "describe_specs", "load_engine",
           "model_id_of", "parse_spec", "register_engine", "resolve_model"]
