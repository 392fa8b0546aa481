"""`edgepipe demo` declares each setting once: a DemoSettings field carrying its flag and help."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from edgepipe.commands.demo import demo
from edgepipe.commands.from_dataclass import build, flagged_fields
from edgepipe.core.options import flag_name
from edgepipe.demo import DEFAULT_QPS, DemoSettings


def argv_of(settings: DemoSettings) -> list[str]:
    argv = []
    for field, _ in flagged_fields(DemoSettings):
        value = getattr(settings, field.name)
        if isinstance(value, tuple):  # a repeatable flag
            argv += [a for v in value for a in (flag_name(field), str(v))]
        elif value is not None:
            argv += [flag_name(field), str(value)]
    return argv


def parsed(argv: list[str]) -> DemoSettings:
    return build(DemoSettings, demo.make_context("demo", argv).params)


def test_every_setting_is_a_flag_with_help():
    options = {p.name: p for p in demo.params}
    assert set(options) == {f.name for f in dataclasses.fields(DemoSettings)}
    assert all(p.help for p in options.values())
    assert options["engines"].opts == ["--engine"] and options["engines"].multiple
    assert options["qps"].opts == ["--qp"] and options["qps"].multiple
    assert options["report_path"].opts == ["--report"]


def test_the_settings_round_trip_through_the_command_line():
    settings = DemoSettings(data=Path("val"), engines=("none", "ours.onnx"), qps=(25, 45), recognizer="vgg16",
                            weights="vgg16.pth", report_path=Path("r.json"))
    assert parsed(argv_of(settings)) == settings
    assert parsed([]) == DemoSettings() and DemoSettings().qps == DEFAULT_QPS and DemoSettings().engines == ()
