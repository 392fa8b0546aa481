"""The faster graph OnnxEngine runs on the CPU (engines/onnx_graph.py, issue 13 item 2): the same pixels as the
file's own graph on real images of every kind of size, which graph runs for which size, and a rewrite that would
change the output is dropped."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.engines import onnx_graph
from edgepipe.engines.onnx_engine import OnnxEngine

MODELS = Path(__file__).resolve().parents[2] / "edgepipe" / "data" / "models"


@pytest.fixture(scope="module")
def photos(small_val_folder) -> list[np.ndarray]:
    """Real Imagenette val photos at their own sizes (not multiples of 4 in general)."""
    return [read_rgb(item.path) for item in list_labelled_images(small_val_folder)[:6]]


def _batches(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Aligned (224, 1280x720-like), odd and uneven sizes, a batch of two."""
    import cv2

    a = photos[0]
    return [
        np.ascontiguousarray(cv2.resize(a, (224, 224))[None]),
        np.ascontiguousarray(cv2.resize(photos[1], (320, 184))[None]),  # both divisible by 8
        np.ascontiguousarray(a[:223, :301][None]),  # odd sides: the crops do work
        np.ascontiguousarray(a[:226, :130][None]),  # even, not divisible by 4
        np.stack([cv2.resize(p, (96, 64)) for p in photos[2:4]]),
    ]


@pytest.mark.parametrize("name", ["ours", "ours-fast", "palacio"])
def test_the_rewritten_graph_gives_the_files_pixels(name, photos):
    fast, plain = OnnxEngine(MODELS / f"{name}.onnx", threads=1), OnnxEngine(MODELS / f"{name}.onnx", threads=1,
                                                                             rewrite=False)
    # ours-fast's last DepthToSpace follows a 3x3 conv: rewritten alone, with 0/1 weights
    assert fast.rewrites == [f"conv_transpose:{3 if name == 'ours-fast' else 2}",
                             f"without_crops:{8 if name == 'ours-fast' else 4}"]
    assert plain.rewrites == [] and fast.model_id == plain.model_id  # the same model, by its weights
    for batch in _batches(photos):
        got, ref = fast.run(batch), plain.run(batch)
        assert got.shape == batch.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # float summation order only
        assert np.abs(got.astype(int) - batch.astype(int)).mean() > 0.5  # and the model does something


def test_the_crop_free_graph_runs_only_where_it_is_exact():
    engine = OnnxEngine(MODELS / "ours.onnx", threads=1)
    assert engine.alignment == 4
    assert engine.session_for(720, 1280) is engine.session_for(224, 224) is engine._aligned
    for h, w in ((223, 224), (224, 226), (721, 1280)):
        assert engine.session_for(h, w) is engine._session
    fast = OnnxEngine(MODELS / "ours-fast.onnx", threads=1)
    assert fast.session_for(720, 1280) is fast._aligned and fast.session_for(228, 228) is fast._session


