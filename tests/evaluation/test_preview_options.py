"""`edgepipe preview` declares each setting once: a PreviewSettings field carrying its flag and help (the
IMAGE|VIDEO argument is the command's, and arrives as `source`; --json is the command's own)."""
from __future__ import annotations

import dataclasses

from edgepipe.commands.from_dataclass import build, flagged_fields
from edgepipe.commands.preview import preview
from edgepipe.core.options import flag_name
from edgepipe.evaluation.preview import PreviewSettings


def argv_of(settings: PreviewSettings) -> list[str]:
    argv = [settings.source]
    for field, _ in flagged_fields(PreviewSettings):
        value = getattr(settings, field.name)
        if value is not None:
            argv += [flag_name(field), str(value)]
    return argv


def parsed(argv: list[str]) -> PreviewSettings:
    params = dict(preview.make_context("preview", argv).params)
    params.pop("as_json")
    return build(PreviewSettings, params, source=params.pop("source"))


def test_every_setting_is_a_flag_with_help():
    options = {p.name: p for p in preview.params if p.param_type_name == "option"}
    assert [p.name for p in preview.params if p.param_type_name == "argument"] == ["source"]
    assert set(options) == {f.name for f in dataclasses.fields(PreviewSettings)} - {"source"} | {"as_json"}
    assert all(p.help for p in options.values())
    assert options["out"].opts == ["-o", "--out"] and options["out"].required
    assert options["quality"].opts == ["--qp"] and options["as_json"].opts == ["--json"]


def test_the_settings_round_trip_through_the_command_line():
    settings = PreviewSettings(source="clip.mp4", engine="ours", out="p.png", codec="jpeg2000", quality=200,
                               frame=3, recognizer="vgg16", weights="vgg16.pth")
    assert parsed(argv_of(settings)) == settings
    assert parsed(["a.jpg", "-o", "p.png"]) == PreviewSettings(source="a.jpg", out="p.png")
    assert parsed(["a.jpg", "-o", "p.png", "--json"]).codec == "hevc"
