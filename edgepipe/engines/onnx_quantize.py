"""ONNX Runtime int8 static quantisation of an ED (Q/DQ format, per-channel weights), for the CPU provider.

Issue 13 item 2. The graph is first rewritten as the engine runs it (pixel-shuffle as ConvTranspose,
engines/onnx_graph.py), then only its wide convolutions are quantised: those with at least `min_channels` input
and output channels, which run at a quarter of the frame's resolution or less. The narrow full-resolution
ones (3 -> 16 stem, 16 -> 3 output) ran slower in int8 than in float32 on ONNX Runtime's CPU kernels here
(VNNI x86), and quantising activations at full resolution adds Q/DQ passes over the largest tensors. Adds,
ReLUs and ConvTranspose stay float32. Activation ranges come from real images (`batches`: float32 NCHW in
[0, 1], as the engine feeds the model) by min/max calibration.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_path
from edgepipe.core.options import flag

log = logging.getLogger(__name__)

DEFAULT_MIN_CHANNELS = 32


def _setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


@dataclass
class QuantizeSettings:
    """What `edgepipe quantize` is asked to do, one field per flag (commands/quantize.py makes its options)."""

    model: str  # the command's MODEL argument: an ONNX path or a shipped model name
    data: Path = field(metadata=flag("--calibration-data", path="dir",
                                     help="Folder of real images (ImageNet layout or flat), e.g. training images."))
    output: Path | None = _setting(None, short="-o", path="file",
                                   help="Q/DQ model to write [default: ./MODEL.int8.onnx].")
    size: str = _setting("224x224", help="Calibration WIDTHxHEIGHT (centre-crop + resize, as the capture loop).")
    max_images: int = _setting(256, "--images", min=1, help="At most this many calibration images.")
    min_channels: int = _setting(DEFAULT_MIN_CHANNELS, min=1,
                                 help="Quantise only convolutions with at least this many input and output channels.")


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Please consider") and "pre-processing" in message)


@contextlib.contextmanager
def _without_preprocessing_advice():
    """ORT's quantiser advises its shape-inference pre-pass on the root logger at every call; the ED's graph
    has no shapes for it to infer that matter here."""
    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def wide_convs(model, min_channels: int = DEFAULT_MIN_CHANNELS) -> list[str]:
    """Names of the Conv nodes with at least `min_channels` input and output channels (weights as constants)."""
    from onnx import numpy_helper

    weights = {t.name: t.dims for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            weights[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).shape
    names = []
    for node in model.graph.node:
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dims is not None and len(dims) == 4 and min(dims[0], dims[1]) >= min_channels:
            names.append(node.name)
    return names


def float_for_the_rest(model, quantised: set[str]) -> int:
    """Give every node outside `quantised` the float tensor again where the quantiser handed it a Q -> DQ copy.

    The QDQ quantiser rounds an activation once, for all its readers: the skip connections and crops that read
    the same tensor as a quantised conv would add rounded values and pay a dequantisation each (ORT duplicates
    the DQ per reader). Rewired, only the quantised convs see int8. Returns how many inputs were rewired."""
    producer = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.name in quantised or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            made_by = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            # a quantised conv's own output stays rounded: its Q is part of it (ORT's QLinearConv writes int8)
            if made_by is not None and made_by.name not in quantised:
                node.input[i] = q.input[0]
                rewired += 1
    return rewired


def quantize_int8(source: str | Path, target: str | Path, batches: Iterable[np.ndarray],
                  min_channels: int = DEFAULT_MIN_CHANNELS) -> dict[str, Any]:
    """Write an int8 Q/DQ model of `source` to `target` (atomically); returns what was quantised."""
    import onnx

    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        raise EdgepipeError("int8 quantisation needs onnxruntime (with its quantization tools): "
                            "pip install onnxruntime") from None
    from edgepipe.engines import onnx_graph

    source, target = Path(source), Path(target)
    if not source.is_file():
        raise EdgepipeError(f"model file not found: {source}")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # noqa: BLE001 - protobuf errors of several types
        raise EdgepipeError(f"{source} is not a readable ONNX model: {str(exc).splitlines()[0][:160]}") from None
    graph = copy.deepcopy(model)
    rewritten = onnx_graph.pixel_shuffle_as_conv_transpose(graph)
    convs = wide_convs(graph, min_channels)
    if not convs:
        raise EdgepipeError(f"{source.name} has no convolution with {min_channels} or more channels to quantise")
    input_name = graph.graph.input[0].name
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise EdgepipeError("no calibration images reached the quantiser")
    batches = itertools.chain([first], batches)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.count = 0
            self._batches = batches

        def get_next(self):
            batch = next(self._batches, None)
            if batch is None:
                return None
            self.count += int(batch.shape[0])
            return {input_name: np.ascontiguousarray(batch, np.float32)}

    reader = Reader()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgepipe-int8-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        onnx.save(graph, str(float_path))
        with atomic_path(target) as out, _without_preprocessing_advice():
            quantize_static(str(float_path), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
                            nodes_to_quantize=convs)
            if not reader.count:
                raise EdgepipeError("no calibration images reached the quantiser")
            quantised = onnx.load(str(out))
            rewired = float_for_the_rest(quantised, set(convs))
            onnx_graph.prune(quantised)  # the quantiser leaves constants nothing reads (ORT warns of each)
            onnx.save(quantised, str(out))
    report = {"int8": str(target), "source": str(source), "calibration_images": reader.count,
              "quantised_convs": convs, "pixel_shuffle_as_conv_transpose": rewritten,
              "float_inputs_kept": rewired,
              "bytes": target.stat().st_size}
    log.info("quantised %s -> %s (%d convs, %d calibration images)", source.name, target, len(convs), reader.count)
    return report
