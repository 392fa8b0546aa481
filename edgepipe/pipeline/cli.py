"""CLI commands of the pipeline: capture (device), monitor (server), demo (both on loopback)."""
from __future__ import annotations

import json
import logging
import signal
import threading

import click

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


@click.command()
@click.option("--source", required=True, help="/dev/video0 or an index, rtsp://..., a video file, or folder:PATH.")
@click.option("--engine", default="none", show_default=True,
              help="Pre-transform: a .onnx, .pt or .plan file, a shipped model name (ours), or none.")
@click.option("--publish", required=True, help="ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:5555.")
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
def capture(source, engine, publish, codec, qp, crf, gop, preset, encoder, frames, size, crop, realtime, fps,
            loop_source, stream_id, wait_subscriber, stats_path):
    """Edge loop: source -> pre-transform -> encoder -> ZeroMQ PUB.

    Stages run concurrently with bounded queues; SIGINT/SIGTERM stop cleanly, flushing the encoder.
    """
    from edgepipe.pipeline.capture import CaptureLoop, CaptureSettings
    from edgepipe.pipeline.codecs import check_hevc_support
    from edgepipe.pipeline.sources import parse_size

    if codec == "hevc" and encoder != "auto":
        check_hevc_support(encoder)
    settings = CaptureSettings(source=source, publish=publish, engine=engine, codec=codec, qp=qp, crf=crf, gop=gop,
                               preset=preset, encoder=encoder, frames=frames, size=parse_size(size), crop=crop,
                               realtime=realtime, fps=fps, loop=loop_source, stream_id=stream_id,
                               wait_subscriber_s=wait_subscriber)
    stop = _stop_on_signals()
    loop = CaptureLoop(settings)
    click.echo(f"capture: {loop.source.name} -> {loop.engine.model_id} -> {codec} -> {publish}", err=True)
    try:
        stats = loop.run(stop)
    finally:
        loop.close()
    summary = stats.as_dict()
    if stats_path:
        from edgepipe.pipeline.monitor import write_report

        write_report(summary, stats_path)
    drops = ", ".join(f"{k}={v}" for k, v in summary["drops"].items()) or "none"
    click.echo(f"capture: sent {summary['frames_sent']} frames, {summary['bytes_sent']} bytes, "
               f"{summary['loop_fps']} frames/s; dropped: {drops}", err=True)


@click.command()
@click.option("--connect", required=True, help="ZeroMQ endpoint of a capture, e.g. tcp://camera:5555.")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Recognizer weights (vgg16).")
@click.option("--no-classify", is_flag=True, help="Account rate and loss only.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
@click.option("--frames", type=int, default=None, help="Stop after N decoded frames.")
@click.option("--idle-timeout", type=float, default=None, help="Stop after S seconds without a message.")
def monitor(connect, recognizer, weights, no_classify, report_path, frames, idle_timeout):
    """Server side: decode, classify and report accuracy against bitrate."""
    from edgepipe.pipeline.monitor import Monitor, format_table, write_report
    from edgepipe.pipeline.transport import Subscriber

    classify = None
    if not no_classify:
        from edgepipe.recognition import Classifier

        classifier = Classifier(recognizer, weights)
        classify = lambda image: int(classifier.top1(image[None])[0])  # noqa: E731
    stop = _stop_on_signals()
    subscriber = Subscriber(connect)
    mon = Monitor(classify, subscriber)
    click.echo(f"monitor: listening on {connect} (Ctrl-C to stop)", err=True)
    try:
        mon.run(stop, max_frames=frames, idle_timeout=idle_timeout)
    finally:
        subscriber.close()
        report = mon.report()
        if report_path:
            write_report(report, report_path)
    click.echo(format_table(report))


@click.command()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Labelled ImageNet-layout folder (default: the 50 bundled Imagenette images).")
@click.option("--engine", "engines", multiple=True,
              help="Pre-transform(s) to compare (repeatable; default: none and ours once shipped).")
@click.option("--qp", "qps", type=int, multiple=True, help="HEVC QPs (repeatable; default 27 32 37 42).")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
def demo(data, engines, qps, recognizer, weights, report_path):
    """Whole pipeline on loopback with real images; prints the accuracy/bitrate table."""
    from edgepipe.pipeline.demo import DEFAULT_QPS, default_engines, run_demo
    from edgepipe.pipeline.monitor import format_table, write_report

    engines = list(engines) or default_engines()
    if engines == ["none"]:
        click.echo("demo: no trained pre-transform is shipped yet, running with --engine none", err=True)

    def progress(spec, qp, stats):
        click.echo(f"demo: {spec:<12} QP {qp}: sent {stats.frames_sent} frames", err=True)

    report = run_demo(data, engines, tuple(qps) or DEFAULT_QPS, recognizer, weights, progress=progress)
    click.echo(format_table(report))
    if report_path:
        write_report(report, report_path)
        click.echo(f"demo: report written to {report_path}", err=True)
    click.echo(json.dumps({"frames": report["decoded"], "lost": report["lost"]}), err=True)
