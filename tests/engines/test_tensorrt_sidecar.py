"""The `.plan.json` sidecar: what it records, and the one-line refusal of a plan built elsewhere."""
from __future__ import annotations

import json

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import sha256_file
from edgepipe.engines import plan_sidecar as ps


def make_sidecar(**overrides) -> ps.PlanSidecar:
    fields = dict(onnx_name="ours.onnx", onnx_sha256="0123456789abcdef" * 4, precision="fp16",
                  tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7",
                  input_name="input", output_name="output",
                  shapes={"min": [1, 3, 32, 32], "opt": [1, 3, 720, 1280], "max": [1, 3, 1080, 1920]},
                  edgepipe_version="0.1.0", model_card={"producer_name": "pytorch"})
    fields.update(overrides)
    return ps.PlanSidecar(**fields)


def test_round_trip_and_model_id(tmp_path):
    plan = tmp_path / "ours-fp16.plan"
    path = ps.write_sidecar(plan, make_sidecar())
    assert path == tmp_path / "ours-fp16.plan.json"
    data = json.loads(path.read_text())
    assert data["format"] == ps.SIDECAR_FORMAT and data["built_at"]
    back = ps.read_sidecar(plan)
    assert back == make_sidecar(built_at=data["built_at"])
    # The ONNX engine calls the same model "ours-01234567"; the plan adds how it runs.
    assert back.model_id == "ours-01234567-trt-fp16"


def test_missing_sidecar_is_none(tmp_path):
    assert ps.read_sidecar(tmp_path / "x.plan") is None


@pytest.mark.parametrize("content, match", [
    ("{not json", "not a readable plan sidecar"),
    ('{"format": "something-else"}', "not an edgepipe plan sidecar"),
    (json.dumps({"format": ps.SIDECAR_FORMAT, "version": 1, "precision": "fp16"}), "lacks onnx_name"),
    (json.dumps({"format": ps.SIDECAR_FORMAT, "version": 99}), "newer edgepipe"),
])
def test_bad_sidecars_are_one_line_errors(tmp_path, content, match):
    (tmp_path / "x.plan.json").write_text(content)
    with pytest.raises(EdgepipeError, match=match) as exc:
        ps.read_sidecar(tmp_path / "x.plan")
    assert "\n" not in str(exc.value)


def test_same_release_and_gpu_loads():
    sc = make_sidecar()
    ps.check_compatible("ours.plan", sc, "10.3.0.30", "Orin", "8.7")
    ps.check_compatible("ours.plan", sc, "10.3.0.26", "Orin", "8.7")  # another build of the same release


def test_other_tensorrt_release_says_rebuild():
    with pytest.raises(EdgepipeError) as exc:
        ps.check_compatible("ours-fp16.plan", make_sidecar(), "10.16.1.11", "Orin", "8.7")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "TensorRT 10.3.0.30 (this machine has 10.16.1.11)" in msg
    assert "edgepipe build-engine ours.onnx -o ours-fp16.plan --precision fp16" in msg


def test_other_gpu_says_rebuild():
    with pytest.raises(EdgepipeError, match=r"GPU Orin \(sm 8.7\); this machine has NVIDIA H100 .*\(sm 9.0\).*rebuild"):
        ps.check_compatible("ours.plan", make_sidecar(), "10.3.0.30", "NVIDIA H100 80GB HBM3", "9.0")
    # same name, other compute capability (e.g. a renamed board) is refused too
    with pytest.raises(EdgepipeError, match="sm 8.6"):
        ps.check_compatible("ours.plan", make_sidecar(), "10.3.0.30", "Orin", "8.6")


def test_both_mismatches_in_one_line():
    with pytest.raises(EdgepipeError) as exc:
        ps.check_compatible("ours.plan", make_sidecar(), "11.4.0.106", "NVIDIA RTX 4090", "8.9")
    assert "TensorRT 10.3.0.30" in str(exc.value) and "GPU Orin" in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_gpu_in_sidecar_is_not_compared(caplog):
    sc = make_sidecar(gpu_name=ps.UNKNOWN, compute_capability=ps.UNKNOWN)
    ps.check_compatible("ours.plan", sc, "10.3.0.30", "Orin", "8.7")
    assert "does not record its GPU" in caplog.text


def test_write_refuses_unknown_precision(tmp_path):
    with pytest.raises(ValueError):
        ps.write_sidecar(tmp_path / "x.plan", make_sidecar(precision="int4"))


def test_model_card_from_onnx_metadata_and_json_card(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    model = helper.make_model(graph, producer_name="edgepipe-export", opset_imports=[helper.make_opsetid("", 17)])
    model.model_version = 3
    helper.set_model_props(model, {"edgepipe.recognizer": "efficientnet-lite0", "edgepipe.bypass": "true"})
    path = tmp_path / "ours.onnx"
    onnx.save(model, str(path))
    (tmp_path / "ours.json").write_text(json.dumps({"trained_on": "imagenette", "bd_rate": -21.5}))
    (tmp_path / "ours.metrics.json").write_text(json.dumps({"top1": 0.81, "bpp": 0.42}))
    (tmp_path / "ours.md").write_text("# ours: ED with bypass, lambda 1\n\nTrained on ...\n")
    card = ps.model_card_fields(path)
    assert card["metrics"] == {"top1": 0.81, "bpp": 0.42}
    assert card["card"]["file"] == "ours.md" and card["card"]["title"] == "ours: ED with bypass, lambda 1"
    assert card["producer_name"] == "edgepipe-export" and card["model_version"] == 3
    assert card["opset"] == {"ai.onnx": 17}
    assert card["edgepipe.recognizer"] == "efficientnet-lite0"
    assert card["trained_on"] == "imagenette" and card["bd_rate"] == -21.5
    assert sha256_file(path) == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
