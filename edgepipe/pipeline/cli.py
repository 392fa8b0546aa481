"""CLI commands of the pipeline: capture (device), monitor (server), demo (both on loopback)."""
from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading

import click
from click.core import ParameterSource

from edgepipe.core.errors import EdgepipeError
from edgepipe.pipeline.codecs import CRF_RANGE, SETTING_RANGES, X265_PRESETS
from edgepipe.pipeline.config import config_option
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS, VIEWS

log = logging.getLogger(__name__)

NOTHING_ARRIVED = 3  # the monitor's exit status when not a single message arrived


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


def _check_endpoint(flag: str, endpoint: str, bind: bool) -> None:
    """tcp://HOST:PORT or ipc://PATH, checked before any socket exists; a bind also needs a local host."""
    scheme, sep, rest = endpoint.partition("://")
    problem = f"{flag}: cannot {'bind' if bind else 'connect to'} {endpoint}"
    example = "tcp://0.0.0.0:5555" if bind else "tcp://camera:5555"
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        raise EdgepipeError(f"{problem}: an endpoint is tcp://HOST:PORT or ipc://PATH, e.g. {example}")
    if scheme == "ipc":
        return
    host, _, port = rest.rpartition(":")
    lowest, ports = (0, "1..65535, or 0 or * for any free one") if bind else (1, "1..65535")
    if not host or not (port.isdigit() and lowest <= int(port) <= 65535 or bind and port == "*"):
        raise EdgepipeError(f"{problem}: it needs tcp://HOST:PORT with a port {ports}, e.g. {example}")
    if bind and not _local_host(host):
        raise EdgepipeError(f"{problem}: {host} is not this machine's; a bind needs an IPv4 address or host name of "
                            "this machine, an interface name (e.g. eth0), or 0.0.0.0 / * for all interfaces")


def _local_host(host: str) -> bool:
    """Whether ZeroMQ (IPv4, as the sockets are set up) can bind on `host`, found without touching the port."""
    if host == "*" or host in {name for _, name in socket.if_nameindex()}:
        return True
    try:
        address = str(ipaddress.IPv4Address(host)) if host[:1].isdigit() else socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))  # any free port: only "is this address mine" is asked
    except (ValueError, OSError):
        return False
    return True


def _check_codec_settings(codec: str, qp: int, crf: float | None) -> None:
    """--qp means what --codec says and has its range; --crf replaces it (HEVC only)."""
    ctx = click.get_current_context()
    if crf is not None:
        if codec != "hevc":
            raise EdgepipeError(f"--crf is for --codec hevc only; {codec} takes --qp")
        if ctx.get_parameter_source("qp") is not ParameterSource.DEFAULT:
            raise EdgepipeError("--crf and --qp are exclusive: give one (CRF: constant quality, QP: fixed quantiser)")
        if not CRF_RANGE[0] <= crf <= CRF_RANGE[1]:
            raise EdgepipeError(f"--crf must be {CRF_RANGE[0]}..{CRF_RANGE[1]}, got {crf:g}")
        return
    meaning, low, high = SETTING_RANGES[codec]
    if not low <= qp <= high:
        raise EdgepipeError(f"--qp {qp} is out of range: for --codec {codec} it is the {meaning}, {low}..{high}")


def _check_stream_id(stream_id: str | None) -> None:
    if stream_id is not None and not 1 <= len(stream_id.encode()) <= 255:  # the frame header stores it in at most 255 bytes
        raise EdgepipeError(f"--stream-id must be 1..255 bytes of UTF-8, got {len(stream_id.encode())}")


def _status_options(f):
    f = click.option("--status-every", type=click.FloatRange(min=0.5), default=None, metavar="S",
                     help="Status line every S seconds: frames/s, kbit/s, queues, drops, top-1, latency "
                          "[default: 2 on a terminal, rewritten in place; 5 as a log line with edgepipe -v; "
                          "none when stderr is not a terminal].")(f)
    return click.option("-q", "--quiet", is_flag=True, help="No status line and no start-up line.")(f)


def _status_mode(quiet: bool, status_every: float | None):
    from edgepipe.pipeline.status import choose_mode

    if quiet and status_every is not None:
        raise EdgepipeError("--quiet and --status-every are exclusive: --quiet turns the status line off")
    root = click.get_current_context().find_root()
    return choose_mode(quiet, bool(root.params.get("verbose")), status_every)


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
              help="HEVC QP (0-51); JPEG quality (1-100) or JPEG 2000 compression x1000 (1-1000) for those codecs.")
