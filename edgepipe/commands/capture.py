"""`edgepipe capture`: the device side, source -> pre-transform -> encoder -> ZeroMQ. Its loop's options are
the fields of CaptureSettings (edge/capture.py), each declared once there; the service's (control socket,
security, metrics) and the command's own (stats, status line) are here."""
from __future__ import annotations

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.commands.options import (
    check_codec_settings,
    check_endpoint,
    check_stream_id,
    closed_to_signals,
    security_options,
    status_mode,
    status_options,
    stop_on_signals,
    write_json,
)
from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.capture import CaptureSettings
from edgepipe.ops.config import config_option


@click.command()
@config_option
@options_from(CaptureSettings)
@click.option("--control", default=None,
              help="Endpoint to bind for keyframe requests from monitors, e.g. tcp://0.0.0.0:5556.")
@security_options
@click.option("--allow", multiple=True,
              help="Monitor public key allowed to connect (.key file, folder of them, z85:KEY); repeatable. "
                   "Dialling out to a relay: the relay's public key, exactly one.")
@click.option("--metrics", default=None, help="Serve Prometheus metrics on PORT, :PORT or HOST:PORT.")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False), default=None, help="Write loop statistics as JSON.")
@status_options
def capture(control, key, insecure, allow, metrics, stats_path, quiet, status_every, print_config, **params):
    """Edge loop: source -> pre-transform -> encoder -> ZeroMQ PUB.

    Stages run concurrently with bounded queues; SIGINT/SIGTERM stop cleanly, flushing the encoder.
    Plain text only on loopback or with --insecure; otherwise give --key and --allow (CURVE).
    """
    if print_config:
        from edgepipe.ops.config import effective_settings

        click.echo(effective_settings(click.get_current_context()))
        return
    stop = stop_on_signals()  # first: a SIGTERM while the model loads still ends cleanly
    from edgepipe.media.codecs import resolve_encoder
    from edgepipe.ops.service import SecurityOptions, ServiceOptions

    # Flags first, then keys, source and model: sockets bind only once all of them are good.
    p = params
    _ladder_flags(p)  # before the codec's checks: --ladder sets --codec and the first --qp
    _check_capture_flags(p["publish"], control, metrics, p["stream_id"], p["codec"], p["qp"], p["crf"], p["threads"])
    if p["reference_budget_kbit"] is not None and not p["reference_every"]:
        raise EdgepipeError("--reference-budget needs --reference-every N (references are off without it)")
    mode, every = status_mode(quiet, status_every)
    if p["codec"] == "hevc":
        p["encoder"] = resolve_encoder(p["encoder"])
    settings = build(CaptureSettings, p)  # parses --size
    from edgepipe.edge.capture import remote_engine_specs, remote_qp_range

    if remote_qp_range(settings) is not None and not control:
        raise EdgepipeError("--allow-remote-qp needs --control ENDPOINT: QP requests come on the control socket")
    if remote_engine_specs(settings) is not None and not control:
        raise EdgepipeError("--allow-remote-engine needs --control ENDPOINT: engine requests come on the control "
                            "socket")
    codec, publish = settings.codec, settings.publish
    options = ServiceOptions(control=control, metrics=metrics,
                             security=SecurityOptions(key=key, allow=tuple(allow), insecure=insecure))
    service = _capture_service(settings, options)
    loop = service.loop
    from edgepipe.ops.status import StatusReporter, capture_line, capture_sample

    secure = "CURVE" if service.curve else "plain text"
    if not quiet:
        engines = loop.engine.model_id if len(loop.engines) == 1 else \
            "|".join(engine.model_id for engine in loop.engines.values())
        click.echo(f"capture: {loop.source.name} -> {engines} -> {codec} -> {publish} ({secure}); "
                   f"stream clock: {_clock_words(loop)}; threads: {loop.budget.describe()}", err=True)
        if loop.ladder is not None:
            click.echo(f"capture: ladder: {loop.ladder.describe()}", err=True)
    status = StatusReporter(lambda: capture_sample(loop), capture_line, mode, every)
    try:
        with status:
            stats = service.run(stop)
    finally:
        service.close()  # encoder already flushed by run(); sockets close with a bounded linger
        closed_to_signals()
    summary = stats.as_dict()
    summary["epoch"] = loop.epoch
    summary["stream_clock"] = loop.clock
    summary["threads"] = loop.budget.as_dict()  # what each stage's library was given
    write_json(summary, stats_path)  # atomic: whole or not at all
    drops = ", ".join(f"{k}={v}" for k, v in summary["drops"].items()) or "none"
    unsubscribed = summary.get("frames_unsubscribed", 0)
    kbps = f"{summary['kbit_s']} kbit/s of stream, " if summary.get("kbit_s") is not None else ""
    click.echo(f"capture: sent {summary['frames_sent']} frames, {summary['bytes_sent']} bytes, {kbps}"
               f"processed at {summary['loop_fps']} frames/s; dropped: {drops}"
               + (f"; {unsubscribed} sent while no monitor was subscribed" if unsubscribed else ""), err=True)
    refs = summary.get("references")
    if refs is not None:
        skipped = ", ".join(f"{k}={v}" for k, v in refs["skipped"].items()) or "none"
        share_words = f" ({100 * refs['share_of_stream_bytes']:.1f}% of the stream's bytes)" \
            if refs["share_of_stream_bytes"] is not None else ""
        click.echo(f"capture: references: sent {refs['sent']}, {refs['bytes']} bytes{share_words}, apart from the "
                   f"stream; skipped: {skipped}", err=True)
    ladder = summary.get("ladder")
    if ladder is not None:
        points = ", ".join(f"{p['quality']}/{p['engine']} {p['frames_sent']}" for p in ladder["points"])
        click.echo(f"capture: ladder: {ladder['switches']} switches; frames sent per point (setting/engine): "
                   f"{points}", err=True)
    remote = summary.get("remote_qp")
    if remote is not None:
        refused = ", ".join(f"{k}={v}" for k, v in remote["refused"].items()) or "none"
        allowed = "{}:{}".format(*remote["allowed"]) if remote["allowed"] else "none (no --allow-remote-qp)"
        click.echo(f"capture: remote QP: allowed {allowed}, {remote['requests']} requests obeyed, "
                   f"{remote['changes']} changes, QP now {remote['qp']}; refused: {refused}", err=True)
    remote = summary.get("remote_engine")
    if remote is not None:
        refused = ", ".join(f"{k}={v}" for k, v in remote["refused"].items()) or "none"
        allowed = ",".join(remote["allowed"]) if remote["allowed"] else "none (no --allow-remote-engine)"
        click.echo(f"capture: remote engine: allowed {allowed}, {remote['requests']} requests obeyed, "
                   f"{remote['changes']} changes, engine now {remote['engine']}; refused: {refused}", err=True)
    if summary.get("end_of_stream") == "unsent":
        click.echo("capture: the end-of-stream message could not be sent: a monitor counts this stream's tail "
                   "only from later frames", err=True)


