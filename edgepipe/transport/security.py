"""ZeroMQ CURVE for the data and control sockets: key files, an allow-list (ZAP), handshake logging.

Roles: the side that *binds* is the CURVE server. Capture binds both its sockets (data XPUB and
control ROUTER), so capture is the server: it holds its own key pair and an allow-list of monitor
public keys. A monitor is a client: it holds its own key pair and the capture's public key.
Through a relay (edgepipe relay) the relay binds both its sockets and is the server on both, with
an allow-list of camera keys and one of monitor keys (one ZAP domain each); a capture that dials out
(`pub+connect:`) is then a client, and the one key of its allow-list is the relay's public key.

Key sources (the same syntax wherever a key is asked for):

    PATH                  a key file written by `edgepipe keys generate` (pyzmq/czmq certificate format)
    credential:NAME       $CREDENTIALS_DIRECTORY/NAME, i.e. a systemd credential (LoadCredential=)
    z85:KEY               a public key written inline (40 Z85 characters); allow-lists and server keys only.
                          Z85 uses shell characters ($ & < > * ? ! { } [ ] ( ) # ^ ...): quote it,
                          'z85:KEY' in single quotes (Z85 has no single quote)

A secret key file must not be readable by group or others (systemd credentials are exempt: systemd
makes them private to the service). An unknown or missing client key gets nothing: the handshake
fails, nothing is delivered either way, and the refusal is logged (rate-limited) and counted.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_write
from edgepipe.transport.endpoints import address_of

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"edgepipe"
_Z85_LEN = 40
_LOG_EVERY_S = 30.0  # a refused client retries every few seconds; say so once per key per 30 s


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes  # Z85, 40 bytes


@dataclass(frozen=True)
class CurveServer:
    """What the binding side needs: its key pair and the client keys it lets in."""

    keys: KeyPair
    allowed: frozenset[bytes]  # Z85 public keys


@dataclass(frozen=True)
class CurveClient:
    """What the connecting side needs: its key pair and the server's public key."""

    keys: KeyPair
    server_public: bytes


# --- key files ----------------------------------------------------------------------------------

def _resolve(spec: str, what: str) -> tuple[Path, bool]:
    """(path, is_systemd_credential) for a key source string."""
    if spec.startswith("credential:"):
        name = spec[len("credential:"):]
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise EdgepipeError(f"{what} {spec}: $CREDENTIALS_DIRECTORY is not set "
                                "(run under systemd with LoadCredential=, or give a file path)")
        if not name or "/" in name:
            raise EdgepipeError(f"{what} {spec}: a credential name is a plain file name")
        return Path(directory) / name, True
    return Path(spec).expanduser(), False


def _is_z85_key(value: bytes) -> bool:
    import zmq.utils.z85

    if len(value) != _Z85_LEN:
        return False
    try:
        zmq.utils.z85.decode(value)
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    return True


