"""`edgepipe monitor`: the server side, decode, classify and report accuracy against bitrate."""
from __future__ import annotations

import click
from click.core import ParameterSource

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
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS, VIEWS
from edgepipe.server.classify import POLICIES, ClassifyOptions

NOTHING_ARRIVED = 3  # the monitor's exit status when not a single message arrived
DEFAULTS = ClassifyOptions(policy="keyframes-first")  # the command's: a live camera never waits for its recognizer
CLASSIFY_FLAGS = ("classify_policy", "classify_every", "classify_queue", "classify_batch", "predictions")


def classify_options(f):
    """The flags that say how decoded frames reach the recognizer (docs/monitor.md)."""
    f = click.option("--predictions", default=None, metavar="FILE.jsonl",
                     help="Append one JSON line per classified frame to FILE: stream, epoch, seq, codec, QP, model, "
                          "bytes, capture time, top-5 classes with names and probabilities, and the label when "
                          "the frame carries one.")(f)
    f = click.option("--classify-batch", type=click.IntRange(min=1), default=DEFAULTS.batch, show_default=True,
                     metavar="N", help="Frames per recognizer call at most, across streams (frames waiting are "
                                       "classified together; at most --classify-queue).")(f)
    f = click.option("--classify-queue", type=click.IntRange(min=1), default=DEFAULTS.queue, show_default=True,
                     metavar="N", help="Decoded frames that may wait for the recognizer (also at most 64 MiB of "
                                       "pixels); beyond that the policy chooses.")(f)
    f = click.option("--classify-every", type=click.IntRange(min=1), default=None, metavar="N",
                     help="With keyframes-first: every Nth frame of a stream (seq % N == 0) is kept before the "
                          f"rest [default: {DEFAULTS.every}].")(f)
    return click.option("--classify-policy", type=click.Choice(POLICIES), default=DEFAULTS.policy,
                        show_default=True,
                        help="What is classified when the recognizer cannot keep up with decoding. keyframes-first: "
                             "keyframes, then every Nth frame, then the rest, as the queue has room; the others are "
                             "counted unclassified (never lost), and bitrate and loss still count every frame. all: "
                             "every frame; decoding waits for the recognizer, so a live capture that outruns it "
                             "drops frames (counted lost): for labelled replays.")(f)


