"""`edgepipe monitor`: the server side, decode, classify and report accuracy against bitrate."""
from __future__ import annotations

import click

from edgepipe.commands.options import (
    check_endpoint,
    security_options,
    status_mode,
    status_options,
    stop_on_signals,
    write_json,
)
from edgepipe.core.errors import EdgepipeError
from edgepipe.ops.config import config_option
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS, VIEWS

NOTHING_ARRIVED = 3  # the monitor's exit status when not a single message arrived


@click.command()
@config_option
@click.option("--connect", required=True, help="ZeroMQ endpoint of a capture, e.g. tcp://camera:5555.")
@click.option("--control", default=None,
              help="The capture's control endpoint, e.g. tcp://camera:5556: ask for a keyframe after a loss.")
@security_options
@click.option("--server-key", default=None,
              help="The capture's CURVE public key: a .key file, z85:KEY or credential:NAME.")
@click.option("--metrics", default=None, help="Serve Prometheus metrics on PORT, :PORT or HOST:PORT.")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Recognizer weights (vgg16).")
@click.option("--recognizer-view", type=click.Choice(VIEWS), default="centre-crop", show_default=True,
              help="What the recognizer sees of a frame: its centre square at 224 (as trained; a 720p frame costs "
                   "what a 224 one does), the whole frame as it is, or square tiles across it, probabilities averaged.")
@click.option("--recognizer-server", default=None, metavar="grpc://HOST:PORT",
              help="Classify on an NVIDIA Triton server (model: the --recognizer name); see docs/triton.md.")
@click.option("--no-classify", is_flag=True, help="Account rate and loss only.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Stop after N decoded frames.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after S seconds without a message.")
@click.option("--record", default=None, metavar="out.mkv",
              help="Record the received stream as it came (no re-encoding) into a .mkv, .mp4 or .mov file "
                   "(file://PATH too); one file per stream and epoch: PATH, PATH-1, ...; never overwrites.")
@click.option("--save-frames", default=None, metavar="DIR",
              help="Save decoded frames as PNG in DIR, named STREAM-EPOCH-SEQ.png.")
@click.option("--save-every", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --save-frames: every Nth decoded frame of each stream [default: 1, every frame].")
@status_options
def monitor(connect, control, key, insecure, server_key, metrics, recognizer, weights, recognizer_view,
            recognizer_server, no_classify, report_path, frames, idle_timeout, record, save_frames, save_every,
            quiet, status_every, print_config):
    """Server side: decode, classify and report accuracy against bitrate.

    Plain text only on loopback or with --insecure; otherwise give --key and --server-key (CURVE).
    Exits with status 3 when nothing at all arrived, saying what is the likely cause.
    """
    if print_config:
        from edgepipe.ops.config import effective_settings

        click.echo(effective_settings(click.get_current_context()))
        return
    stop = stop_on_signals()
    from edgepipe.ops.metrics import parse_listen
    from edgepipe.ops.service import SecurityOptions, ServiceOptions, client_curve
    from edgepipe.server.monitor import format_table
    from edgepipe.server.service import MonitorService

    check_endpoint("--connect", connect, bind=False)
    if control:
        check_endpoint("--control", control, bind=False)
    if metrics:
        parse_listen(metrics)
    if save_every is not None and not save_frames:
        raise EdgepipeError("--save-every needs --save-frames DIR: it says which decoded frames to save there")
    mode, every = status_mode(quiet, status_every)
    if record or save_frames:  # before the recognizer loads and sockets open
        from edgepipe.server.sinks import parse_frames_dir, parse_record_target

        if record:
            parse_record_target(record)
        if save_frames:
            parse_frames_dir(save_frames)
    options = ServiceOptions(control=control, metrics=metrics, record=record, save_frames=save_frames,
                             save_every=save_every or 1,
                             security=SecurityOptions(key=key, server_key=server_key, insecure=insecure))
    client_curve(options.security)  # key problems before the (slow) recognizer loads
    classify = None
    if not no_classify:
        if recognizer_server:  # one line, no start, when the URL, tritonclient, the server or the model is wrong
            from edgepipe.recognition.triton_client import TritonClassifier

            classifier = TritonClassifier(recognizer_server, recognizer, view=recognizer_view)
        else:
            from edgepipe.recognition import Classifier

            classifier = Classifier(recognizer, weights, view=recognizer_view)
        classify = lambda image: int(classifier.top1(image[None])[0])  # noqa: E731
    from edgepipe.ops.status import StatusReporter, monitor_line, monitor_sample

    service = MonitorService(connect, classify, options)
    secure = "CURVE" if key else "plain text"
    if not quiet:
        click.echo(f"monitor: listening on {connect} ({secure}; Ctrl-C to stop)", err=True)
    status = StatusReporter(lambda: monitor_sample(service.monitor), monitor_line, mode, every)
    try:
        with status:
            service.run(stop, max_frames=frames, idle_timeout=idle_timeout)
    finally:
        diagnosis = service.diagnosis()  # before close: it reads the transport's counters
        service.close()  # the sinks finish writing first: the report counts what they wrote
        report = service.report()
        write_json(report, report_path)
    if diagnosis is not None:
        click.echo(diagnosis, err=True)
        raise SystemExit(NOTHING_ARRIVED)
    click.echo(format_table(report))
