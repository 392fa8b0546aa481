"""CURVE on the data and control sockets: key files, allow-list, credentials, one-line key errors,
and over real loopback sockets, that a peer with an unknown, wrong or no key gets nothing in or out."""
from __future__ import annotations

import logging
import os
import stat

import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.ops.service import SecurityOptions, ServiceOptions
from edgepipe.server.service import MonitorService
from edgepipe.transport.control import CONTROL_MAGIC, KEYFRAME
from edgepipe.transport.security import (
    CurveClient,
    configure_client,
    is_local_endpoint,
    load_allow_list,
    load_keypair,
    load_public_key,
)
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import PacedSource, Running, decode_frames, wait_for

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(res) -> str:
    assert res.exit_code != 0
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


# --- keys ---------------------------------------------------------------------------------------

def test_keys_generate_writes_private_secret_and_public_key(tmp_path):
    res = run("keys", "generate", "capture", "monitor", "--dir", tmp_path / "k")
    assert res.exit_code == 0, res.output
    for name in ("capture", "monitor"):
        pub, sec = tmp_path / "k" / f"{name}.key", tmp_path / "k" / f"{name}.key_secret"
        assert stat.S_IMODE(sec.stat().st_mode) == 0o600
        assert stat.S_IMODE(pub.stat().st_mode) == 0o644
        public, secret = zmq.auth.load_certificate(sec)  # pyzmq/czmq certificate format
        assert zmq.auth.load_certificate(pub) == (public, None)
        assert zmq.curve_public(secret) == public  # a real pair
        assert f"'z85:{public.decode()}'" in res.output  # quoted: Z85 has shell characters (issue 12)
    assert "already exists" in one_error_line(run("keys", "generate", "capture", "--dir", tmp_path / "k"))
    old = (tmp_path / "k" / "capture.key").read_text()
    assert run("keys", "generate", "capture", "--dir", tmp_path / "k", "--force").exit_code == 0
    assert (tmp_path / "k" / "capture.key").read_text() != old
    shown = run("keys", "show", tmp_path / "k" / "monitor.key_secret")
    key = zmq.auth.load_certificate(tmp_path / "k" / "monitor.key")[0].decode()
    assert shown.stdout.strip() == f"z85:{key}"  # bare on stdout, for scripts
    assert f"quote it: 'z85:{key}'" in shown.stderr
    assert load_public_key(f"'z85:{key}'") == key.encode()  # pasted with its shell quotes: accepted
    assert "quote" in run("keys", "generate", "--help").output and "quote" in run("keys", "show", "--help").output


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_keys_generate_makes_a_private_folder_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        res = run("keys", "generate", "capture", "--dir", tmp_path / "new" / "keys")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((tmp_path / "new" / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "keys" / "capture.key_secret").stat().st_mode) == 0o600


def test_key_sources_files_literals_folders_and_credentials(keys, monkeypatch, tmp_path):
    pair = load_keypair(str(keys / "monitor.key_secret"))
    assert load_public_key(str(keys / "monitor.key")) == pair.public
    assert load_public_key(f"z85:{pair.public.decode()}") == pair.public
    (tmp_path / "bare.key").write_text(pair.public.decode() + "\n")  # a pasted key on one line
    assert load_public_key(str(tmp_path / "bare.key")) == pair.public
    allowed = load_allow_list([str(keys)])  # a folder: its *.key files, never the secrets
    assert len(allowed) == 3 and pair.public in allowed
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "monitor.key_secret").write_bytes((keys / "monitor.key_secret").read_bytes())
    os.chmod(creds / "monitor.key_secret", 0o440)  # systemd owns the access rules of credentials
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_keypair("credential:monitor.key_secret") == pair


@pytest.mark.parametrize("setup,args,message", [
    (None, ["--key", "{k}/nope.key_secret", "--allow", "{k}/monitor.key"], "nope.key_secret not found"),
    ("chmod", ["--key", "{k}/capture.key_secret", "--allow", "{k}/monitor.key"],
     "is accessible to other users (mode 0644); run: chmod 600"),
    ("garbage", ["--key", "{k}/capture.key_secret", "--allow", "{k}/monitor.key"], "is not a CURVE key file"),
    (None, ["--key", "{k}/capture.key", "--allow", "{k}/monitor.key"], "holds only a public key"),
    (None, ["--key", "credential:capture.key_secret", "--allow", "{k}/monitor.key"],
     "$CREDENTIALS_DIRECTORY is not set"),
    ("empty", ["--key", "{k}/capture.key_secret", "--allow", "{k}/empty"], "has no *.key public key files"),
    (None, ["--key", "{k}/capture.key_secret", "--allow", "z85:short"], "is not 40 Z85 characters"),
    (None, ["--allow", "{k}/monitor.key"], "allow needs key"),
    (None, ["--key", "{k}/capture.key_secret"], "the allow-list is empty"),
])
def test_key_problems_are_one_clear_line(keys, small_val_folder, monkeypatch, setup, args, message):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    if setup == "chmod":
        os.chmod(keys / "capture.key_secret", 0o644)
    elif setup == "garbage":
        (keys / "capture.key_secret").write_text("this is not a key\n")
        os.chmod(keys / "capture.key_secret", 0o600)
    elif setup == "empty":
        (keys / "empty").mkdir()
    res = run("capture", "--source", f"folder:{small_val_folder}", "--publish", free_tcp_endpoint(),
              *[a.replace("{k}", str(keys)) for a in args])
    assert message in one_error_line(res)


