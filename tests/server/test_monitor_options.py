"""`edgepipe monitor` declares each setting once: a MonitorSettings field carrying its flag and help."""
from __future__ import annotations

import dataclasses

from edgepipe.commands.from_dataclass import build, flagged_fields
from edgepipe.commands.monitor import monitor
from edgepipe.core.options import flag_name, flag_of
from edgepipe.server.settings import CLASSIFY_DEFAULTS, MonitorSettings

# the command's own flags: the config file, this side's secret key and --insecure (shared with the capture),
# the status line
COMMAND_FLAGS = {"config", "print_config", "key", "insecure", "quiet", "status_every"}


def argv_of(settings: MonitorSettings) -> list[str]:
    argv = []
    for field, _ in flagged_fields(MonitorSettings):
        value = getattr(settings, field.name)
        if isinstance(value, bool):  # an inverted flag (--target-per-qp) is given to set False
            argv += [flag_name(field)] if value != flag_of(field)["invert"] else []
        elif value is not None:
            argv += [flag_name(field), str(value)]
    return argv


def parsed(argv: list[str]) -> MonitorSettings:
    return build(MonitorSettings, monitor.make_context("monitor", argv).params)


def test_every_setting_is_a_flag_with_help():
    options = {p.name: p for p in monitor.params}
    fields = {f.name for f in dataclasses.fields(MonitorSettings)}
    assert fields == {f.name for f, _ in flagged_fields(MonitorSettings)}
    assert set(options) == fields | COMMAND_FLAGS
    assert all(options[name].help for name in fields)
    assert options["report"].opts == ["--report"] and options["dashboard"].opts == ["--dashboard"]
    assert options["connect"].required


def test_the_settings_round_trip_through_the_command_line():
    settings = MonitorSettings(connect="tcp://relay:5556", shard="1/4", control="tcp://camera:5556",
                               server_key="z85:x", metrics=":9102", dashboard="127.0.0.1:8080", recognizer="vgg16",
                               weights="vgg16.pth", recognizer_view="tiles", recognizer_server="grpc://t:8001",
                               classify_policy="keyframes-first", classify_every=3, classify_queue=8, classify_batch=4,
                               predictions="p.jsonl", report="r.json", frames=100, idle_timeout=2.5, record="o.mkv",
                               save_frames="frames", save_every=10, target_share=False)
    assert parsed(argv_of(settings)) == settings
    quiet = MonitorSettings(connect="tcp://camera:5555", streams="cam1,cam3", no_classify=True,
                            classify_policy="all")
    assert parsed(argv_of(quiet)) == quiet


def test_the_defaults_are_the_commands():
    settings = parsed(["--connect", "tcp://camera:5555"])
    assert settings == MonitorSettings(connect="tcp://camera:5555")
    assert settings.classify_options() == CLASSIFY_DEFAULTS and settings.classify_policy == "keyframes-first"
    assert settings.selection().describe() == "every stream"
    options = settings.service_options("k.key_secret", True)
    assert options.save_every == 1 and options.security.key == "k.key_secret" and options.security.insecure