def _read_key_file(path: Path, what: str) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.exists():
        raise EdgepipeError(f"{what} {path} not found (create one with: edgepipe keys generate NAME --dir DIR)")
    if not path.is_file():
        raise EdgepipeError(f"{what} {path} is not a file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except PermissionError:
        raise EdgepipeError(f"{what} {path} is not readable by this user (uid {os.getuid()})") from None
    except (OSError, ValueError) as exc:
        # a bare Z85 line is accepted too (e.g. a key pasted from `edgepipe keys generate` output)
        try:
            text = path.read_bytes().strip()
        except OSError:
            raise EdgepipeError(f"{what} {path} cannot be read: {exc}") from None
        if _is_z85_key(text):
            return text, None
        raise EdgepipeError(f"{what} {path} is not a CURVE key file (no public-key line)") from None
    if not _is_z85_key(public) or (secret is not None and not _is_z85_key(secret)):
        raise EdgepipeError(f"{what} {path} holds a malformed key (expected 40 Z85 characters)")
    return public, secret


def load_keypair(spec: str) -> KeyPair:
    """Own key pair from a secret key file (which also holds the public key)."""
    path, credential = _resolve(spec, "secret key")
    public, secret = _read_key_file(path, "secret key")
    if secret is None:
        raise EdgepipeError(f"secret key {path} holds only a public key (use the .key_secret file)")
    mode = path.stat().st_mode
    if not credential and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EdgepipeError(f"secret key {path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); "
                            f"run: chmod 600 {path}")
    return KeyPair(public, secret)


def load_public_key(spec: str) -> bytes:
    if spec.startswith("'z85:") and spec.endswith("'"):  # pasted with the quotes a shell needs
        spec = spec[1:-1]
    if spec.startswith("z85:"):
        key = spec[4:].encode()
        if not _is_z85_key(key):
            raise EdgepipeError(f"public key {spec!r} is not 40 Z85 characters")
        return key
    path, _ = _resolve(spec, "public key")
    return _read_key_file(path, "public key")[0]


def load_allow_list(specs: Iterable[str]) -> frozenset[bytes]:
    """Public keys from files, `z85:` literals, credentials, or folders of `*.key` files."""
    keys: set[bytes] = set()
    for spec in specs:
        path = None if spec.startswith(("z85:", "credential:")) else Path(spec).expanduser()
        if path is not None and path.is_dir():
            found = sorted(path.glob("*.key"))
            if not found:
                raise EdgepipeError(f"allow-list folder {path} has no *.key public key files")
            keys.update(_read_key_file(p, "public key")[0] for p in found)
        else:
            keys.add(load_public_key(spec))
    if not keys:
        raise EdgepipeError("the allow-list is empty: no monitor could connect (give allow = [...] keys)")
    return frozenset(keys)


def write_keypair(directory: str | Path, name: str, force: bool = False) -> tuple[Path, Path, bytes]:
    """Write NAME.key (public, 0644) and NAME.key_secret (0600) in pyzmq's certificate format.

    The secret file is created with its final mode, so it is never readable by others even briefly."""
    import zmq

    if not name or "/" in name or name.startswith("."):
        raise EdgepipeError(f"key name {name!r} must be a plain file name")
    directory = Path(directory)
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)  # private whatever the umask: it holds secret keys
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force:
        for p in (pub_path, sec_path):
            if p.exists():
                raise EdgepipeError(f"{p} already exists (use --force to replace it)")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def body(kind: str, with_secret: bool) -> str:
        lines = [f"#   ****  Generated on {now} by edgepipe keys generate  ****",
                 f"#   ZeroMQ CURVE {kind} Certificate",
                 *(["#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."] if with_secret else []),
                 "", "metadata", "curve", f'    public-key = "{public.decode()}"']
        if with_secret:
            lines.append(f'    secret-key = "{secret.decode()}"')
        return "\n".join(lines) + "\n"

    for path, text, mode in ((sec_path, body("**Secret**", True), 0o600), (pub_path, body("Public", False), 0o644)):
        atomic_write(path, text, mode=mode)  # created with `mode`, then set to it whatever the umask
    return pub_path, sec_path, public


# --- policy -------------------------------------------------------------------------------------

def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address: no network can see the traffic.
    A role (pub+connect:ADDRESS) is left out: the address decides."""
    endpoint = address_of(endpoint)
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].split(";")[-1].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_plaintext_allowed(endpoint: str, insecure: bool, role: str) -> None:
    """Plain text only on loopback or when asked for (--insecure)."""
    if insecure or is_local_endpoint(endpoint):
        if not is_local_endpoint(endpoint):
            log.warning("%s: plain text on %s (--insecure): anyone on the network can read and inject frames",
                        role, endpoint)
        return
    hint = {"capture": "key and allow", "relay": "key, allow-cameras and allow-monitors"}.get(role,
                                                                                          "key and server-key")
    raise EdgepipeError(f"{role}: refusing plain text on {endpoint}; configure CURVE ({hint}, see "
                        "`edgepipe keys generate`) or pass --insecure")


# --- socket configuration -----------------------------------------------------------------------

def configure_server(sock, curve: CurveServer, domain: bytes = ZAP_DOMAIN) -> None:
    """Before bind: CURVE server, and a ZAP domain that must be answered (no handler = refused). The
    relay gives each of its sockets its own domain, so each has its own allow-list."""
    import zmq

    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_server = True
    sock.zap_domain = domain
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # if the ZAP thread is gone, refuse rather than let anyone in


def configure_client(sock, curve: CurveClient) -> None:
    """Before connect."""
    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_serverkey = curve.server_public


def dial_out_curve(curve: CurveServer | CurveClient) -> CurveClient:
    """A capture that dials out to a relay is a CURVE client: its allow-list holds one key, the relay's."""
    if isinstance(curve, CurveClient):
        return curve
    if len(curve.allowed) != 1:
        raise EdgepipeError(f"a capture that dials out (pub+connect:) talks to one relay: its allow-list must hold "
                            f"exactly one key, the relay's public key (relay.key), not {len(curve.allowed)}")
    return CurveClient(curve.keys, next(iter(curve.allowed)))