def test_monitor_key_problems_and_plain_text_beyond_loopback(keys, small_val_folder):
    line = one_error_line(run("monitor", "--connect", "tcp://127.0.0.1:1", "--no-classify",
                              "--key", keys / "monitor.key_secret"))
    assert "needs both key" in line
    line = one_error_line(run("monitor", "--connect", "tcp://192.0.2.10:5555", "--no-classify"))
    assert "refusing plain text on tcp://192.0.2.10:5555" in line and "--insecure" in line
    line = one_error_line(run("capture", "--source", f"folder:{small_val_folder}", "--publish", "tcp://*:0"))
    assert "refusing plain text on tcp://0.0.0.0:" in line


def test_loopback_detection():
    assert is_local_endpoint("tcp://127.0.0.1:5555") and is_local_endpoint("tcp://localhost:1")
    assert is_local_endpoint("ipc:///run/edgepipe/data") and is_local_endpoint("tcp://[::1]:5")
    assert not is_local_endpoint("tcp://0.0.0.0:5555") and not is_local_endpoint("tcp://*:5555")
    assert not is_local_endpoint("tcp://192.0.2.1:5555")


# --- over real sockets --------------------------------------------------------------------------

def test_only_allowed_keys_get_frames_or_send_requests(keys, video_clip, caplog):
    caplog.set_level(logging.WARNING)
    data, control = free_tcp_endpoint(), free_tcp_endpoint()
    server = SecurityOptions(key=str(keys / "capture.key_secret"), allow=(str(keys / "monitor.key"),))
    service = CaptureService(CaptureSettings(source="paced", publish=data, gop=10, stream_id="vault"),
                             ServiceOptions(control=control, metrics="127.0.0.1:0", security=server),
                             source=PacedSource(decode_frames(video_clip, 20, (192, 108)), fps=40))
    loop, collector_registry = service.loop, service.registry

    def monitor(key: str, server_key: str = "capture.key"):
        sec = SecurityOptions(key=str(keys / key), server_key=str(keys / server_key))
        return MonitorService(data, None, ServiceOptions(control=control, security=sec))

    good, stranger, wrong_server = monitor("monitor.key_secret"), monitor("stranger.key_secret"), \
        monitor("monitor.key_secret", server_key="stranger.key")
    ctx = zmq.Context.instance()
    plain_sub = ctx.socket(zmq.SUB)  # no CURVE at all
    plain_sub.setsockopt(zmq.SUBSCRIBE, b"")
    plain_sub.connect(data)
    attackers = []
    for pair in (None, load_keypair(str(keys / "stranger.key_secret"))):
        dealer = ctx.socket(zmq.DEALER)  # queues its requests, hoping the handshake lets them through
        dealer.linger = 0
        if pair is not None:
            configure_client(dealer, CurveClient(pair, load_public_key(str(keys / "capture.key"))))
        dealer.connect(control)
        attackers.append(dealer)

    runs = [Running(m.run) for m in (good, stranger, wrong_server)]
    cap = Running(service.run)
    try:
        assert wait_for(lambda: good.monitor.decoded >= 20, 15)
        for dealer in attackers:
            for _ in range(5):
                try:
                    dealer.send_multipart([CONTROL_MAGIC, KEYFRAME, b"vault"], flags=zmq.NOBLOCK)
                except zmq.Again:  # refused already: no connection to queue on
                    pass
        assert good.control.request_keyframe("vault")
        assert wait_for(lambda: loop.stats.keyframe_requests >= 1, 5)
        frames_before = good.monitor.decoded
        assert wait_for(lambda: good.monitor.decoded >= frames_before + 20, 10)  # time for the others to try
        metrics = {s.name + str(sorted(s.labels.items())): s.value
                   for fam in collector_registry.collect() for s in fam.samples}
        plain_got_something = plain_sub.poll(100)
        subscriptions = loop.publisher.subscribers_seen
    finally:
        cap.stop()
        for r in runs:
            r.stop()
        for m in (good, stranger, wrong_server):
            m.close()
        service.close()
        plain_sub.close(0)
        for d in attackers:
            d.close(0)
    assert good.monitor.report()["lost"] == 0
    for m in (stranger, wrong_server):
        assert m.monitor.messages == 0  # received nothing
    assert not plain_got_something
    assert loop.stats.keyframe_requests == 1  # only the allowed monitor's request arrived
    assert subscriptions == 1  # ...and only its subscription: the others never got as far as subscribing
    # refusals are logged on both sides and counted
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "not in the allow-list" in text  # capture: the stranger's key
    assert "a peer without CURVE or with the wrong server key" in text  # capture: plain text / wrong server key
    assert "the capture refused this monitor's key" in text  # the stranger's own log
    assert metrics["edgepipe_capture_auth_refused_total[('cause', 'unknown_key')]"] >= 1
    assert metrics["edgepipe_capture_auth_refused_total[('cause', 'handshake_protocol')]"] >= 1
    assert metrics["edgepipe_capture_auth_accepted_total[]"] >= 2  # the good monitor's data + control


def test_plain_subscriber_gets_nothing_from_a_curve_capture(keys, small_val_folder):
    """The same check with a raw socket that keeps polling: not a byte arrives."""
    data = free_tcp_endpoint()
    server = SecurityOptions(key=str(keys / "capture.key_secret"), allow=(str(keys / "monitor.key"),))
    service = CaptureService(CaptureSettings(source=f"folder:{small_val_folder}", publish=data, loop=True,
                                             realtime=True, fps=50), ServiceOptions(security=server))
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(data)
    cap = Running(service.run)
    try:
        assert wait_for(lambda: service.loop.stats.frames_sent >= 30, 10)
        assert not sub.poll(300)
    finally:
        cap.stop()
        service.close()
        sub.close(0)


def test_wrong_server_key_type_is_rejected():
    with pytest.raises(EdgepipeError, match="40 Z85"):
        load_public_key("z85:" + "x" * 39)
