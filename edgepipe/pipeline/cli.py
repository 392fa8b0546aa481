"""CLI commands of the pipeline: capture (device), monitor (server), demo (both on loopback)."""
from __future__ import annotations

import logging
import signal
import threading

import click

from edgepipe.pipeline.config import config_option
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS

log = logging.getLogger(__name__)


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM ask for a clean stop (drain, flush the encoder, close sockets); a second one aborts."""
    stop = threading.Event()

    def handler(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("signal %d: stopping cleanly", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _security_options(f):
    f = click.option("--insecure", is_flag=True,
                     help="Allow plain text beyond loopback (anyone on the network can read and inject).")(f)
    return click.option("--key", default=None,
                        help="This side's CURVE secret key: a .key_secret file or credential:NAME (systemd).")(f)


def _write_json(data: dict, path: str | None) -> None:
    if path:
        from edgepipe.pipeline.monitor import write_report

        write_report(data, path)


@click.command()
@config_option
@click.option("--source", required=True, help="/dev/video0 or an index, rtsp://..., a video file, or folder:PATH.")
@click.option("--engine", default="none", show_default=True,
              help="Pre-transform: a .onnx, .pt or .plan file, a shipped model name (ours), or none.")
@click.option("--publish", required=True, help="ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:5555.")
@click.option("--control", default=None,
              help="Endpoint to bind for keyframe requests from monitors, e.g. tcp://0.0.0.0:5556.")
@_security_options
@click.option("--allow", multiple=True,
              help="Monitor public key allowed to connect (.key file, folder of them, z85:KEY); repeatable.")
@click.option("--metrics", default=None, help="Serve Prometheus metrics on PORT, :PORT or HOST:PORT.")
@click.option("--codec", type=click.Choice(["hevc", "jpeg", "jpeg2000"]), default="hevc", show_default=True)
@click.option("--qp", type=int, default=32, show_default=True,
              help="HEVC QP (0-51); JPEG quality or JPEG 2000 compression x1000 for those codecs.")
@click.option("--crf", type=float, default=None, help="HEVC constant rate factor instead of a fixed QP.")
@click.option("--gop", type=int, default=30, show_default=True, help="Frames per keyframe; 0 = intra-only.")
@click.option("--preset", default="ultrafast", show_default=True, help="x265 preset.")
@click.option("--encoder", type=click.Choice(["libx265", "hevc_nvenc", "auto"]), default="libx265", show_default=True)
@click.option("--frames", type=int, default=None, help="Stop after N frames.")
@click.option("--size", default=None, help="Resize frames to WIDTHxHEIGHT (made even).")
@click.option("--crop", is_flag=True, help="Centre-crop to the --size aspect before resizing.")
@click.option("--realtime", is_flag=True, help="Pace files and folders at the source's frame rate (or --fps).")
@click.option("--fps", type=float, default=None, help="Pacing rate for sources without one (folders).")
@click.option("--loop", "loop_source", is_flag=True, help="Replay a file or folder forever.")
@click.option("--stream-id", default="cam0", show_default=True, help="Name of this camera in the stream header.")
@click.option("--wait-subscriber", type=float, default=0.0, help="Wait up to S seconds for a monitor to join.")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False), default=None, help="Write loop statistics as JSON.")
def capture(source, engine, publish, control, key, insecure, allow, metrics, codec, qp, crf, gop, preset, encoder,
            frames, size, crop, realtime, fps, loop_source, stream_id, wait_subscriber, stats_path, print_config):
    """Edge loop: source -> pre-transform -> encoder -> ZeroMQ PUB.

    Stages run concurrently with bounded queues; SIGINT/SIGTERM stop cleanly, flushing the encoder.
    Plain text only on loopback or with --insecure; otherwise give --key and --allow (CURVE).
    """
    if print_config:
        from edgepipe.pipeline.config import effective_settings

        click.echo(effective_settings(click.get_current_context()))
        return
    stop = _stop_on_signals()  # first: a SIGTERM while the model loads still ends cleanly
    from edgepipe.pipeline.capture import CaptureSettings
    from edgepipe.pipeline.codecs import check_hevc_support
    from edgepipe.pipeline.service import CaptureService, SecurityOptions, ServiceOptions
    from edgepipe.pipeline.sources import parse_size

    if codec == "hevc" and encoder != "auto":
        check_hevc_support(encoder)
    settings = CaptureSettings(source=source, publish=publish, engine=engine, codec=codec, qp=qp, crf=crf, gop=gop,
                               preset=preset, encoder=encoder, frames=frames, size=parse_size(size), crop=crop,
                               realtime=realtime, fps=fps, loop=loop_source, stream_id=stream_id,
                               wait_subscriber_s=wait_subscriber)
    options = ServiceOptions(control=control, metrics=metrics,
                             security=SecurityOptions(key=key, allow=tuple(allow), insecure=insecure))
    service = CaptureService(settings, options)
    loop = service.loop
    secure = "CURVE" if service.curve else "plain text"
    click.echo(f"capture: {loop.source.name} -> {loop.engine.model_id} -> {codec} -> {publish} ({secure})", err=True)
    try:
        stats = service.run(stop)
    finally:
        service.close()  # encoder already flushed by run(); sockets close with a bounded linger
    summary = stats.as_dict()
    summary["epoch"] = loop.epoch
    _write_json(summary, stats_path)  # atomic: whole or not at all
    drops = ", ".join(f"{k}={v}" for k, v in summary["drops"].items()) or "none"
    click.echo(f"capture: sent {summary['frames_sent']} frames, {summary['bytes_sent']} bytes, "
               f"{summary['loop_fps']} frames/s; dropped: {drops}", err=True)


@click.command()
@config_option
@click.option("--connect", required=True, help="ZeroMQ endpoint of a capture, e.g. tcp://camera:5555.")
@click.option("--control", default=None,
              help="The capture's control endpoint, e.g. tcp://camera:5556: ask for a keyframe after a loss.")
@_security_options
@click.option("--server-key", default=None,
              help="The capture's CURVE public key: a .key file, z85:KEY or credential:NAME.")
@click.option("--metrics", default=None, help="Serve Prometheus metrics on PORT, :PORT or HOST:PORT.")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Recognizer weights (vgg16).")
@click.option("--no-classify", is_flag=True, help="Account rate and loss only.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
@click.option("--frames", type=int, default=None, help="Stop after N decoded frames.")
@click.option("--idle-timeout", type=float, default=None, help="Stop after S seconds without a message.")
def monitor(connect, control, key, insecure, server_key, metrics, recognizer, weights, no_classify, report_path,
            frames, idle_timeout, print_config):
    """Server side: decode, classify and report accuracy against bitrate.

    Plain text only on loopback or with --insecure; otherwise give --key and --server-key (CURVE).
    """
    if print_config:
        from edgepipe.pipeline.config import effective_settings

        click.echo(effective_settings(click.get_current_context()))
        return
    stop = _stop_on_signals()
    from edgepipe.pipeline.monitor import format_table
    from edgepipe.pipeline.service import MonitorService, SecurityOptions, ServiceOptions, client_curve

    options = ServiceOptions(control=control, metrics=metrics,
                             security=SecurityOptions(key=key, server_key=server_key, insecure=insecure))
    client_curve(options.security)  # key problems before the (slow) recognizer loads
    classify = None
    if not no_classify:
        from edgepipe.recognition import Classifier

        classifier = Classifier(recognizer, weights)
        classify = lambda image: int(classifier.top1(image[None])[0])  # noqa: E731
    service = MonitorService(connect, classify, options)
    secure = "CURVE" if key else "plain text"
    click.echo(f"monitor: listening on {connect} ({secure}; Ctrl-C to stop)", err=True)
    try:
        service.run(stop, max_frames=frames, idle_timeout=idle_timeout)
    finally:
        service.close()
        report = service.monitor.report()
        _write_json(report, report_path)
    click.echo(format_table(report))


@click.command()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Labelled ImageNet-layout folder (default: the 50 bundled Imagenette images).")
@click.option("--engine", "engines", multiple=True,
              help="Pre-transform(s) to compare (repeatable; default: none and the shipped ours).")
@click.option("--qp", "qps", type=int, multiple=True, help="HEVC QPs (repeatable; default 27 32 37 42).")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
def demo(data, engines, qps, recognizer, weights, report_path):
    """Whole pipeline on loopback with real images; prints the accuracy/bitrate table."""
    from edgepipe.pipeline.demo import DEFAULT_QPS, default_engines, run_demo
    from edgepipe.pipeline.monitor import format_table, write_report

    asked = list(engines)
    engines = asked or default_engines()
    if not asked and engines == ["none"]:  # an install without the shipped model files
        click.echo("demo: no trained pre-transform found, running with --engine none only", err=True)

    def progress(spec, qp, stats):
        click.echo(f"demo: {spec:<12} QP {qp}: sent {stats.frames_sent} frames", err=True)

    report = run_demo(data, engines, tuple(qps) or DEFAULT_QPS, recognizer, weights, progress=progress)
    click.echo(format_table(report))
    if report_path:
        write_report(report, report_path)
        click.echo(f"demo: report written to {report_path}", err=True)
