"""ED checkpoint -> ONNX with dynamic batch, H and W, verified against PyTorch on real images."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_path
from edgepipe.engines.base import to_model_input
from edgepipe.models.ed import load_ed

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "image", "image_out"


def _default_check_images() -> Path | None:
    from importlib import resources

    demo = Path(str(resources.files("edgepipe.data"))) / "demo"
    return demo if demo.is_dir() else None


def _check_frames(folder: str | Path | None, limit: int = 8) -> list[np.ndarray]:
    """Real images for the parity check: the folder's first `limit` readable images (any layout)."""
    from edgepipe.core.datasets import IMAGE_SUFFIXES, read_rgb

    folder = Path(folder) if folder is not None else _default_check_images()
    if folder is None:
        raise EdgepipeError("no images for the export check: pass --check-data DIR (a folder of real images)")
    if not folder.is_dir():
        raise EdgepipeError(f"check-data folder not found: {folder}")
    frames = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        image = read_rgb(path)
        if image is not None:
            frames.append(image)
        if len(frames) >= limit:
            break
    if not frames:
        raise EdgepipeError(f"no readable images under {folder} for the export check")
    return frames


def _parity_inputs(frames: list[np.ndarray]) -> list[np.ndarray]:
    """A batch at native size, an odd-sized crop and a 1280x720 frame: the sizes the pipeline meets."""
    import cv2

    h, w = frames[0].shape[:2]
    same = [f for f in frames if f.shape[:2] == (h, w)]
    odd = frames[0][: h - 1 + h % 2, : w - 1 + w % 2]  # both sides odd
    hd = cv2.resize(frames[-1], (1280, 720), interpolation=cv2.INTER_LINEAR)
    return [np.stack(same[:4]), odd[None], hd[None]]


def export_onnx(checkpoint: str | Path, onnx_path: str | Path, opset: int = 17,
                check_data: str | Path | None = None, tolerance: float = 1e-3) -> dict[str, Any]:
    """Write `onnx_path` atomically; return {max_abs_diff, sizes checked, ...}. Fails (and writes nothing)
    when ONNX Runtime and PyTorch disagree by more than `tolerance` on any checked pixel."""
    import onnx
    import onnxruntime as ort

    if opset < 17:
        raise EdgepipeError(f"opset must be >= 17, got {opset}")
    model = load_ed(checkpoint).float().cpu()
    frames = _check_frames(check_data)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(onnx_path) as tmp:  # written only once it passed the checks below
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deliberate, see below
            # The TorchScript-based exporter: stable output, and the shape-driven crops in forward() become
            # Shape/Slice ops, so H and W stay dynamic.
            torch.onnx.export(
                model, torch.from_numpy(to_model_input(frames[0][None])), str(tmp),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                dynamic_axes={INPUT_NAME: {0: "n", 2: "h", 3: "w"}, OUTPUT_NAME: {0: "n", 2: "h", 3: "w"}},
                dynamo=False,
            )
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        worst, sizes = 0.0, []
        for batch in _parity_inputs(frames):
            x = to_model_input(np.ascontiguousarray(batch))
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            got = session.run(None, {INPUT_NAME: x})[0]
            if got.shape != ref.shape:
                raise EdgepipeError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} for input {x.shape}")
            worst = max(worst, float(np.abs(got - ref).max()))
            sizes.append(f"{x.shape[0]}x{x.shape[2]}x{x.shape[3]}")
        if worst > tolerance:
            raise EdgepipeError(f"ONNX export differs from PyTorch by {worst:.2e} (> {tolerance:g}); not written")
    report = {"onnx": str(onnx_path), "opset": opset, "max_abs_diff": worst, "checked": sizes,
              "bytes": onnx_path.stat().st_size}
    log.info("exported %s (max abs diff %.2e over %s)", onnx_path, worst, ", ".join(sizes))
    return report