@click.option("--crf", type=float, default=None, help="HEVC constant rate factor (0-51) instead of a fixed QP.")
@click.option("--gop", type=click.IntRange(min=0), default=30, show_default=True,
              help="Frames per keyframe; 0 = intra-only.")
@click.option("--preset", type=click.Choice(X265_PRESETS), default="ultrafast", show_default=True,
              help="libx265 preset (hevc_nvenc always runs its low-latency p1).")
@click.option("--encoder", type=click.Choice(["libx265", "hevc_nvenc", "auto"]), default="libx265", show_default=True,
              help="auto: hevc_nvenc where an NVIDIA encoder opens, else libx265.")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--size", default=None, help="Resize frames to WIDTHxHEIGHT (made even; each side 16-8192).")
@click.option("--crop", is_flag=True, help="Centre-crop to the --size aspect before resizing.")
@click.option("--realtime", is_flag=True, help="Pace files and folders at the source's frame rate (or --fps).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frame rate of sources without timestamps (folders, still images): the stream clock that "
                   "kbit/s is measured on, and the --realtime pace [default: 25]. Video files use their own "
                   "timestamps, cameras the capture clock.")
@click.option("--loop", "loop_source", is_flag=True, help="Replay a file or folder forever.")
@click.option("--stream-id", default=None,
              help="Name of this camera in the stream header [default: cam-<hostname>].")
@click.option("--wait-subscriber", type=click.FloatRange(min=0), default=None,
              help="Wait up to S seconds for a monitor to join before sending; 0 = do not wait "
                   "[default: 10 for files and folders without --loop, 0 for live sources].")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False), default=None, help="Write loop statistics as JSON.")
@_status_options
def capture(source, engine, publish, control, key, insecure, allow, metrics, codec, qp, crf, gop, preset, encoder,
            frames, size, crop, realtime, fps, loop_source, stream_id, wait_subscriber, stats_path, quiet, status_every,
            print_config):
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
    from edgepipe.pipeline.codecs import resolve_encoder
    from edgepipe.pipeline.service import SecurityOptions, ServiceOptions
    from edgepipe.pipeline.sources import parse_size

    # Flags first, then keys, source and model: sockets bind only once all of them are good.
    _check_capture_flags(publish, control, metrics, stream_id, codec, qp, crf)
    mode, every = _status_mode(quiet, status_every)
    if codec == "hevc":
        encoder = resolve_encoder(encoder)
    settings = CaptureSettings(source=source, publish=publish, engine=engine, codec=codec, qp=qp, crf=crf, gop=gop,
                               preset=preset, encoder=encoder, frames=frames, size=parse_size(size), crop=crop,
                               realtime=realtime, fps=fps, loop=loop_source, stream_id=stream_id,
                               wait_subscriber_s=wait_subscriber)
    options = ServiceOptions(control=control, metrics=metrics,
                             security=SecurityOptions(key=key, allow=tuple(allow), insecure=insecure))
    service = _capture_service(settings, options)
    loop = service.loop
    from edgepipe.pipeline.status import StatusReporter, capture_line, capture_sample

    secure = "CURVE" if service.curve else "plain text"
    if not quiet:
        click.echo(f"capture: {loop.source.name} -> {loop.engine.model_id} -> {codec} -> {publish} ({secure}); "
                   f"stream clock: {_clock_words(loop)}", err=True)
    status = StatusReporter(lambda: capture_sample(loop), capture_line, mode, every)
    try:
        with status:
            stats = service.run(stop)
    finally:
        service.close()  # encoder already flushed by run(); sockets close with a bounded linger
    summary = stats.as_dict()
    summary["epoch"] = loop.epoch
    summary["stream_clock"] = loop.clock
    _write_json(summary, stats_path)  # atomic: whole or not at all
    drops = ", ".join(f"{k}={v}" for k, v in summary["drops"].items()) or "none"
    unsubscribed = summary.get("frames_unsubscribed", 0)
    kbps = f"{summary['kbit_s']} kbit/s of stream, " if summary.get("kbit_s") is not None else ""
    click.echo(f"capture: sent {summary['frames_sent']} frames, {summary['bytes_sent']} bytes, {kbps}"
               f"processed at {summary['loop_fps']} frames/s; dropped: {drops}"
               + (f"; {unsubscribed} sent while no monitor was subscribed" if unsubscribed else ""), err=True)
    if summary.get("end_of_stream") == "unsent":
        click.echo("capture: the end-of-stream message could not be sent: a monitor counts this stream's tail "
                   "only from later frames", err=True)


