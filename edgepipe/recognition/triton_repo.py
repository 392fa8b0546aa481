"""A Triton Inference Server model repository for a recognizer: `edgepipe recognizer-repo --out DIR`.

    DIR/efficientnet-lite0/config.pbtxt       backend onnxruntime, dynamic batching
    DIR/efficientnet-lite0/1/model.onnx       the in-process recognizer, exported by torch.onnx

The exported graph takes what the monitor has, uint8 RGB frames (N, H, W, 3) named `frames`, and does the
in-process preprocessing itself (NHWC -> NCHW, float32, / 255, then the recognizer's own normalisation), so a
frame costs a quarter of the bytes of float32 on the wire and the logits (N, 1000), `logits`, are those of
`Classifier.logits` on the same frames. Batch, height and width are dynamic (the monitor classifies frames
at their decoded size, as in process); Triton's dynamic batcher groups requests of one frame size.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_path, sha256_file
from edgepipe.core.options import flag
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS

INPUT_NAME = "frames"  # UINT8 (N, H, W, 3) RGB
OUTPUT_NAME = "logits"  # FP32 (N, 1000)
NUM_CLASSES = 1000
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 2000
MODEL_VERSION = "1"


def setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


@dataclass
class RepoSettings:
    """What `edgepipe recognizer-repo` is asked to do: one field per setting, each carrying its flag and help
    (the command's options are made from them); `write_model_repository(settings.out, ...)` does it. The numbers
    are checked there, before the export, in one line each."""
    out: str = field(metadata=flag(path="dir", help="Model repository directory (created; other models in it are "
                                                    "left alone)."))
    recognizer: str = setting(DEFAULT_RECOGNIZER, choices=RECOGNIZERS, help="The recognizer to export.")
    weights: str | None = setting(None, path="file", help="Recognizer weights (vgg16).")
    model_name: str | None = setting(None, help="Model name on the server (default: the recognizer's name).")
    max_batch: int = setting(DEFAULT_MAX_BATCH, help="max_batch_size: the largest batch the server forms.")
    queue_delay_us: int = setting(DEFAULT_QUEUE_DELAY_US,
                                  help="Dynamic batching: how long a request may wait for others to join its batch.")


def config_pbtxt(model: str, max_batch_size: int = DEFAULT_MAX_BATCH,
                 queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, comment: str = "") -> str:
    """The model's config.pbtxt (ModelConfig protobuf, text format).

    `backend: "onnxruntime"` (Triton's model-configuration docs: for ONNX, backend onnxruntime or platform
    onnxruntime_onnx). No instance_group: Triton then puts one instance on each GPU it sees, or one on the CPU
    where it sees none. Dims exclude the batch dimension, which max_batch_size > 0 adds.
    """
    if max_batch_size < 1:
        raise EdgepipeError(f"--max-batch must be at least 1, got {max_batch_size}")
    if queue_delay_us < 0:
        raise EdgepipeError(f"--queue-delay-us must be 0 or more, got {queue_delay_us}")
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return f"""{head}name: "{model}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: [ -1, -1, 3 ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {NUM_CLASSES} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
}}
"""


def _frames_model(recognizer):
    """uint8 NHWC frames -> logits, with the preprocessing of `Classifier.logits` inside the graph."""
    import torch

    class FramesToLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.recognizer = recognizer

        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            return self.recognizer(x)

    return FramesToLogits().eval()


def export_onnx(recognizer_name: str, weights: str | os.PathLike | None, path: Path) -> None:
    import torch

    from edgepipe.recognition import build_recognizer

    model = _frames_model(build_recognizer(recognizer_name, weights))
    path.parent.mkdir(parents=True, exist_ok=True)
    # a server polling the repository never sees half a file
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as Classifier uses
        torch.onnx.export(
            model, torch.zeros(1, 224, 224, 3, dtype=torch.uint8), str(tmp),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "n", 1: "h", 2: "w"}, OUTPUT_NAME: {0: "n"}}, dynamo=False,
        )


def write_model_repository(out: str | os.PathLike, recognizer: str = DEFAULT_RECOGNIZER,
                           weights: str | os.PathLike | None = None, model_name: str | None = None,
                           max_batch_size: int = DEFAULT_MAX_BATCH,
                           queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> Path:
    """Write (or replace) one model in the repository at `out`; returns the model's directory."""
    if recognizer not in RECOGNIZERS:
        raise EdgepipeError(f"unknown recognizer {recognizer!r}; choose one of {', '.join(RECOGNIZERS)}")
    model_name = model_name or recognizer
    if not model_name or not all(c.isalnum() or c in "._-" for c in model_name):
        raise EdgepipeError(f"model name {model_name!r}: use letters, digits, '.', '_' and '-' only")
    config_pbtxt(model_name, max_batch_size, queue_delay_us)  # bad numbers fail before the (slow) export
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise EdgepipeError(f"--out {root}: exists and is not a directory")
    model_dir = root / model_name
    onnx_path = model_dir / MODEL_VERSION / "model.onnx"
    export_onnx(recognizer, weights, onnx_path)
    digest = sha256_file(onnx_path)[:16]
    from edgepipe import __version__

    comment = (f"Written by `edgepipe recognizer-repo` (edgepipe {__version__}): recognizer {recognizer}, "
               f"{'weights ' + Path(weights).name if weights else 'packaged weights'}; "
               f"{MODEL_VERSION}/model.onnx sha256 {digest}...\n"
               f"Input: uint8 RGB frames (N, H, W, 3); the graph does the monitor's preprocessing. "
               f"Output: ImageNet-1k logits.")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(model_name, max_batch_size, queue_delay_us, comment))
    return model_dir
