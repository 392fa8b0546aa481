"""`edgepipe relay`: many captures in, many (sharded) monitors out, through ZeroMQ's own proxy (docs/relay.md)."""
from __future__ import annotations

import click

from edgepipe.commands.options import (
    check_endpoint,
    closed_to_signals,
    status_mode,
    status_options,
    stop_on_signals,
    write_json,
)
from edgepipe.core.errors import EdgepipeError
from edgepipe.ops.config import config_option


@click.command()
@config_option
@click.option("--cameras", required=True,
              help="Endpoint to bind for captures, e.g. tcp://0.0.0.0:5555 (a capture publishes to it with "
                   "--publish pub+connect:tcp://relay:5555).")
@click.option("--monitors", required=True,
              help="Endpoint to bind for monitors, e.g. tcp://0.0.0.0:5556 (a monitor subscribes with "
                   "--connect tcp://relay:5556, and --shard K/N or --streams to take a part).")
@click.option("--key", default=None,
              help="The relay's CURVE secret key: a .key_secret file or credential:NAME (systemd). The relay is "
                   "the CURVE server on both sides.")
@click.option("--allow-cameras", multiple=True,
              help="Capture public key allowed on --cameras (.key file, folder of them, z85:KEY); repeatable.")
@click.option("--allow-monitors", multiple=True,
              help="Monitor public key allowed on --monitors (.key file, folder of them, z85:KEY); repeatable.")
@click.option("--insecure", is_flag=True,
              help="Allow plain text beyond loopback (anyone on the network can read and inject).")
@click.option("--metrics", default=None, help="Serve Prometheus metrics on PORT, :PORT or HOST:PORT.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write what went through (per stream) and who connected as JSON when the relay stops.")
@status_options
def relay(cameras, monitors, key, allow_cameras, allow_monitors, insecure, metrics, report_path, quiet,
          status_every, print_config):
    """Many captures in, many monitors out: ZeroMQ's proxy between an XSUB (--cameras) and an XPUB (--monitors).

    Subscriptions flow to the captures, so each sends only what some monitor takes. Plain text only on
    loopback or with --insecure; otherwise give --key, --allow-cameras and --allow-monitors (CURVE).
    SIGINT/SIGTERM stop it within the socket linger.
    """
    if print_config:
        from edgepipe.ops.config import effective_settings

        click.echo(effective_settings(click.get_current_context()))
        return
    stop = stop_on_signals()
    from edgepipe.ops.metrics import parse_listen
    from edgepipe.ops.status import StatusReporter, relay_line
    from edgepipe.relay.service import RelayService

    check_endpoint("--cameras", cameras, bind=True)
    check_endpoint("--monitors", monitors, bind=True)
    if _same_address(cameras, monitors):
        raise EdgepipeError(f"--cameras and --monitors are the same endpoint ({cameras}): the relay binds two "
                            "sockets, give each its own port")
    if metrics:
        parse_listen(metrics)
    mode, every = status_mode(quiet, status_every)
    service = RelayService(cameras, monitors, key, tuple(allow_cameras), tuple(allow_monitors), insecure, metrics)
    report = None
    try:
        if not quiet:
            secure = "CURVE" if service.curve else "plain text"
            click.echo(f"relay: cameras on {service.bound[0]}, monitors on {service.bound[1]} ({secure}; Ctrl-C to "
                       "stop)", err=True)
        status = StatusReporter(service.sample, relay_line, mode, every)
        with status:
            report = service.run(stop)
    finally:
        report = report or service.report()
        service.close()
        closed_to_signals()
        write_json(report, report_path)
    click.echo(f"relay: forwarded {report['frames']} frames of {len(report['streams'])} stream(s); "
               f"{report['connections']['cameras_accepted']} camera and {report['connections']['monitors_accepted']} "
               "monitor connection(s)", err=True)


def _same_address(a: str, b: str) -> bool:
    norm = [e.replace("://*:", "://0.0.0.0:").replace("://localhost:", "://127.0.0.1:") for e in (a, b)]
    return norm[0] == norm[1] and not norm[0].endswith(":0")
