"""`edgepipe build-engine` and `edgepipe calibrate` declare each setting once: a BuildSettings or CalibrateSettings
field carrying its flag and help (the MODEL argument is the command's, and arrives as `model`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.commands.build_engine import build_engine
from edgepipe.commands.calibrate import calibrate
from edgepipe.commands.from_dataclass import build, flagged_fields
from edgepipe.core.options import flag_name
from edgepipe.tensorrt.settings import BuildSettings, CalibrateSettings

COMMANDS = [(build_engine, BuildSettings), (calibrate, CalibrateSettings)]


def argv_of(settings) -> list[str]:
    """The command line that asks for `settings` (the model, then every flagged field that is set)."""
    cls = type(settings)
    argv = [settings.model]
    for field, _ in flagged_fields(cls):
        value = getattr(settings, field.name)
        if isinstance(value, bool):
            argv += [flag_name(field)] if value != field.metadata["edgepipe.flag"]["invert"] else []
        elif value is not None:
            argv += [flag_name(field), str(value)]
    return argv


def parsed(command, cls, argv: list[str]):
    params = dict(command.make_context(command.name, argv).params)
    return build(cls, params, model=params.pop("model"))


@pytest.mark.parametrize("command, cls", COMMANDS)
def test_every_setting_is_a_flag_with_help(command, cls):
    options = {p.name: p for p in command.params if p.param_type_name == "option"}
    assert [p.name for p in command.params if p.param_type_name == "argument"] == ["model"]
    assert set(options) == {f.name for f in dataclasses.fields(cls)} - {"model"}
    assert all(p.help for p in options.values())
    assert options["output"].opts == ["-o", "--output"]


def test_the_flag_names_are_the_commands():
    build_opts = {p.name: p.opts for p in build_engine.params}
    assert build_opts["progress"] == ["--no-progress"] and build_opts["calib_cache"] == ["--calib-cache"]
    calib_opts = {p.name: p for p in calibrate.params}
    assert calib_opts["batch_size"].opts == ["--batch"] and calib_opts["max_images"].opts == ["--images"]
    assert calib_opts["data"].required and list(calib_opts["format"].type.choices) == ["auto", "cache", "qdq"]


def test_the_settings_round_trip_through_the_command_line():
    settings = BuildSettings(model="ours", output=Path("o.plan"), precision="int8", shapes="64x64:320x240:640x480",
                             max_batch=4, workspace="512M", calib_data=Path("val"), calib_cache=Path("c.calib"),
                             calib_size="320x240", calib_batch=4, calib_images=64, progress=False)
    assert parsed(build_engine, BuildSettings, argv_of(settings)) == settings
    assert parsed(build_engine, BuildSettings, ["m.onnx"]) == BuildSettings(model="m.onnx")
    settings = CalibrateSettings(model="ours", data=Path("val"), output=Path("o.int8.onnx"), format="qdq",
                                 size="320x240", batch_size=4, max_images=64, workspace="2G")
    assert parsed(calibrate, CalibrateSettings, argv_of(settings)) == settings
    assert (parsed(calibrate, CalibrateSettings, ["m.onnx", "--data", "d"])
            == CalibrateSettings(model="m.onnx", data=Path("d")))


def test_the_defaults_make_the_builders_defaults():
    from edgepipe.tensorrt.build import BuildOptions

    options, default = BuildSettings(model="m.onnx").options(), BuildOptions()
    assert (options.precision, options.shapes, options.workspace, options.progress) == (
        default.precision, default.shapes, default.workspace, default.progress)
    assert options.int8 == default.int8


@pytest.mark.parametrize("args, message", [
    (["build-engine", "x.onnx", "--precision", "int4"], "'int4' is not one of"),
    (["build-engine", "x.onnx", "--max-batch", "two"], "'two' is not a valid integer"),
    (["build-engine", "x.onnx", "--workspace", "lots"], "workspace must look like 512M or 2G"),
    (["calibrate", "x.onnx"], "Missing option '--data'"),
    (["calibrate", "x.onnx", "--data", "d", "--format", "plan"], "'plan' is not one of"),
])
def test_bad_flags_are_one_line(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