def test_the_export_has_the_pattern_and_the_rewrite_removes_it():
    import onnx

    model = onnx.load(str(MODELS / "ours.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DepthToSpace") == 2 and ops.count("Slice") == 4
    assert onnx_graph.alignment(model) == 4
    assert onnx_graph.pixel_shuffle_as_conv_transpose(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert "DepthToSpace" not in ops and ops.count("ConvTranspose") == 2 and ops.count("Conv") == 6
    assert onnx_graph.alignment(model) == 4  # now counted from the ConvTranspose strides
    assert onnx_graph.without_crops(model) == 4
    assert "Slice" not in [n.op_type for n in model.graph.node]
    onnx.checker.check_model(model)


def test_ours_fast_keeps_one_depth_to_space_that_the_second_rewrite_removes():
    import onnx

    model = onnx.load(str(MODELS / "ours-fast.onnx"))
    assert onnx_graph.pixel_shuffle_as_conv_transpose(model) == 2
    assert [n.op_type for n in model.graph.node].count("DepthToSpace") == 1
    assert onnx_graph.depth_to_space_as_conv_transpose(model) == 1
    assert "DepthToSpace" not in [n.op_type for n in model.graph.node]
    assert onnx_graph.alignment(model) == 8
    onnx.checker.check_model(model)


@pytest.mark.parametrize("mode", ["CRD", "DCR"])
@pytest.mark.parametrize("fed_by_conv", [True, False])
def test_depth_to_space_as_conv_transpose_is_exact(mode, fed_by_conv):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    nodes, inits = [], []
    if fed_by_conv:  # a 3x3 conv, as in ours-fast; otherwise the channel count comes from shape inference
        inits.append(numpy_helper.from_array(rng.standard_normal((12, 5, 3, 3)).astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]))
        c_in = 5
    else:
        nodes.append(helper.make_node("Relu", ["x"], ["h"]))
        c_in = 12
    nodes.append(helper.make_node("DepthToSpace", ["h"], ["y"], blocksize=2, mode=mode))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c_in, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert onnx_graph.depth_to_space_as_conv_transpose(rewritten) == 1
    assert [n.op_type for n in rewritten.graph.node][-1] == "ConvTranspose"
    x = rng.standard_normal((2, c_in, 5, 7)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (model, rewritten)]
    assert run[0].shape == run[1].shape == (2, 3, 10, 14)
    assert np.array_equal(run[0], run[1])  # each output pixel is one input value times one


def test_a_graph_without_the_pattern_is_left_alone(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((3, 3, 1, 1), 1 / 3, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["image_out"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("image_out", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "grey.onnx")
    engine = OnnxEngine(tmp_path / "grey.onnx", threads=1)
    assert engine.rewrites == [] and engine.alignment == 0
    frame = np.zeros((1, 8, 8, 3), np.uint8)
    frame[..., 0] = 90
    assert (engine.run(frame) == 30).all()


def test_a_rewrite_that_changes_the_output_is_dropped(monkeypatch, caplog, photos):
    real = onnx_graph.pixel_shuffle_as_conv_transpose

    def wrong(model):  # a rewrite bug: the ConvTranspose weights off by a little
        from onnx import numpy_helper

        n = real(model)
        for i, t in enumerate(model.graph.initializer):
            if t.name.endswith("convtranspose/W"):
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.1, t.name))
        return n

    monkeypatch.setattr(onnx_graph, "pixel_shuffle_as_conv_transpose", wrong)
    with caplog.at_level(logging.WARNING, logger="edgepipe.engines.onnx_engine"):
        engine = OnnxEngine(MODELS / "ours.onnx", threads=1)
    assert "pixel-shuffle as ConvTranspose rewrite not used (it differs" in caplog.text
    assert engine.rewrites == ["without_crops:4"]  # the crop-free graph of the file's own graph still checks out
    plain = OnnxEngine(MODELS / "ours.onnx", threads=1, rewrite=False)
    batch = _batches(photos)[0]
    assert np.abs(engine.run(batch).astype(int) - plain.run(batch).astype(int)).max() <= 1


def test_all_graph_optimisations_are_on():
    import onnxruntime as ort

    engine = OnnxEngine(MODELS / "ours.onnx", threads=1)
    for session in (engine._session, engine._aligned):
        level = session.get_session_options().graph_optimization_level
        assert level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_a_context_model_runs_crop_free_at_sizes_divisible_by_16(tmp_path, photos, caplog):
    """`train --context`: its x4 Resize counts in the alignment (1/16 deep), so 224 and 1280x720 run the crop-free
    graph and 100x68 (divisible by 4, not 16) the full one, with the file's pixels either way and no warning."""
    import torch

    from edgepipe.models.ed import EDConfig, EncoderDecoder, save_checkpoint
    from edgepipe.train.export import export_onnx

    torch.manual_seed(0)
    model = EncoderDecoder(EDConfig(context=True))
    with torch.no_grad():  # the branch must matter, or a wrong crop would go unseen
        model.out.weight.normal_(std=0.2)
        model.context.back.weight.normal_(std=0.2)
    save_checkpoint(tmp_path / "c.pt", model)
    export_onnx(tmp_path / "c.pt", tmp_path / "c.onnx")
    with caplog.at_level(logging.WARNING, logger="edgepipe.engines.onnx_engine"):
        fast = OnnxEngine(tmp_path / "c.onnx", threads=1)
    assert "not used" not in caplog.text
    assert fast.rewrites == ["conv_transpose:2", "without_crops:16"] and fast.alignment == 16
    plain = OnnxEngine(tmp_path / "c.onnx", threads=1, rewrite=False)
    import cv2

    for h, w in ((224, 224), (720, 1280), (100, 68)):
        batch = np.ascontiguousarray(cv2.resize(photos[0], (w, h))[None])
        assert (fast.session_for(h, w) is fast._aligned) == (h % 16 == 0 and w % 16 == 0)
        assert np.abs(fast.run(batch).astype(int) - plain.run(batch).astype(int)).max() <= 1