def _clock_words(loop) -> str:
    return {"timestamps": "the video's timestamps", "live": "the capture clock",
            "fps": f"{loop.rate:g} frames/s (--fps)",
            "default-fps": f"{loop.rate:g} frames/s (default; --fps sets it)"}.get(loop.clock, loop.clock)


def _check_capture_flags(publish, control, metrics, stream_id, codec, qp, crf) -> None:
    """Every capture flag that can be judged without opening anything."""
    from edgepipe.pipeline.metrics import parse_listen

    for flag, endpoint in (("--publish", publish), ("--control", control)):
        if endpoint:
            _check_endpoint(flag, endpoint, bind=True)
    if metrics:
        parse_listen(metrics)
    _check_stream_id(stream_id)
    _check_codec_settings(codec, qp, crf)


def _capture_service(settings, options):
    """Keys, source and model before the service binds its sockets (it would find their problems after)."""
    from edgepipe.engines import load_engine
    from edgepipe.pipeline.security import check_plaintext_allowed
    from edgepipe.pipeline.service import CaptureService, server_curve
    from edgepipe.pipeline.sources import open_source

    if server_curve(options.security) is None and not options.security.insecure:
        for endpoint in filter(None, (settings.publish, options.control)):
            check_plaintext_allowed(endpoint.replace("://*:", "://0.0.0.0:"), False, "capture")  # as bound
    source = open_source(settings.source, settings.size, settings.crop, settings.loop)
    engine = None
    try:
        engine = load_engine(settings.engine)
        return CaptureService(settings, options, source=source, engine=engine)
    except BaseException:
        source.close()  # closing twice is harmless where the service's loop closed them already
        if engine is not None:
            engine.close()
        raise


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
@_status_options
def monitor(connect, control, key, insecure, server_key, metrics, recognizer, weights, recognizer_view,
            recognizer_server, no_classify, report_path, frames, idle_timeout, record, save_frames, save_every,
            quiet, status_every, print_config):
    """Server side: decode, classify and report accuracy against bitrate.

    Plain text only on loopback or with --insecure; otherwise give --key and --server-key (CURVE).
    Exits with status 3 when nothing at all arrived, saying what is the likely cause.
    """
    if print_config:
        from edgepipe.pipeline.config import effective_settings

        click.echo(effective_settings(click.get_current_context()))
        return
    stop = _stop_on_signals()
    from edgepipe.pipeline.metrics import parse_listen
    from edgepipe.pipeline.monitor import format_table
    from edgepipe.pipeline.service import MonitorService, SecurityOptions, ServiceOptions, client_curve

    _check_endpoint("--connect", connect, bind=False)
    if control:
        _check_endpoint("--control", control, bind=False)
    if metrics:
        parse_listen(metrics)
    if save_every is not None and not save_frames:
        raise EdgepipeError("--save-every needs --save-frames DIR: it says which decoded frames to save there")
    mode, every = _status_mode(quiet, status_every)
    if record or save_frames:  # before the recognizer loads and sockets open
        from edgepipe.pipeline.sinks import parse_frames_dir, parse_record_target

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
    from edgepipe.pipeline.status import StatusReporter, monitor_line, monitor_sample

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
        _write_json(report, report_path)
    if diagnosis is not None:
        click.echo(diagnosis, err=True)
        raise SystemExit(NOTHING_ARRIVED)
    click.echo(format_table(report))


@click.command()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Labelled ImageNet-layout folder (default: the 50 bundled Imagenette images).")
@click.option("--engine", "engines", multiple=True,
              help="Pre-transform(s) to compare (repeatable; default: none and the shipped ours).")
@click.option("--qp", "qps", type=click.IntRange(0, 51), multiple=True,
              help="HEVC QPs, 0-51 (repeatable; default 27 32 37 42).")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
def demo(data, engines, qps, recognizer, weights, report_path):
    """Whole pipeline on loopback with real images; prints the accuracy/bitrate table."""
    from edgepipe.core.datasets import list_labelled_images
    from edgepipe.pipeline.demo import DEFAULT_QPS, default_engines, run_demo
    from edgepipe.pipeline.monitor import format_table, write_report

    if data:
        list_labelled_images(data)  # a wrong folder is named before the recognizer loads and sockets bind
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
