"""Endpoint strings that say the role: a capture binds its data socket (the default) or dials out to a relay.

    tcp://0.0.0.0:5555                  bind (monitors, or a relay, connect to it)
    pub+bind:tcp://0.0.0.0:5555         the same, said out loud
    pub+connect:tcp://relay:5555        dial out: the capture connects to a relay's camera side (NAT)

Only the capture's `--publish` takes a role; every other endpoint is plain ZeroMQ (tcp://, ipc://).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgepipe.core.errors import EdgepipeError

BIND, CONNECT = "pub+bind", "pub+connect"
ROLES = (BIND, CONNECT)


@dataclass(frozen=True)
class PublishEndpoint:
    address: str  # the ZeroMQ endpoint, without the role
    connect: bool  # True: dial out (a relay's camera side); False: bind


def split_role(spec: str) -> tuple[str | None, str]:
    """(role or None, address): a role is SOCKET+ROLE before the first ':' (pub+connect:...); anything else
    is left to the endpoint check (camera:5555 is a malformed endpoint, not a role)."""
    scheme_at = spec.find("://")
    colon = spec.find(":")
    if colon != -1 and (scheme_at == -1 or colon < scheme_at) and "+" in spec[:colon]:
        return spec[:colon], spec[colon + 1:]
    return None, spec


def parse_publish(spec: str) -> PublishEndpoint:
    """The capture's --publish: ADDRESS, pub+bind:ADDRESS or pub+connect:ADDRESS; a typo is one line."""
    role, address = split_role(spec)
    if role is None:
        return PublishEndpoint(address, connect=False)
    if role not in ROLES:
        raise EdgepipeError(f"unknown role {role!r} in {spec!r}: a publish endpoint is ADDRESS or "
                            f"{BIND}:ADDRESS (bind, the default) or {CONNECT}:ADDRESS (dial out to a relay), "
                            "e.g. pub+connect:tcp://relay:5555")
    if not address:
        raise EdgepipeError(f"{spec!r} names a role but no address, e.g. {role}:tcp://relay:5555")
    return PublishEndpoint(address, connect=role == CONNECT)


def address_of(endpoint: str) -> str:
    """The ZeroMQ address of an endpoint string, its role (if any) left out."""
    role, address = split_role(endpoint)
    return address if role in ROLES else endpoint
