"""systemd: the unit files pass `systemd-analyze verify`, and the services speak sd_notify the way
Type=notify + WatchdogSec= expect: READY=1, WATCHDOG=1 only while frames flow, STOPPING=1."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.ops.watchdog import FlowWatchdog, Notifier
from edgepipe.transport.security import write_keypair
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import NotifySocket, PacedSource, Running, decode_frames, wait_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ["edgepipe-capture.service", "edgepipe-monitor.service", "edgepipe-relay.service"]
EDGEPIPE_BIN = Path(sys.executable).with_name("edgepipe")


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def staged_units(tmp_path: Path) -> list[Path]:
    """The units as install.sh writes them: ExecStart pointing at a real edgepipe executable."""
    out = []
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace("/opt/edgepipe/venv/bin/edgepipe", str(EDGEPIPE_BIN))
        (tmp_path / name).write_text(text)
        out.append(tmp_path / name)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian/Ubuntu: apt-get install systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path):
    assert EDGEPIPE_BIN.exists()
    res = subprocess.run(["systemd-analyze", "verify", *map(str, staged_units(tmp_path))], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values too, with a warning: require silence
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stderr + res.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_are_hardened(tmp_path):
    for unit in staged_units(tmp_path):
        res = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
        if res.returncode != 0 and "offline" in res.stderr:
            pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
        level = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
        assert level, res.stdout + res.stderr
        assert float(level.group(1)) <= 3.0, f"{unit.name}: exposure {level.group(1)}"  # 10 = unprotected


@pytest.mark.parametrize("role", ["capture", "monitor", "relay"])
def test_units_match_the_spec_and_the_example_config(role):
    s = unit_settings(DEPLOY / f"edgepipe-{role}.service")
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"]
    assert int(s["WatchdogSec"][0]) >= 25  # > 2 x the longest camera reopen back-off (10 s)
    assert s["User"] == ["edgepipe"] and s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["ExecStart"][0].endswith(f"edgepipe {role} --config /etc/edgepipe/{role}.toml")
    # the credential the unit loads is the one the example config reads
    cred = s["LoadCredential"][0].split(":")[0]
    assert f'key = "credential:{cred}"' in (DEPLOY / f"{role}.toml").read_text()


# --- sd_notify ----------------------------------------------------------------------------------

def test_notifier_reads_systemd_environment(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    try:
        n = Notifier({"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "3000000"})
        assert n.enabled and n.watchdog_s == 3.0
        assert n.notify("READY=1")
        assert wait_for(lambda: ns.lines() == ["READY=1"], 2)
        n.close()
    finally:
        ns.close()
    assert Notifier({"NOTIFY_SOCKET": "@edgepipe-test"}).address == b"\0edgepipe-test"  # abstract namespace
    other = Notifier({"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None  # the watchdog belongs to another process
    assert not Notifier({}).enabled and not Notifier({}).notify("READY=1")  # outside systemd: no-op


def test_watchdog_is_fed_only_while_frames_flow(tmp_path, video_clip, monkeypatch):
    ns = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # pings every 0.1 s
    source = PacedSource(decode_frames(video_clip, 10, (192, 108)), fps=50)
    service = CaptureService(CaptureSettings(source="paced", publish=free_tcp_endpoint(), gop=10), source=source)
    cap = Running(service.run)
    try:
        assert wait_for(lambda: len(ns.lines("WATCHDOG=1")) >= 3, 10)  # frames flow: fed
        source.freeze.set()  # the camera read hangs
        time.sleep(0.3)
        frozen_at = time.monotonic()
        time.sleep(1.0)
        fed_while_frozen = [m for t, m in ns.messages if m == "WATCHDOG=1" and t > frozen_at]
        status_while_frozen = [m for t, m in ns.messages if m.startswith("STATUS=") and t > frozen_at]
        source.freeze.clear()
        count = len(ns.lines("WATCHDOG=1"))
        assert wait_for(lambda: len(ns.lines("WATCHDOG=1")) > count, 5)  # fed again once frames flow
    finally:
        source.freeze.clear()
        cap.stop()
        service.close()
        ns.close()
    assert ns.lines()[0] == "READY=1"
    assert fed_while_frozen == []  # systemd would kill and restart the service
    assert status_while_frozen  # while still saying how it is doing
    assert ns.lines()[-1] == "STOPPING=1" and ns.lines("STOPPING=1") == ["STOPPING=1"]


def test_flow_watchdog_sends_stopping_right_after_the_stop_request(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    stop = threading.Event()
    counter = iter(range(10**9))
    dog = FlowWatchdog(Notifier({"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "30000000"}),
                       lambda: next(counter), stop)
    try:
        dog.ready()
        stop.set()
        t0 = time.monotonic()
        assert wait_for(lambda: "STOPPING=1" in ns.lines(), 2)
        assert time.monotonic() - t0 < 1.0  # not after a 10 s watchdog interval
        dog.close()
    finally:
        ns.close()
    assert ns.lines() == ["READY=1", "STOPPING=1"]


def test_services_run_as_systemd_runs_them(tmp_path, video_clip):
    """The shipped configs, the secret keys as systemd credentials, a notify socket each; the flags
    that would differ on a real device override the file. Then systemctl stop (SIGTERM)."""
    keys, creds = tmp_path / "keys", tmp_path / "creds"
    for name in ("capture", "monitor"):
        write_keypair(keys, name)
    for name in ("capture", "monitor"):
        (creds / name).mkdir(parents=True)
        shutil.copy(keys / f"{name}.key_secret", creds / name / f"{name}.key_secret")
    data, control = free_tcp_endpoint(), free_tcp_endpoint()
    sockets = {name: NotifySocket(tmp_path / f"{name}.notify") for name in ("capture", "monitor")}

    def spawn(name, args):
        env = {**os.environ, "NOTIFY_SOCKET": str(sockets[name].path), "WATCHDOG_USEC": "600000",
               "CREDENTIALS_DIRECTORY": str(creds / name)}
        return subprocess.Popen([sys.executable, "-m", "edgepipe.cli", name, "--config", str(DEPLOY / f"{name}.toml"),
                                 *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    stats, report = tmp_path / "stats.json", tmp_path / "report.json"
    procs = {}
    try:
        procs["capture"] = spawn("capture", ["--source", str(video_clip), "--size", "384x216", "--realtime", "--loop",
                                             "--publish", data, "--control", control, "--allow", str(keys / "monitor.key"),
                                             "--metrics", "127.0.0.1:0", "--stats", str(stats)])
        procs["monitor"] = spawn("monitor", ["--connect", data, "--control", control, "--no-classify",
                                             "--server-key", str(keys / "capture.key"), "--metrics", "127.0.0.1:0",
                                             "--report", str(report)])
        for name in procs:
            assert wait_for(lambda: "READY=1" in sockets[name].lines(), 20), procs[name].stderr.read()
        decoded = lambda: [int(m) for s in sockets["monitor"].lines("STATUS=")  # noqa: E731
                           for m in re.findall(r"decoded (\d+) frames", s)]
        assert wait_for(lambda: decoded() and decoded()[-1] >= 10, 20)
        assert sockets["capture"].lines("WATCHDOG=1") and sockets["monitor"].lines("WATCHDOG=1")
        for name in ("capture", "monitor"):
            procs[name].send_signal(signal.SIGTERM)
            procs[name].communicate(timeout=20)
    finally:
        for p in procs.values():
            p.kill()
        for s in sockets.values():
            s.close()
    for name, p in procs.items():
        assert p.returncode == 0
        assert sockets[name].lines()[-1] == "STOPPING=1"
    assert json.loads(stats.read_text())["frames_sent"] >= 10
    rep = json.loads(report.read_text())
    assert rep["decoded"] >= 10 and rep["lost"] == 0
