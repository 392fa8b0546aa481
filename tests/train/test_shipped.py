"""The four shipped EDs: present, small, documented, and the ONNX file agrees with its checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepipe.engines import resolve_model
from edgepipe.engines.onnx_engine import OnnxEngine
from edgepipe.engines.torch_engine import TorchEngine
from edgepipe.models.ed import load_ed

MODELS = Path(__file__).resolve().parents[2] / "edgepipe" / "data" / "models"
SHIPPED = {"ours": True, "ours-fast": True, "palacio": False, "bypass_only": True, "tv_only": False}  # name -> bypass


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model(name: str, real_frames) -> None:
    onnx, pt, card = (MODELS / f"{name}{s}" for s in (".onnx", ".pt", ".md"))
    for path in (onnx, pt, card):
        assert path.is_file(), f"missing {path}"
        assert path.stat().st_size < 10 * 2**20
    assert load_ed(pt).config.bypass is SHIPPED[name]
    assert resolve_model(name) == onnx
    text = card.read_text()
    for needed in ("λ", "top-1", "bits per pixel", "edgepipe train", "edgepipe export", "Training time"):
        assert needed in text, f"{card.name} lacks {needed!r}"
    frames = np.ascontiguousarray(real_frames[0][:3, :, :-1])  # odd width
    got, ref = OnnxEngine(onnx).run(frames), TorchEngine(pt, device="cpu").run(frames)
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
