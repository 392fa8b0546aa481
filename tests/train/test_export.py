"""ONNX export: dynamic sizes, parity with PyTorch on real images, runs in the pipeline's engine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.onnx_engine import OnnxEngine
from edgepipe.engines.torch_engine import TorchEngine
from edgepipe.models.ed import EDConfig, EncoderDecoder, save_checkpoint
from edgepipe.train.export import export_onnx


@pytest.mark.parametrize("config", [EDConfig(bypass=True), EDConfig(bypass=False), EDConfig(context=True)],
                         ids=["bypass", "plain", "context"])
def test_export_parity_and_engine(tmp_path: Path, small_val_folder: Path, real_frames, config: EDConfig) -> None:
    torch.manual_seed(0)
    model = EncoderDecoder(config)
    with torch.no_grad():  # a non-identity ED, so parity means something
        model.out.weight.normal_(std=0.2)
        if config.context:  # and the branch's bilinear upsampling is in it
            model.context.back.weight.normal_(std=0.2)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model)
    report = export_onnx(ckpt, tmp_path / "m.onnx", check_data=small_val_folder)
    assert report["opset"] >= 17 and report["max_abs_diff"] < 1e-4
    assert "1x720x1280" in report["checked"] and "1x223x223" in report["checked"]

    onnx_engine, torch_engine = OnnxEngine(tmp_path / "m.onnx"), TorchEngine(ckpt, device="cpu")
    frames = real_frames[0]
    for batch in (frames[:3], frames[3:4, :101, :57], frames[4:6, 1:, :-3]):
        batch = np.ascontiguousarray(batch)
        got, ref = onnx_engine.run(batch), torch_engine.run(batch)
        assert got.shape == batch.shape
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # rounding of float noise only
        assert np.abs(got.astype(int) - batch.astype(int)).mean() > 1  # and the model does something


def test_export_refuses_bad_checkpoint_and_writes_nothing(tmp_path: Path, small_val_folder: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(EdgepipeError):
        export_onnx(bad, tmp_path / "bad.onnx", check_data=small_val_folder)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp"))
