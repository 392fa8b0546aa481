"""--config FILE: TOML with the flag names; flags > file > defaults; bad files are one clear line."""
import json

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def settings(output: str) -> dict:
    """Parse --print-config output: {key: (value, source)}."""
    out = {}
    for line in output.splitlines():
        if line.startswith("#"):
            continue
        key, rest = line.split(" = ", 1)
        value, source = rest.rsplit("  # ", 1)
        out[key] = (json.loads(value), source)
    return out


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_precedence_flag_over_file_over_default(tmp_path):
    cfg = write(tmp_path, 'source = "folder:/data"\npublish = "tcp://127.0.0.1:5555"\nqp = 40\n'
                          'stream_id = "from-file"\ngop = 12\ncrop = true\nallow = "keys/"\n')
    res = run("capture", "--config", cfg, "--qp", "20", "--print-config")
    assert res.exit_code == 0, res.output
    s = settings(res.output)
    assert s["qp"] == (20, "flag")  # flag beats the file
    assert s["gop"] == (12, "config")  # file beats the default
    assert s["stream-id"] == ("from-file", "config")  # underscore spelling of --stream-id
    assert s["crop"] == (True, "config")
    assert s["allow"] == (["keys/"], "config")  # a single value for a repeatable flag
    assert s["preset"] == ("ultrafast", "default")
    assert s["source"] == ("folder:/data", "config")  # required flags can come from the file


def test_monitor_reads_the_same_way(tmp_path):
    cfg = write(tmp_path, 'connect = "tcp://10.0.0.5:5555"\ncontrol = "tcp://10.0.0.5:5556"\n'
                          'server-key = "z85:0000000000000000000000000000000000000000"\nno-classify = true\n'
                          'idle-timeout = 2.5\n')
    res = run("monitor", "--config", cfg, "--idle-timeout", "9", "--print-config")
    assert res.exit_code == 0, res.output
    s = settings(res.output)
    assert s["connect"] == ("tcp://10.0.0.5:5555", "config")
    assert s["no-classify"] == (True, "config")
    assert s["idle-timeout"] == (9.0, "flag")


def test_config_drives_a_real_run_and_flags_override_it(tmp_path, small_val_folder):
    stats = tmp_path / "stats.json"
    cfg = write(tmp_path, f'source = "folder:{small_val_folder}"\npublish = "tcp://127.0.0.1:0"\nframes = 6\n'
                          f'codec = "jpeg"\nqp = 80\nstats = "{stats}"\n')
    res = run("capture", "--config", cfg, "--frames", "3")
    assert res.exit_code == 0, res.output
    data = json.loads(stats.read_text())
    assert data["frames_sent"] == 3  # the flag, not the file's 6
    assert data["stages"]["encoder"]["frames"] == 3


@pytest.mark.parametrize("text,message", [
    ("qpp = 3\n", "unknown key 'qpp'"),
    ("[capture]\nqp = 3\n", "unknown key 'capture'"),
    ("qp = \"high\"\n", "key 'qp'"),
    ("qp = [1, 2]\n", "key 'qp' takes one value"),
    ("crop = \"yes\"\n", "key 'crop' must be true or false"),
    ("codec = \"h264\"\n", "key 'codec'"),
    ("stream-id = \"a\"\nstream_id = \"b\"\n", "given twice"),
    ("qp = \n", "invalid TOML"),
    ("qp = 3\nqp = 4\n", "invalid TOML"),
])
def test_bad_config_is_one_line_naming_the_problem(tmp_path, text, message):
    cfg = write(tmp_path, text)
    res = run("capture", "--config", cfg, "--source", "folder:/x", "--publish", "tcp://127.0.0.1:1")
    assert res.exit_code != 0
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: config "), res.output
    assert message in lines[0]
    assert cfg in lines[0]


def test_missing_unreadable_and_folder_configs(tmp_path):
    res = run("monitor", "--config", str(tmp_path / "nope.toml"), "--connect", "tcp://127.0.0.1:1")
    assert res.exit_code != 0 and "not found" in res.output and len(res.output.strip().splitlines()) == 1
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    res = run("monitor", "--config", str(binary), "--connect", "tcp://127.0.0.1:1")
    assert res.exit_code != 0 and "not UTF-8" in res.output
    res = run("monitor", "--config", str(tmp_path), "--connect", "tcp://127.0.0.1:1")
    assert res.exit_code != 0 and "is a folder" in res.output and len(res.output.strip().splitlines()) == 1
