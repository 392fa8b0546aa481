"""`edgepipe eval` declares each setting once: an EvalSettings field carrying its flag and help."""
from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.commands.eval import evaluate
from edgepipe.commands.from_dataclass import build, flagged_fields
from edgepipe.core.options import flag_name
from edgepipe.evaluation.config import EvalSettings


def argv_of(settings: EvalSettings) -> list[str]:
    argv = []
    for field, _ in flagged_fields(EvalSettings):
        value, spec = getattr(settings, field.name), field.metadata
        if isinstance(value, bool):
            inverted = spec["edgepipe.flag"]["invert"]
            argv += [flag_name(field)] if value != inverted else []
        elif value is not None:
            argv += [flag_name(field), ",".join(value) if isinstance(value, tuple) else str(value)]
    return argv


def parsed(argv: list[str]) -> EvalSettings:
    return build(EvalSettings, evaluate.make_context("eval", argv).params)


def test_every_setting_is_a_flag_with_help():
    options = {p.name: p for p in evaluate.params}
    assert set(options) == {f.name for f in dataclasses.fields(EvalSettings)}
    assert all(p.help for p in options.values())
    assert options["progress"].opts == ["--no-progress"] and options["data"].required and options["out"].required


def test_the_settings_round_trip_through_the_command_line():
    settings = EvalSettings(data="val", out="o", recognizer="vgg16", weights="w.pth", pre=("none", "ours.onnx"),
                            codec=("jpeg2000",), points=6, max_bpp=0.5, limit=40, jobs=1, recognizer_view="tiles",
                            compare_to="ours", cached_only=True, progress=False)
    assert parsed(argv_of(settings)) == settings
    assert parsed(["--data", "d", "--out", "o"]) == EvalSettings(data="d", out="o")
    assert EvalSettings(data="d", out="o", pre=" none, tvl1 ,", codec="hevc").pre == ("none", "tvl1")


@pytest.mark.parametrize("args, message", [
    (["--points", "x"], "'x' is not a valid integer"),
    (["--recognizer-view", "whole"], "'whole' is not one of"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--compare-to", "ours"], "--compare-to ours: not one of the pre-transforms (none, tvl1)"),
    (["--compare-to", "none"], "--compare-to none: every BD-rate is already against the codec alone"),
])
def test_bad_flags_are_one_line(tmp_path, small_val_folder, args, message):
    result = CliRunner().invoke(cli, ["eval", "--data", str(small_val_folder), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
