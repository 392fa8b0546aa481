"""What the capture and monitor commands share: signal handling, endpoint and codec checks, the status
line and security flags. Each command is its own module here; flags become a library call there."""
from __future__ import annotations

import atexit
import ipaddress
import logging
import signal
import socket
import threading

import click
from click.core import ParameterSource

from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs import CODECS

log = logging.getLogger(__name__)


def stop_on_signals() -> threading.Event:
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


def closed_to_signals() -> None:
    """Once the service has closed there is nothing left to abort: a further SIGINT/SIGTERM while the
    command writes its report and the interpreter exits is noted, not raised (it used to end the process by
    SIGINT after the clean stop had finished, status -2, the report half-done)."""
    def handler(signum, _frame):
        log.warning("signal %d: already stopped, finishing", signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    # At exit the interpreter puts every signal with a Python handler back to SIG_DFL, so a Ctrl-C in its last
    # milliseconds still ended the process by SIGINT (status -2, seen under load). Ignored ones it leaves alone.
    atexit.register(_ignore_stop_signals)


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def security_options(f):
    f = click.option("--insecure", is_flag=True,
                     help="Allow plain text beyond loopback (anyone on the network can read and inject).")(f)
    return click.option("--key", default=None,
                        help="This side's CURVE secret key: a .key_secret file or credential:NAME (systemd).")(f)


# Flags whose endpoint may say its role (transport/endpoints.py): the capture's data socket binds by default,
# or dials out to a relay with pub+connect:ADDRESS.
ROLE_FLAGS = ("--publish",)


def check_endpoint(flag: str, endpoint: str, bind: bool) -> None:
    """tcp://HOST:PORT or ipc://PATH, checked before any socket exists; a bind also needs a local host.
    --publish may say its role: pub+bind:ADDRESS (the default) or pub+connect:ADDRESS (dial out)."""
    from edgepipe.transport.endpoints import parse_publish, split_role

    if flag in ROLE_FLAGS:
        try:
            target = parse_publish(endpoint)
        except EdgepipeError as exc:
            raise EdgepipeError(f"{flag}: {exc}") from None
        endpoint, bind = target.address, not target.connect
    elif split_role(endpoint)[0] is not None and "://" in endpoint:
        raise EdgepipeError(f"{flag}: {endpoint}: only --publish says a role (pub+bind: or pub+connect:); "
                            f"{flag} takes a plain endpoint, e.g. tcp://0.0.0.0:5556")
    scheme, sep, rest = endpoint.partition("://")
    problem = f"{flag}: cannot {'bind' if bind else 'connect to'} {endpoint}"
    example = "tcp://0.0.0.0:5555" if bind else "pub+connect:tcp://relay:5555" if flag in ROLE_FLAGS \
        else "tcp://camera:5555"
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        raise EdgepipeError(f"{problem}: an endpoint is tcp://HOST:PORT or ipc://PATH, e.g. {example}")
    if scheme == "ipc":
        return
    host, _, port = rest.rpartition(":")
    lowest, ports = (0, "1..65535, or 0 or * for any free one") if bind else (1, "1..65535")
    if not host or not (port.isdigit() and lowest <= int(port) <= 65535 or bind and port == "*"):
        raise EdgepipeError(f"{problem}: it needs tcp://HOST:PORT with a port {ports}, e.g. {example}")
    if bind and not local_host(host):
        raise EdgepipeError(f"{problem}: {host} is not this machine's; a bind needs an IPv4 address or host name of "
                            "this machine, an interface name (e.g. eth0), or 0.0.0.0 / * for all interfaces")


def local_host(host: str) -> bool:
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


def check_codec_settings(codec: str, qp: int, crf: float | None) -> None:
    """--qp means what --codec says and has its range; --crf replaces it (codecs with a rate factor: HEVC)."""
    ctx = click.get_current_context()
    described = CODECS[codec]
    if crf is not None:
        if described.crf_range is None:
            with_crf = ", ".join(name for name in CODECS if CODECS[name].crf_range is not None)
            raise EdgepipeError(f"--crf is for --codec {with_crf} only; {codec} takes --qp")
        if ctx.get_parameter_source("qp") is not ParameterSource.DEFAULT:
            raise EdgepipeError("--crf and --qp are exclusive: give one (CRF: constant quality, QP: fixed quantiser)")
        low, high = described.crf_range
        if not low <= crf <= high:
            raise EdgepipeError(f"--crf must be {low}..{high}, got {crf:g}")
        return
    setting = described.setting
    if not setting.low <= qp <= setting.high:
        raise EdgepipeError(f"--qp {qp} is out of range: for --codec {codec} it is the {setting.meaning}, "
                            f"{setting.low}..{setting.high}")


def check_stream_id(stream_id: str | None) -> None:
    if stream_id is not None and not 1 <= len(stream_id.encode()) <= 255:  # the frame header stores it in at most 255 bytes
        raise EdgepipeError(f"--stream-id must be 1..255 bytes of UTF-8, got {len(stream_id.encode())}")


def status_options(f):
    f = click.option("--status-every", type=click.FloatRange(min=0.5), default=None, metavar="S",
                     help="Status line every S seconds: frames/s, kbit/s, queues, drops, top-1, latency "
                          "[default: 2 on a terminal, rewritten in place; 5 as a log line with edgepipe -v; "
                          "none when stderr is not a terminal].")(f)
    return click.option("-q", "--quiet", is_flag=True, help="No status line and no start-up line.")(f)


def status_mode(quiet: bool, status_every: float | None):
    from edgepipe.ops.status import choose_mode

    if quiet and status_every is not None:
        raise EdgepipeError("--quiet and --status-every are exclusive: --quiet turns the status line off")
    root = click.get_current_context().find_root()
    return choose_mode(quiet, bool(root.params.get("verbose")), status_every)


def write_json(data: dict, path: str | None) -> None:
    if path:
        from edgepipe.server.monitor import write_report

        write_report(data, path)