class ZapHandler:
    """The allow-list: answers libzmq's ZAP requests for every CURVE server socket in `context`.

    One per context (libzmq looks it up at inproc://zeromq.zap.01). Refusals are counted in
    `denied` by cause (and in `denied_by_domain` by (domain, cause)) and logged, at most once per
    client key every 30 s. `allowed=None`: plain text (NULL mechanism), everyone is let in but
    banned peers. `domains`: an allow-list per ZAP domain instead (the relay: cameras and monitors);
    a request of any other domain is refused. `ban(identity, seconds)` refuses a client key
    (`user-id:HEX`) or an address (`peer-address:IP`) for a while (a subscription flood)."""

    def __init__(self, context, allowed: Iterable[bytes] | None,
                 domains: dict[bytes, Iterable[bytes] | None] | None = None):
        import zmq.utils.z85

        self._ctx = context
        # ZAP hands us the raw 32-byte key
        self._allowed = None if allowed is None else {zmq.utils.z85.decode(k) for k in allowed}
        self._domains = None if domains is None else {
            d: None if keys is None else {zmq.utils.z85.decode(k) for k in keys} for d, keys in domains.items()}
        self._banned: dict[str, float] = {}  # identity -> until (monotonic)
        self.bans = 0
        self.accepted = 0
        self.accepted_by_domain: Counter = Counter()
        self.denied: Counter = Counter()
        self.denied_by_domain: Counter = Counter()  # (domain, cause) -> refusals
        self._last_log: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgepipe-zap", daemon=True)

    def start(self) -> ZapHandler:
        self._thread.start()
        self._ready.wait(5.0)
        if self._error is not None:
            raise EdgepipeError(f"cannot start the CURVE allow-list handler: {self._error}")
        return self

    def _run(self) -> None:
        import zmq

        sock = self._ctx.socket(zmq.REP)
        sock.linger = 0
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            sock.close(0)
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    sock.send_multipart(self._answer(sock.recv_multipart()))
        except zmq.ContextTerminated:
            pass  # the process is stopping (a second Ctrl-C terminates the context under us): nothing to answer
        finally:
            sock.close(0)

    def ban(self, identity: str, seconds: float = 60.0) -> None:
        """Refuse this peer's (re)connections for `seconds` (thread-safe: a dict assignment)."""
        self._banned[identity] = time.monotonic() + seconds
        self.bans += 1
        log.warning("banned %s for %.0f s", identity, seconds)

    def _is_banned(self, identity: str) -> bool:
        until = self._banned.get(identity)
        if until is None:
            return False
        if time.monotonic() >= until:
            self._banned.pop(identity, None)
            return False
        return True

    def _answer(self, msg: list[bytes]) -> list[bytes]:
        if len(msg) < 6:  # libzmq never sends this; answer anyway so its state machine moves on
            return [b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"bad request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = msg[:6]
        credentials = msg[6:]
        if self._banned and (self._is_banned(f"peer-address:{address.decode(errors='replace')}") or (
                len(credentials) == 1 and self._is_banned(f"user-id:{credentials[0].hex()}"))):
            return self._deny(version, request_id, domain, "banned", b"banned for a while")
        if self._domains is not None and domain not in self._domains:
            return self._deny(version, request_id, domain, "unknown_domain", b"no such domain")
        allowed = self._allowed if self._domains is None else self._domains[domain]
        if allowed is None and mechanism == b"NULL":
            self.accepted += 1
            self.accepted_by_domain[domain.decode(errors="replace")] += 1
            return [version, request_id, b"200", b"OK", b"", b""]
        if mechanism == b"CURVE" and allowed is not None and len(credentials) == 1 \
                and credentials[0] in allowed:
            self.accepted += 1
            self.accepted_by_domain[domain.decode(errors="replace")] += 1
            return [version, request_id, b"200", b"OK", credentials[0].hex().encode(), b""]
        import zmq.utils.z85

        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            cause, who = "unknown_key", zmq.utils.z85.encode(credentials[0])
        else:
            cause, who = f"mechanism_{mechanism.decode(errors='replace').lower()}", b"-"
        self._count_denied(domain, cause)
        now = time.monotonic()
        if now - self._last_log.get(who, -1e9) > _LOG_EVERY_S:
            self._last_log[who] = now
            log.warning("refused connection from %s: client key %s is not in the allow-list (%s; %d refused so far)",
                        address.decode(errors="replace") or "?", who.decode(), cause, sum(self.denied.values()))
        return [version, request_id, b"400", b"client key not allowed", b"", b""]

    def _count_denied(self, domain: bytes, cause: str) -> None:
        self.denied[cause] += 1
        self.denied_by_domain[(domain.decode(errors="replace"), cause)] += 1

    def _deny(self, version: bytes, request_id: bytes, domain: bytes, cause: str, text: bytes) -> list[bytes]:
        self._count_denied(domain, cause)
        return [version, request_id, b"400", text, b"", b""]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


_EVENT_CAUSES = {
    "EVENT_HANDSHAKE_FAILED_NO_DETAIL": "handshake_failed",
    "EVENT_HANDSHAKE_FAILED_PROTOCOL": "handshake_protocol",  # no key / wrong server key / not CURVE
    "EVENT_HANDSHAKE_FAILED_AUTH": "handshake_refused",  # the allow-list said no
}


class HandshakeWatcher:
    """Logs and counts failed CURVE handshakes on watched sockets (both roles).

    On the binding side this catches peers that the ZAP handler never sees: plain-text clients and
    clients with a wrong server key. On the connecting side it tells the operator that the server
    refused this key. Uses libzmq socket monitors; one thread for all watched sockets. With
    `connections=True` a socket's accepted and closed connections are counted too (`connections`:
    role -> connections open now; the relay's cameras and monitors)."""

    def __init__(self, context):
        self._ctx = context
        self.failures: Counter = Counter()
        self.succeeded = 0
        self.connections: Counter = Counter()  # role -> connections open now (sockets watched with connections)
        self.accepted: Counter = Counter()  # role -> connections ever accepted
        self._watched: list[tuple[str, object, object, bool]] = []  # (role, socket, monitor PAIR, connections)
        self._last_log: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0  # bumped when the watched sockets change
        self._retired: list = []  # monitor sockets to close (from the watcher thread, which reads them)
        self._thread: threading.Thread | None = None

    def watch(self, sock, role: str, connections: bool = False) -> None:
        """Call from the thread that owns `sock`."""
        import zmq

        events = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        if connections:
            events |= zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
        monitor = sock.get_monitor_socket(events)
        with self._lock:
            self._watched.append((role, sock, monitor, connections))
            self._generation += 1

    def replace(self, old, new) -> None:
        """`old` was closed and `new` opened in its place (Publisher reopened after a flood): watch
        `new` under the same role; the watcher thread closes the old monitor. Call from new's thread."""
        with self._lock:
            roles = [(role, mon, conns) for role, sock, mon, conns in self._watched if sock is old]
            self._watched = [w for w in self._watched if w[1] is not old]
            self._retired.extend(mon for _, mon, _ in roles)
            for role, _, conns in roles:
                if conns:
                    self.connections[role] = 0  # the old socket's connections closed with it
        for role, _, conns in roles:
            self.watch(new, role, conns)

    def start(self) -> HandshakeWatcher:
        self._thread = threading.Thread(target=self._run, name="edgepipe-handshakes", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        generation = -1
        while not self._stop.is_set():
            if generation != self._generation:
                with self._lock:
                    generation = self._generation
                    for mon in self._retired:
                        mon.close(0)
                    self._retired.clear()
                    poller = zmq.Poller()
                    roles = {}
                    for role, _sock, mon, _ in self._watched:
                        poller.register(mon, zmq.POLLIN)
                        roles[mon] = role
            for mon, _ in poller.poll(100):
                try:
                    event = recv_monitor_message(mon)
                except zmq.ZMQError:
                    continue
                self.record(roles[mon], event)

    def record(self, role: str, event: dict) -> None:
        """Count and log one socket-monitor event; also for sockets that run their own monitor
        (transport.Subscriber forwards its events here: a socket has only one monitor)."""
        import zmq

        with self._lock:
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded += 1
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.connections[role] += 1
                self.accepted[role] += 1
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.connections[role] = max(0, self.connections[role] - 1)
                return
            cause = {getattr(zmq, name): c for name, c in _EVENT_CAUSES.items()}.get(event["event"])
            if cause is None:
                return
            self.failures[cause] += 1
            endpoint = event.get("endpoint", b"")
            endpoint = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            now = time.monotonic()
            if now - self._last_log.get((role, cause), -1e9) > _LOG_EVERY_S:
                self._last_log[(role, cause)] = now
                log.warning("%s %s: CURVE handshake failed (%s, code %s): %s; %d failed so far", role, endpoint,
                            cause, event.get("value"), _explain(role, cause), sum(self.failures.values()))

    def stop(self) -> None:
        """Stops the thread and the libzmq monitors; call before closing the watched sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for _role, sock, mon, _ in self._watched:
            try:
                sock.disable_monitor()
            except Exception:  # the socket may already be closed
                pass
            mon.close(0)
        self._watched.clear()
        for mon in self._retired:
            mon.close(0)
        self._retired.clear()


def _explain(role: str, cause: str) -> str:
    if role.startswith("relay"):
        return {"handshake_protocol": "a peer without CURVE or with the wrong server key (not the relay's) tried "
                                      "to connect",
                "handshake_refused": "a client key not in this side's allow-list was refused"}.get(cause,
                                                                                                   "peer refused")
    if role.startswith("capture"):
        return {"handshake_protocol": "a peer without CURVE or with the wrong server key tried to connect",
                "handshake_refused": "a client key not in the allow-list was refused"}.get(cause, "peer refused")
    return {"handshake_protocol": "check server-key (the capture's public key) and that the capture runs CURVE",
            "handshake_refused": "the capture refused this monitor's key: add its .key file to the capture's allow-list"
            }.get(cause, "handshake refused")
