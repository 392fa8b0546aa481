"""`edgepipe monitor`: the server side, decode, classify and report accuracy against bitrate. Its options are the
fields of MonitorSettings (server/settings.py), each declared once there; the config file, the CURVE secret key
and --insecure (shared with the capture) and the status line are the command's."""
from __future__ import annotations

import click
from click.core import ParameterSource

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.commands.options import (
    check_endpoint,
    closed_to_signals,
    security_options,
    status_mode,
    status_options,
    stop_on_signals,
    write_json,
)
from edgepipe.core.errors import EdgepipeError
from edgepipe.ops.config import config_option
from edgepipe.server.settings import CLASSIFY_FLAGS, MonitorSettings

NOTHING_ARRIVED = 3  # the monitor's exit status when not a single message arrived


def check_monitor_flags(s: MonitorSettings):
    """Every monitor flag that can be judged without opening anything, one line for the first that is wrong.
    Returns the engine trials' settings (None without --target-engines): checking them loads each engine once
    to read its model id, which need not happen twice."""
    from edgepipe.ops.metrics import parse_listen

    check_endpoint("--connect", s.connect, bind=False)
    s.selection()
    if s.control:
        check_endpoint("--control", s.control, bind=False)
    if s.metrics:
        parse_listen(s.metrics)
    if s.dashboard:
        parse_listen(s.dashboard, "dashboard")
    s.loop_settings()  # --target-agreement and its parameters
    trials = s.trial_settings()  # --target-engines
    if s.save_every is not None and not s.save_frames:
        raise EdgepipeError("--save-every needs --save-frames DIR: it says which decoded frames to save there")
    return trials


def check_classify_flags(s: MonitorSettings) -> None:
    """One line saying which classify flags do not go together."""
    ctx = click.get_current_context()
    if s.no_classify:
        given = [name for name in CLASSIFY_FLAGS if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            raise EdgepipeError(f"--no-classify and --{given[0].replace('_', '-')} are exclusive: with --no-classify "
                                "nothing is classified")
    if s.classify_every is not None and s.classify_policy != "keyframes-first":
        raise EdgepipeError(f"--classify-every ranks frames for --classify-policy keyframes-first; with "
                            f"{s.classify_policy} every frame is classified")
    if s.predictions:
        from edgepipe.server.predictions import parse_predictions_path

        parse_predictions_path(s.predictions)


def check_sink_flags(s: MonitorSettings) -> None:
    if s.record or s.save_frames:  # before the recognizer loads and sockets open
        from edgepipe.server.sinks import parse_frames_dir, parse_record_target

        if s.record:
            parse_record_target(s.record)
        if s.save_frames:
            parse_frames_dir(s.save_frames)


@click.command()
@config_option
@options_from(MonitorSettings)
@security_options
@status_options
def monitor(key, insecure, quiet, status_every, print_config, **params):
    """Server side: decode, classify and report accuracy against bitrate.

    Plain text only on loopback or with --insecure; otherwise give --key and --server-key (CURVE).
    Exits with status 3 when nothing at all arrived, saying what is the likely cause.
    """
    if print_config:
        from edgepipe.ops.config import effective_settings

        click.echo(effective_settings(click.get_current_context()))
        return
    stop = stop_on_signals()
    from edgepipe.ops.service import client_curve
    from edgepipe.server.monitor import format_table
    from edgepipe.server.service import MonitorService

    settings = build(MonitorSettings, params)
    trials = check_monitor_flags(settings)
    mode, every = status_mode(quiet, status_every)
    check_classify_flags(settings)
    check_sink_flags(settings)
    options = settings.service_options(key, insecure)
    client_curve(options.security)  # key problems before the (slow) recognizer loads
    takes = settings.selection()
    service = MonitorService(settings.connect, settings.load_recognizer(), options,
                             classifying=settings.classify_options(), predictions=settings.predictions,
                             selection=takes, rd_window_s=settings.rd_window,
                             closed_loop=settings.loop_settings(), engine_trials=trials)
    from edgepipe.ops.status import StatusReporter, monitor_line, monitor_sample

    secure = "CURVE" if key else "plain text"
    if not quiet:
        click.echo(f"monitor: listening on {settings.connect} ({secure}; {takes.describe()}; Ctrl-C to stop)",
                   err=True)
        if service.dashboard is not None:
            click.echo(f"monitor: dashboard on {service.dashboard.url}", err=True)
    status = StatusReporter(lambda: monitor_sample(service.monitor), monitor_line, mode, every)
    try:
        with status:
            service.run(stop, max_frames=settings.frames, idle_timeout=settings.idle_timeout)
    finally:
        diagnosis = service.diagnosis()  # before close: it reads the transport's counters
        service.close()  # the sinks finish writing first: the report counts what they wrote
        closed_to_signals()
        report = service.report()
        write_json(report, settings.report)
    if diagnosis is not None:
        click.echo(diagnosis, err=True)
        raise SystemExit(NOTHING_ARRIVED)
    click.echo(format_table(report))
    if report.get("closed_loop"):
        from edgepipe.server.qp_control import summary_lines

        click.echo("\n".join(summary_lines(report["closed_loop"])))
