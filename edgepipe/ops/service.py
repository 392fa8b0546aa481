"""What the capture, monitor and relay services share: their options, CURVE set-up and orderly close
(edge/service.py, server/service.py and relay/service.py are the services).

Startup order is chosen so a bad setting fails with one line before anything is half-open: keys
and allow-list first, then sockets, then source and model. Shutdown closes everything in reverse,
sockets with a bounded linger, so a SIGTERM at any point ends within a few seconds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)


@dataclass
class SecurityOptions:
    key: str | None = None  # own secret key: PATH, credential:NAME
    allow: tuple[str, ...] = ()  # capture: monitor public keys / folders of *.key
    server_key: str | None = None  # monitor: the capture's public key
    insecure: bool = False  # plain text beyond loopback, only when asked for


@dataclass
class ServiceOptions:
    control: str | None = None  # capture: endpoint to bind; monitor: endpoint to connect
    metrics: str | None = None  # PORT, :PORT or HOST:PORT for /metrics
    dashboard: str | None = None  # monitor: PORT, :PORT or HOST:PORT for the live web page (server/dashboard.py)
    security: SecurityOptions = field(default_factory=SecurityOptions)
    # monitor sinks (sinks.py): record the received stream into a file; decoded frames as PNG
    record: str | None = None
    save_frames: str | None = None
    save_every: int = 1


def server_curve(sec: SecurityOptions):
    """CurveServer for the capture, or None for plain text; key errors surface here, first."""
    from edgepipe.transport.security import CurveServer, load_allow_list, load_keypair

    if sec.server_key:
        raise EdgepipeError("server-key is a monitor setting; the capture takes key and allow")
    if not sec.key:
        if sec.allow:
            raise EdgepipeError("allow needs key: the capture's own secret key (edgepipe keys generate capture)")
        return None
    return CurveServer(load_keypair(sec.key), load_allow_list(sec.allow))


def client_curve(sec: SecurityOptions):
    from edgepipe.transport.security import CurveClient, load_keypair, load_public_key

    if sec.allow:
        raise EdgepipeError("allow is a capture setting; the monitor takes key and server-key")
    if bool(sec.key) != bool(sec.server_key):
        raise EdgepipeError("CURVE on the monitor needs both key (its own secret key) and server-key "
                            "(the capture's public key)")
    if not sec.key:
        return None
    return CurveClient(load_keypair(sec.key), load_public_key(sec.server_key))


@dataclass(frozen=True)
class RelayCurve:
    """What the relay needs for CURVE: its key pair, and who may connect on each side."""

    server: object  # security.CurveServer: the relay's key pair (its allow-lists are the two below)
    cameras: frozenset[bytes]  # camera (capture) public keys, Z85
    monitors: frozenset[bytes]  # monitor public keys, Z85


def relay_curve(key: str | None, allow_cameras: tuple[str, ...], allow_monitors: tuple[str, ...]):
    """RelayCurve, or None for plain text; key and allow-list errors surface here, first, in one line."""
    from edgepipe.transport.security import CurveServer, load_allow_list, load_keypair

    if not key:
        if allow_cameras or allow_monitors:
            flag = "allow-cameras" if allow_cameras else "allow-monitors"
            raise EdgepipeError(f"{flag} needs key: the relay's own secret key (edgepipe keys generate relay)")
        return None
    if not allow_cameras or not allow_monitors:
        missing = "allow-cameras (the captures' public keys)" if not allow_cameras else \
            "allow-monitors (the monitors' public keys)"
        raise EdgepipeError(f"CURVE on the relay needs both allow-lists: {missing} is missing; the relay is the "
                            "CURVE server on both sides")
    keys = load_keypair(key)
    return RelayCurve(CurveServer(keys, frozenset()), load_allow_list(allow_cameras), load_allow_list(allow_monitors))


def close_in_order(service, steps: list[tuple[str, str]]) -> None:
    """Call each attribute's closing method once, in order, and clear it (so close() is idempotent).
    A further Ctrl-C while closing does not cut the shutdown short: it is already under way."""
    for attr, method in steps:
        part = getattr(service, attr, None)
        if part is None:
            continue
        setattr(service, attr, None)
        while True:
            try:
                getattr(part, method)()
                break
            except KeyboardInterrupt:
                log.warning("already stopping")
