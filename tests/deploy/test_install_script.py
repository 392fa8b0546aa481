"""deploy/install.sh, staged into a DESTDIR (no user, no systemctl, no pip): the tree it installs,
key modes, idempotence, and that the shipped example configs are valid for their commands."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install.sh"
VENV = Path(sys.executable).parent.parent


def install(destdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESTDIR": str(destdir)}
    return subprocess.run(["bash", str(SCRIPT), "--venv", str(VENV), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_staged_install_of_both_roles(tmp_path):
    res = install(tmp_path, "--role", "both")
    assert res.returncode == 0, res.stderr
    etc = tmp_path / "etc" / "edgepipe"
    assert (etc / "capture.toml").read_text() == (REPO / "deploy" / "capture.toml").read_text()
    assert (etc / "monitor.toml").read_text() == (REPO / "deploy" / "monitor.toml").read_text()
    for role in ("capture", "monitor"):
        assert mode(etc / "keys" / f"{role}.key_secret") == 0o600
        assert mode(etc / "keys" / f"{role}.key") == 0o644
        unit = (tmp_path / "etc" / "systemd" / "system" / f"edgepipe-{role}.service").read_text()
        assert f"ExecStart={VENV}/bin/edgepipe {role} --config /etc/edgepipe/{role}.toml" in unit
    # on one machine the monitor is trusted by the capture
    assert (etc / "keys" / "allowed" / "monitor.key").read_bytes() == (etc / "keys" / "monitor.key").read_bytes()
    assert (tmp_path / "usr" / "share" / "doc" / "edgepipe" / "deploy.md").exists()
    assert "systemctl start edgepipe-capture" in res.stdout


def test_staged_install_of_the_relay(tmp_path):
    res = install(tmp_path, "--role", "relay")
    assert res.returncode == 0, res.stderr
    etc = tmp_path / "etc" / "edgepipe"
    assert (etc / "relay.toml").read_text() == (REPO / "deploy" / "relay.toml").read_text()
    assert mode(etc / "keys" / "relay.key_secret") == 0o600 and mode(etc / "keys" / "relay.key") == 0o644
    assert (etc / "keys" / "cameras").is_dir() and (etc / "keys" / "monitors").is_dir()  # its two allow-lists
    unit = (tmp_path / "etc" / "systemd" / "system" / "edgepipe-relay.service").read_text()
    assert f"ExecStart={VENV}/bin/edgepipe relay --config /etc/edgepipe/relay.toml" in unit
    assert (tmp_path / "usr" / "share" / "doc" / "edgepipe" / "relay.md").exists()
    assert not (etc / "capture.toml").exists() and not (etc / "monitor.toml").exists()
    assert "systemctl start edgepipe-relay" in res.stdout


def test_rerun_keeps_keys_and_edited_config(tmp_path):
    assert install(tmp_path, "--role", "capture").returncode == 0
    etc = tmp_path / "etc" / "edgepipe"
    secret = (etc / "keys" / "capture.key_secret").read_bytes()
    (etc / "capture.toml").write_text('source = "/dev/video2"\n')
    res = install(tmp_path, "--role", "capture")
    assert res.returncode == 0, res.stderr
    assert (etc / "keys" / "capture.key_secret").read_bytes() == secret  # never regenerated
    assert (etc / "capture.toml").read_text() == 'source = "/dev/video2"\n'  # never overwritten
    assert (etc / "capture.toml.new").read_text() == (REPO / "deploy" / "capture.toml").read_text()
    assert not (etc / "monitor.toml").exists()


def test_dry_run_and_bad_options_change_nothing(tmp_path):
    res = install(tmp_path, "--role", "monitor", "--dry-run")
    assert res.returncode == 0 and "+ install" in res.stdout and "keys generate monitor" in res.stdout
    assert not (tmp_path / "etc").exists()
    res = install(tmp_path, "--role", "camera")
    assert res.returncode != 0 and "--role must be capture, monitor, both or relay" in res.stderr
    assert not (tmp_path / "etc").exists()


def test_script_is_clean_shell():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    res = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("role", ["capture", "monitor", "relay"])
def test_example_configs_are_valid_for_their_command(role):
    from edgepipe.commands.capture import capture
    from edgepipe.commands.monitor import monitor
    from edgepipe.commands.relay import relay
    from edgepipe.ops.config import read_toml, to_default_map

    command = {"capture": capture, "monitor": monitor, "relay": relay}[role]
    path = REPO / "deploy" / f"{role}.toml"
    with click.Context(command) as ctx:
        defaults = to_default_map(command, read_toml(path), path, ctx)
    assert defaults["key"] == f"credential:{role}.key_secret"
    assert defaults["metrics"].startswith("127.0.0.1:")  # not exposed to the network unless asked
