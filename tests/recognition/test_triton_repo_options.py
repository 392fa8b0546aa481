"""`edgepipe recognizer-repo` declares each setting once: a RepoSettings field carrying its flag and help."""
from __future__ import annotations

import dataclasses

from edgepipe.commands.from_dataclass import build, flagged_fields
from edgepipe.commands.recognizer_repo import recognizer_repo
from edgepipe.core.options import flag_name
from edgepipe.recognition.triton_repo import DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US, RepoSettings


def argv_of(settings: RepoSettings) -> list[str]:
    argv = []
    for field, _ in flagged_fields(RepoSettings):
        value = getattr(settings, field.name)
        if value is not None:
            argv += [flag_name(field), str(value)]
    return argv


def parsed(argv: list[str]) -> RepoSettings:
    return build(RepoSettings, recognizer_repo.make_context("recognizer-repo", argv).params)


def test_every_setting_is_a_flag_with_help():
    options = {p.name: p for p in recognizer_repo.params}
    assert set(options) == {f.name for f in dataclasses.fields(RepoSettings)}
    assert all(p.help for p in options.values())
    assert options["out"].required and options["max_batch"].opts == ["--max-batch"]


def test_the_settings_round_trip_through_the_command_line():
    settings = RepoSettings(out="repo", recognizer="vgg16", weights="vgg16.pth", model_name="vgg", max_batch=8,
                            queue_delay_us=100)
    assert parsed(argv_of(settings)) == settings
    defaults = parsed(["--out", "repo"])
    assert defaults == RepoSettings(out="repo")
    assert (defaults.max_batch, defaults.queue_delay_us) == (DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US)