def _clock_words(loop) -> str:
    return {"timestamps": "the video's timestamps", "live": "the capture clock",
            "fps": f"{loop.rate:g} frames/s (--fps)",
            "default-fps": f"{loop.rate:g} frames/s (default; --fps sets it)"}.get(loop.clock, loop.clock)


def _ladder_flags(p: dict) -> None:
    """--ladder CODEC:Q,... sets --codec (or must match one given) and stands for --qp; --ab stands for --engine.
    The whole ladder is checked here, one line for the first thing wrong; its engines load with the source."""
    from click.core import ParameterSource

    from edgepipe.edge.ladder import make_ladder, parse_ab, parse_ladder

    if not p["ladder"] and not p["ab"]:
        return
    ctx = click.get_current_context()
    given = {name: ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
             for name in ("codec", "qp", "engine")}
    if p["ab"]:
        parse_ab(p["ab"])
        if given["engine"]:
            raise EdgepipeError("--ab and --engine are exclusive: --ab names every pre-transform the ladder cycles")
    if p["ladder"]:
        codec, qualities = parse_ladder(p["ladder"])
        if given["codec"] and p["codec"] != codec:
            raise EdgepipeError(f"--ladder {p['ladder']!r} is for {codec}, but --codec is {p['codec']}: give one "
                                "codec (--ladder alone sets it)")
        if given["qp"]:
            raise EdgepipeError("--ladder and --qp are exclusive: the ladder gives the settings, one per GOP")
        p["codec"], p["qp"] = codec, qualities[0]
    make_ladder(p["ladder"], p["ab"], p["codec"], p["qp"], p["crf"], p["engine"], p["gop"])


def _check_capture_flags(publish, control, metrics, stream_id, codec, qp, crf, threads) -> None:
    """Every capture flag that can be judged without opening anything."""
    from edgepipe.edge.threads import parse_threads
    from edgepipe.ops.metrics import parse_listen

    for flag, endpoint in (("--publish", publish), ("--control", control)):
        if endpoint:
            check_endpoint(flag, endpoint, bind=True)
    if metrics:
        parse_listen(metrics)
    check_stream_id(stream_id)
    check_codec_settings(codec, qp, crf)
    parse_threads(threads)


def _capture_service(settings, options):
    """Keys, source and model before the service binds its sockets (it would find their problems after)."""
    from edgepipe.edge.capture import budget_engines, loop_budget
    from edgepipe.edge.ladder import load_engines, make_ladder
    from edgepipe.edge.service import CaptureService
    from edgepipe.media.sources import open_source
    from edgepipe.ops.service import server_curve
    from edgepipe.transport.security import check_plaintext_allowed

    if server_curve(options.security) is None and not options.security.insecure:
        for endpoint in filter(None, (settings.publish, options.control)):
            check_plaintext_allowed(endpoint.replace("://*:", "://0.0.0.0:"), False, "capture")  # as bound
    ladder = make_ladder(settings.ladder, settings.ab, settings.codec, settings.qp, settings.crf, settings.engine,
                         settings.gop)
    budget = loop_budget(settings, ladder)  # as the loop's
    source = open_source(settings.source, settings.size, settings.crop, settings.loop, threads=budget.source)
    engines: dict = {}
    try:
        # each engine once (the ladder's, or those a monitor may switch to), before any socket binds
        engines = load_engines(budget_engines(settings, ladder), budget.engine_threads())
        return CaptureService(settings, options, source=source, engine=engines)
    except BaseException:
        source.close()  # closing twice is harmless where the service's loop closed them already
        for engine in engines.values():
            engine.close()
        raise
