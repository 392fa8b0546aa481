import numpy as np
import pytest
import torch

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.engines import IdentityEngine, load_engine
from edgepipe.engines.base import from_model_output, to_model_input


class Smooth(torch.nn.Module):
    """A small real conv net with a bypass, exported like the ED: float NCHW [0,1] in and out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.clamp(x + 0.1 * torch.tanh(self.conv(x)), 0, 1)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "smooth.onnx"
    with torch.no_grad():
        torch.onnx.export(Smooth(), torch.rand(1, 3, 32, 32), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def frames(small_val_folder):
    return np.stack([read_rgb(i.path) for i in list_labelled_images(small_val_folder)[:3]])


def test_pixel_layout_roundtrip(frames):
    x = to_model_input(frames)
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(from_model_output(x), frames)
    buf = np.empty_like(x)
    assert to_model_input(frames, out=buf) is buf
    with pytest.raises(ValueError):
        to_model_input(frames.astype(np.float32))


def test_none_is_identity(frames):
    engine = load_engine("none")
    assert isinstance(engine, IdentityEngine) and engine.model_id == "none"
    assert engine.run(frames) is frames


def test_onnx_engine_matches_pytorch_on_real_images_any_size(onnx_model, frames):
    engine = load_engine(str(onnx_model))
    assert engine.model_id.startswith("smooth-")
    for batch in (frames, frames[:1, :101, :67]):  # odd sizes pass through a fully convolutional model
        out = engine.run(np.ascontiguousarray(batch))
        with torch.no_grad():
            ref = from_model_output(Smooth()(torch.from_numpy(to_model_input(np.ascontiguousarray(batch)))).numpy())
        assert out.shape == batch.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
        assert not np.array_equal(out, batch)


def test_bad_model_files_are_one_line_errors(tmp_path):
    with pytest.raises(EdgepipeError, match="not found"):
        load_engine(str(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(EdgepipeError, match="not a loadable ONNX model"):
        load_engine(str(corrupt))
    weird = tmp_path / "model.tflite"
    weird.write_bytes(b"x")
    with pytest.raises(EdgepipeError, match="unknown model type"):
        load_engine(str(weird))
    with pytest.raises(EdgepipeError, match="neither a file nor a shipped model"):
        load_engine("no-such-model-name")


def test_plan_without_tensorrt_is_a_clear_error(tmp_path):
    pytest.importorskip("edgepipe.engines.tensorrt_engine", reason="TensorRT engine module not present")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(EdgepipeError, match="(?i)tensorrt"):
        load_engine(str(plan))


def test_checkpoint_and_its_onnx_export_share_a_model_id(tmp_path):
    """The id names the weights, not the file: a .pt (with its optimiser) and its export run as one model."""
    import shutil

    from edgepipe.engines import resolve_model
    from edgepipe.engines.onnx_engine import OnnxEngine
    from edgepipe.engines.torch_engine import TorchEngine

    models_dir = resolve_model("ours").parent
    ids = {}
    for name in ("ours", "ours-fast"):
        pt = TorchEngine(models_dir / f"{name}.pt", device="cpu").model_id
        onnx = OnnxEngine(models_dir / f"{name}.onnx").model_id
        assert pt == onnx and pt.startswith(f"{name}-")
        ids[name] = pt
    assert ids["ours"].split("-")[-1] != ids["ours-fast"].split("-")[-1]
    # a copy under another name keeps the weights id; changed weights change it
    shutil.copy(models_dir / "ours.pt", tmp_path / "mine.pt")
    assert TorchEngine(tmp_path / "mine.pt", device="cpu").model_id == "mine-" + ids["ours"].split("-")[-1]
    ckpt = torch.load(tmp_path / "mine.pt", weights_only=False)
    ckpt["state_dict"]["out.bias"] = ckpt["state_dict"]["out.bias"] + 1e-3
    torch.save(ckpt, tmp_path / "mine.pt")
    assert TorchEngine(tmp_path / "mine.pt", device="cpu").model_id != "mine-" + ids["ours"].split("-")[-1]
