"""TensorRT build side without TensorRT: version dispatch, option parsing, the fp16 conversion that
TensorRT 11 builds from (checked on ONNX Runtime), the progress line and the CLI's one-line errors."""
from __future__ import annotations

import importlib.util
import io
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import EdgepipeError
from edgepipe.engines import tensorrt_engine as te
from edgepipe.tensorrt import build as tb

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def export_tiny_net(path: Path) -> Path:
    """A small real conv net shaped like the ED (stride-2 down, pixel-shuffle up, clamp), dynamic N/H/W."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c, self.d = nn.Conv2d(16, 12, 1), nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = F.pixel_shuffle(self.c(F.relu(self.b(F.relu(self.a(x))))), 2)
            return (x + 0.1 * self.d(y)).clamp(0, 1)

    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(Tiny().eval(), (torch.rand(1, 3, 64, 64),), str(path), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": axes, "output": axes}, opset_version=17,
                      dynamo=False)
    return path


# --- version dispatch -----------------------------------------------------------------------------


@pytest.mark.parametrize("version, cls", [("10.3.0.30", tb.TensorRT10Builder), ("10.16.1.11", tb.TensorRT10Builder),
                                          ("11.4.0.106", tb.TensorRT11Builder)])
def test_dispatch_picks_the_builder_for_the_installed_major(version, cls):
    fake = types.SimpleNamespace(__version__=version)
    assert tb.builder_class(fake) is cls
    assert te.tensorrt_major(fake) == int(version.split(".")[0])


@pytest.mark.parametrize("version", ["8.6.1.6", "12.0.0", ""])
def test_dispatch_refuses_unsupported_or_unknown_versions(version):
    with pytest.raises(EdgepipeError, match="TensorRT|version"):
        tb.builder_class(types.SimpleNamespace(__version__=version))


def test_network_flags_differ_between_majors():
    fake = types.SimpleNamespace(__version__="10.16.1.11", NetworkDefinitionCreationFlag=types.SimpleNamespace(
        STRONGLY_TYPED=1))
    b10 = object.__new__(tb.TensorRT10Builder)
    b10.trt = fake
    assert b10.network_flags(qdq=False) == 0  # weakly typed, so FP16/INT8 flags apply
    assert b10.network_flags(qdq=True) == 1 << 1  # Q/DQ models build strongly typed
    assert object.__new__(tb.TensorRT11Builder).network_flags(qdq=False) == 0


# --- options --------------------------------------------------------------------------------------


def test_default_shapes_are_width_by_height_like_capture():
    p = tb.parse_shapes(tb.DEFAULT_SHAPES)
    assert p.min == (1, 3, 32, 32) and p.opt == (1, 3, 720, 1280) and p.max == (1, 3, 1080, 1920)
    assert p.contains((1, 3, 224, 224)) and not p.contains((1, 3, 2160, 3840))


def test_shapes_max_batch_and_nchw_form():
    p = tb.parse_shapes("64x64:224x224:640x480", max_batch=4)
    assert p.min[0] == 1 and p.opt[0] == 1 and p.max == (4, 3, 480, 640)
    q = tb.parse_shapes("1x3x32x32:2x3x224x224:8x3x512x512")
    assert q.opt == (2, 3, 224, 224) and q.max == (8, 3, 512, 512)


@pytest.mark.parametrize("text", ["224x224", "64x64:32x32:128x128", "a:b:c", "1x4x32x32:1x4x64x64:1x4x64x64"])
def test_bad_shapes_are_one_line_errors(text):
    with pytest.raises(EdgepipeError):
        tb.parse_shapes(text)


def test_workspace_units():
    assert tb.parse_workspace("1G") == 1 << 30
    assert tb.parse_workspace("512M") == 512 << 20
    assert tb.parse_workspace("2GiB") == 2 << 30
    assert tb.parse_workspace("1073741824") == 1 << 30
    for bad in ("lots", "1K", "-1G"):
        with pytest.raises(EdgepipeError):
            tb.parse_workspace(bad)


def test_fixed_model_dims_must_match_the_profile():
    shapes = tb.parse_shapes("32x32:224x224:512x512")
    assert tb.PlanBuilder._fit_profile((-1, 3, -1, -1), shapes, "m.onnx") is shapes
    with pytest.raises(EdgepipeError, match="fixed H = 224"):
        tb.PlanBuilder._fit_profile((1, 3, 224, 224), shapes, "m.onnx")
    with pytest.raises(EdgepipeError, match="N x 3 x H x W"):
        tb.PlanBuilder._fit_profile((1, 1, -1, -1), shapes, "m.onnx")


# --- TensorRT 11 fp16: the ONNX conversion, checked with ONNX Runtime on real images ----------------


def test_fp16_conversion_keeps_float32_io_and_matches(tmp_path, small_val_folder):
    import onnx
    import onnxruntime as ort

    from edgepipe.tensorrt.calibration.data import CalibrationBatches

    src = export_tiny_net(tmp_path / "tiny.onnx")
    dst = tb.convert_to_fp16(src, tmp_path / "tiny.fp16.onnx")
    model = onnx.load(str(dst))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [f32]
    assert {init.data_type for init in model.graph.initializer if len(init.dims) == 4} == {f16}  # conv weights

    x = next(iter(CalibrationBatches(small_val_folder, (320, 240), batch_size=4, max_images=None)))
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(str(src), providers=cpu).run(None, {"input": x})[0]
    half = ort.InferenceSession(str(dst), providers=cpu).run(None, {"input": x})[0]
    assert half.dtype == np.float32 and half.shape == ref.shape
    assert np.linalg.norm(half - ref) / np.linalg.norm(ref) < 1e-2


# --- progress line and logger (TensorRT's base classes faked: this checks our drawing and mapping) --


class _Base:
    def __init__(self) -> None:
        pass


def _fake_trt():
    sev = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)
    return types.SimpleNamespace(IProgressMonitor=_Base, ILogger=type("ILogger", (_Base,), {"Severity": sev}))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_monitor_draws_nested_phases_on_a_terminal():
    out = _Tty()
    mon = tb.make_progress_monitor(_fake_trt(), out)
    mon.phase_start("Building engine", None, 3)
    mon.phase_start("Tactic selection", "Building engine", 40)
    assert mon.step_complete("Tactic selection", 11) is True  # False would cancel the build
    mon.phase_finish("Tactic selection")
    mon.step_complete("Building engine", 0)  # steps are drawn at most every 0.1 s ...
    mon.phase_start("Serialization", "Building engine", 2)  # ... phase changes always
    mon.phase_finish("Serialization")
    mon.phase_finish("Building engine")
    mon.close()
    text = out.getvalue()
    assert "building: Building engine 0/3 > Tactic selection 0/40" in text
    assert "building: Building engine 1/3 > Serialization 0/2" in text
    assert text.endswith("\r")  # the line is cleared at the end


def test_progress_monitor_logs_instead_when_not_a_terminal(caplog):
    out = io.StringIO()
    mon = tb.make_progress_monitor(_fake_trt(), out)
    with caplog.at_level("INFO", logger="edgepipe.tensorrt.build"):
        mon.phase_start("Building engine", None, 3)
        mon.phase_start("Tactic selection", "Building engine", 40)
    assert out.getvalue() == ""
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["TensorRT build: Building engine"]


def test_logger_forwards_and_keeps_errors(caplog):
    errors: list[str] = []
    trt = _fake_trt()
    logger = te.make_logger(trt, errors)
    with caplog.at_level("DEBUG", logger="edgepipe.tensorrt"):
        logger.log(trt.ILogger.Severity.ERROR, "parse failed: unsupported op")
        logger.log(trt.ILogger.Severity.INFO, "detail")
    assert errors == ["parse failed: unsupported op"]
    assert [r.levelname for r in caplog.records] == ["ERROR", "DEBUG"]


# --- CLI without TensorRT -------------------------------------------------------------------------


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here: the CLI would really build")
def test_build_engine_without_tensorrt_says_so_in_one_line(tmp_path):
    model = export_tiny_net(tmp_path / "x.onnx")  # a real model, so the missing TensorRT is what is left to name
    result = CliRunner().invoke(cli, ["build-engine", str(model), "-o", str(tmp_path / "x.plan")])
    line = _one_line_error(result)
    assert "TensorRT is not installed" in line
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here: the CLI would really build")
def test_build_engine_with_a_real_model_still_names_tensorrt(tmp_path):
    model = export_tiny_net(tmp_path / "tiny.onnx")
    result = CliRunner().invoke(cli, ["build-engine", str(model), "--precision", "fp32"])
    assert "TensorRT" in _one_line_error(result)


def test_build_engine_bad_shapes_are_reported_before_anything_else(tmp_path):
    result = CliRunner().invoke(cli, ["build-engine", "x.onnx", "--shapes", "1280x720"])
    assert "--shapes must be MIN:OPT:MAX" in _one_line_error(result)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_loading_a_plan_without_tensorrt_says_so(tmp_path):
    from edgepipe.engines import load_engine

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not really a plan")
    with pytest.raises(EdgepipeError, match="TensorRT is not installed"):
        load_engine(str(plan))


def test_importing_engines_loads_no_gpu_package():
    import subprocess
    import sys

    code = ("import sys, edgepipe.engines, edgepipe.engines.tensorrt_engine, edgepipe.tensorrt.build, "
            "edgepipe.engines.cuda_memory, edgepipe.commands.calibrate, edgepipe.commands.build_engine\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'pycuda', 'cuda', 'modelopt')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