def check_classify_flags(no_classify: bool, policy: str, every: int | None, queue: int, batch: int,
                         predictions: str | None) -> ClassifyOptions:
    """The classify flags as options, or one line saying which do not go together."""
    ctx = click.get_current_context()
    if no_classify:
        given = [name for name in CLASSIFY_FLAGS if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            raise EdgepipeError(f"--no-classify and --{given[0].replace('_', '-')} are exclusive: with --no-classify "
                                "nothing is classified")
    if every is not None and policy != "keyframes-first":
        raise EdgepipeError(f"--classify-every ranks frames for --classify-policy keyframes-first; with {policy} "
                            "every frame is classified")
    if predictions:
        from edgepipe.server.predictions import parse_predictions_path

        parse_predictions_path(predictions)
    return ClassifyOptions(policy=policy, every=every or DEFAULTS.every, queue=queue, batch=batch)


@click.command()
@config_option
@click.option("--connect", required=True,
              help="ZeroMQ endpoint of a capture, e.g. tcp://camera:5555, or of a relay's monitors side, "
                   "e.g. tcp://relay:5556.")
@click.option("--streams", default=None, metavar="ID,ID",
              help="Take only these streams (their ids, comma-separated), e.g. cam1,cam3 [default: every stream].")
@click.option("--shard", default=None, metavar="K/N",
              help="Take one shard of the streams, by hash: those whose bucket (the first byte of SHA-256 of the stream id) "
                   "% N == K; N monitors with 0/N .. N-1/N take every stream once. N is 1..256.")
@click.option("--control", default=None,
              help="The capture's control endpoint, e.g. tcp://camera:5556: ask for a keyframe after a loss. It "
                   "goes straight to the capture, never through a relay (docs/relay.md).")
@security_options
@click.option("--server-key", default=None,
              help="The capture's CURVE public key: a .key file, z85:KEY or credential:NAME.")
@click.option("--metrics", default=None, help="Serve Prometheus metrics on PORT, :PORT or HOST:PORT.")
@click.option("--dashboard", default=None, metavar="HOST:PORT",
              help="Serve a live web page on HOST:PORT (PORT alone: 127.0.0.1; :PORT: every interface): per "
                   "stream, the RD curve (kbit/s against top-1 and agreement per operating point), bitrate, "
                   "losses and the operating point, updated every second; docs/monitor.md.")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Recognizer weights (vgg16).")
@click.option("--recognizer-view", type=click.Choice(VIEWS), default="centre-crop", show_default=True,
              help="What the recognizer sees of a frame: its centre square at 224 (as trained; a 720p frame costs "
                   "what a 224 one does), the whole frame as it is, or square tiles across it, probabilities averaged.")
@click.option("--recognizer-server", default=None, metavar="grpc://HOST:PORT",
              help="Classify on an NVIDIA Triton server (model: the --recognizer name); see docs/triton.md.")
@click.option("--no-classify", is_flag=True, help="Account rate and loss only.")
@classify_options
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
def monitor(connect, streams, shard, control, key, insecure, server_key, metrics, dashboard, recognizer, weights,
            recognizer_view, recognizer_server, no_classify, classify_policy, classify_every, classify_queue,
            classify_batch, predictions, report_path, frames, idle_timeout, record, save_frames, save_every, quiet,
            status_every, print_config):
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
    from edgepipe.transport.topics import selection

    check_endpoint("--connect", connect, bind=False)
    takes = selection(streams, shard)
    if control:
        check_endpoint("--control", control, bind=False)
    if metrics:
        parse_listen(metrics)
    if dashboard:
        parse_listen(dashboard, "dashboard")
    if save_every is not None and not save_frames:
        raise EdgepipeError("--save-every needs --save-frames DIR: it says which decoded frames to save there")
    mode, every = status_mode(quiet, status_every)
    classifying = check_classify_flags(no_classify, classify_policy, classify_every, classify_queue, classify_batch,
                                       predictions)
    if record or save_frames:  # before the recognizer loads and sockets open
        from edgepipe.server.sinks import parse_frames_dir, parse_record_target

        if record:
            parse_record_target(record)
        if save_frames:
            parse_frames_dir(save_frames)
    options = ServiceOptions(control=control, metrics=metrics, dashboard=dashboard, record=record,
                             save_frames=save_frames, save_every=save_every or 1,
                             security=SecurityOptions(key=key, server_key=server_key, insecure=insecure))
    client_curve(options.security)  # key problems before the (slow) recognizer loads
    classify_with = None
    if not no_classify:
        if recognizer_server:  # one line, no start, when the URL, tritonclient, the server or the model is wrong
            from edgepipe.recognition.triton_client import TritonClassifier

            classifier = TritonClassifier(recognizer_server, recognizer, view=recognizer_view)
        else:
            from edgepipe.recognition import Classifier

            classifier = Classifier(recognizer, weights, view=recognizer_view)
        from edgepipe.server.classify import Recognizer

        classify_with = Recognizer.from_classifier(classifier)  # batched top-5, its view's crop before batching
    from edgepipe.ops.status import StatusReporter, monitor_line, monitor_sample

    service = MonitorService(connect, classify_with, options, classifying=classifying, predictions=predictions,
                             selection=takes)
    secure = "CURVE" if key else "plain text"
    if not quiet:
        click.echo(f"monitor: listening on {connect} ({secure}; {takes.describe()}; Ctrl-C to stop)", err=True)
        if service.dashboard is not None:
            click.echo(f"monitor: dashboard on {service.dashboard.url}", err=True)
    status = StatusReporter(lambda: monitor_sample(service.monitor), monitor_line, mode, every)
    try:
        with status:
            service.run(stop, max_frames=frames, idle_timeout=idle_timeout)
    finally:
        diagnosis = service.diagnosis()  # before close: it reads the transport's counters
        service.close()  # the sinks finish writing first: the report counts what they wrote
        closed_to_signals()
        report = service.report()
        write_json(report, report_path)
    if diagnosis is not None:
        click.echo(diagnosis, err=True)
        raise SystemExit(NOTHING_ARRIVED)
    click.echo(format_table(report))
