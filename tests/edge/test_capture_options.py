"""`edgepipe capture` declares each loop setting once: a CaptureSettings field carrying its flag and help."""
from __future__ import annotations

import dataclasses

from edgepipe.commands.capture import capture
from edgepipe.commands.from_dataclass import build, flagged_fields
from edgepipe.core.options import flag_name
from edgepipe.edge.capture import CaptureSettings

# the command's own flags (service, security, output, status line), not the loop's
COMMAND_FLAGS = {"config", "print_config", "control", "key", "insecure", "allow", "metrics", "stats_path", "quiet",
                 "status_every"}
TUNING = {"queue_size", "send_stall_s", "keyframe_min_interval_s"}  # loop settings without a flag


def argv_of(settings: CaptureSettings) -> list[str]:
    """The command line that asks for `settings` (every flagged field, defaults included)."""
    argv = []
    for field, _ in flagged_fields(CaptureSettings):
        value = getattr(settings, field.name)
        if isinstance(value, bool):
            argv += [flag_name(field)] if value else []
        elif value is not None:
            argv += [flag_name(field), "x".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return argv


def parsed(argv: list[str]) -> CaptureSettings:
    return build(CaptureSettings, capture.make_context("capture", argv).params)


def test_every_setting_is_a_flag_with_help():
    options = {p.name: p for p in capture.params}
    flagged = {f.name for f, _ in flagged_fields(CaptureSettings)}
    assert flagged == {f.name for f in dataclasses.fields(CaptureSettings)} - TUNING
    assert set(options) == flagged | COMMAND_FLAGS
    assert all(options[name].help for name in flagged)
    assert options["loop"].opts == ["--loop"] and options["wait_subscriber_s"].opts == ["--wait-subscriber"]
    assert options["reference_budget_kbit"].opts == ["--reference-budget"]
    assert options["source"].required and options["publish"].required


def test_the_settings_round_trip_through_the_command_line():
    settings = CaptureSettings(source="folder:val", publish="pub+connect:tcp://relay:5555", engine="ours",
                               codec="jpeg2000", qp=200, gop=0, preset="fast", encoder="auto", frames=7,
                               size=(640, 360), crop=True, realtime=True, fps=12.5, loop=True, stream_id="door",
                               wait_subscriber_s=0.0, reference_every=5, reference_budget_kbit=300.0,
                               reference_share=0.1, reference_view="native", threads="2,engine=1")
    assert parsed(argv_of(settings)) == settings
    crf = CaptureSettings(source="0", publish="tcp://0.0.0.0:5555", crf=23.0, stream_id="cam")
    assert parsed(argv_of(crf)) == crf


def test_the_defaults_are_the_dataclass_defaults():
    settings = parsed(["--source", "0", "--publish", "tcp://0.0.0.0:5555", "--stream-id", "cam"])
    assert settings == CaptureSettings(source="0", publish="tcp://0.0.0.0:5555", stream_id="cam")
