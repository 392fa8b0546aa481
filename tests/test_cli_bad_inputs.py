"""Every wrong input is one `Error:` line and a non-zero exit, found before any work starts (issue 12).

Each case runs the real command on real files (shared images, this repository's files, checkpoints
written here). Sockets are made to fail loudly: a case that got as far as binding or connecting
fails the test instead of passing on a late error, and nothing trains or streams.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgepipe.cli import cli

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")

REPO = Path(__file__).resolve().parents[1]
PUBLISH = "tcp://127.0.0.1:5791"


def _no_sockets(*_args, **_kwargs):
    raise AssertionError("a socket was opened: the input should have been refused before")


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    import edgepipe.demo
    import edgepipe.relay.service
    import edgepipe.transport.sockets

    for module in (edgepipe.transport.sockets, edgepipe.demo):
        monkeypatch.setattr(module, "Publisher", _no_sockets)
        monkeypatch.setattr(module, "Subscriber", _no_sockets)
    monkeypatch.setattr(edgepipe.relay.service, "Relay", _no_sockets)



@pytest.fixture(scope="module")
def files(tmp_path_factory, small_val_folder):
    """Placeholders of the table -> real paths."""
    root = tmp_path_factory.mktemp("bad_inputs")
    pickled = root / "linear.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module, not an edgepipe checkpoint
    tagless = root / "weights.pt"
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, tagless)
    notes = root / "notes.txt"
    notes.write_text("a file where a folder belongs\n")
    return {"{images}": str(small_val_folder), "{readme}": str(REPO / "README.md"), "{pickled}": str(pickled),
            "{tagless}": str(tagless), "{notes}": str(notes), "{tmp}": str(root), "{missing}": str(root / "missing")}


CAPTURE = ["capture", "--source", "folder:{images}", "--publish", PUBLISH, "--insecure"]


def capture(*args: str) -> list[str]:
    return [*CAPTURE, *args]


def case_id(args: list[str]) -> str:
    """The command and what is wrong with it: capture's common flags left out."""
    return " ".join(["capture", *args[len(CAPTURE):]] if args[:len(CAPTURE)] == CAPTURE else args)


CASES = [
    # capture: codec settings (items 1, 2, 6)
    (capture("--preset", "fastest"), "'fastest' is not one of 'ultrafast'"),
    (capture("--gop", "-1"), "-1 is not in the range x>=0"),
    (capture("--frames", "0"), "0 is not in the range x>=1"),
    (capture("--frames", "-3"), "-3 is not in the range x>=1"),
    (capture("--crf", "28", "--qp", "30"), "--crf and --qp are exclusive"),
    (capture("--crf", "60"), "--crf must be 0..51"),
    (capture("--codec", "jpeg", "--crf", "20"), "--crf is for --codec hevc only"),
    (capture("--qp", "99"), "for --codec hevc it is the QP, 0..51"),
    (capture("--codec", "jpeg", "--qp", "0"), "for --codec jpeg it is the quality, 1..100"),
    (capture("--codec", "jpeg2000", "--qp", "5000"), "compression x1000, 1..1000"),
    # capture: frame size, stream id, metrics (items 3, 5)
    (capture("--size", "99999x99999"), "each side must be 16..8192"),
    (capture("--size", "8x8"), "each side must be 16..8192"),
    (capture("--size", "big"), "WIDTHxHEIGHT"),
    (capture("--stream-id", ""), "--stream-id must be 1..255 bytes"),
    (capture("--metrics", "99999"), "metrics port 99999 is out of range"),
    # capture: endpoints (item 5)
    (["capture", "--source", "folder:{images}", "--publish", "camera:5555"], "cannot bind camera:5555: an endpoint"),
    (["capture", "--source", "folder:{images}", "--publish", "tcp://127.0.0.1:99999"],
     "a port 1..65535, or 0 or * for any free one"),
    (["capture", "--source", "folder:{images}", "--publish", "tcp://192.0.2.1:5601", "--insecure"],
     "192.0.2.1 is not this machine's; a bind needs an IPv4"),
    (["capture", "--source", "folder:{images}", "--publish", "tcp://camera.invalid:5601", "--insecure"],
     "or 0.0.0.0 / * for all interfaces"),
    (capture("--control", "tcp://127.0.0.1"), "--control: cannot bind tcp://127.0.0.1: it needs tcp://HOST:PORT"),
    (["capture", "--source", "folder:{images}", "--publish", "tcp://*:5791"],
     "refusing plain text on tcp://0.0.0.0:5791"),
    # capture: reference frames (issue 14 item 1)
    (capture("--reference-every", "-1"), "-1 is not in the range x>=0"),
    (capture("--reference-every", "three"), "'three' is not a valid integer"),
    (capture("--reference-every", "3", "--reference-budget", "0"), "0.0 is not in the range x>0"),
    (capture("--reference-budget", "50"), "--reference-budget needs --reference-every N"),
    # capture: the operating-point ladder (issue 14 item 3)
    (capture("--ladder", "vp9:30,40"), "--ladder 'vp9:30,40': unknown codec 'vp9'; a capture sends one of hevc"),
    (capture("--ladder", "hevc:30,99"), "--ladder 'hevc:30,99': hevc QP must be 0..51, got 99"),
    (capture("--ladder", "jpeg:0,50"), "jpeg quality must be 1..100, got 0"),
    (capture("--ladder", "hevc"), "--ladder 'hevc': give CODEC:Q1,Q2,..., e.g. hevc:27,32,37,42"),
    (capture("--ladder", "hevc:30,x"), "'x' is not a whole number"),
    (capture("--ladder", "hevc:30,30"), "a setting is given twice"),
    (capture("--ladder", "jpeg:50,70", "--codec", "hevc"), "is for jpeg, but --codec is hevc: give one codec"),
    (capture("--ladder", "hevc:30,40", "--qp", "30"), "--ladder and --qp are exclusive"),
    (capture("--ladder", "hevc:30,40", "--crf", "28"), "--crf and --ladder/--ab are exclusive"),
    (capture("--ab", "none,,ours"), "--ab 'none,,ours': give pre-transforms separated by commas"),
    (capture("--ab", "none,none"), "a pre-transform is given twice"),
    (capture("--ab", "none,ours", "--engine", "ours"), "--ab and --engine are exclusive"),
    (capture("--ladder", "hevc:30,40", "--ab", "none,nosuch"), "model not found: 'nosuch'"),
    # capture: the closed loop's opt-in (issue 14 item 4)
    (capture("--allow-remote-qp", "22:42"), "--allow-remote-qp needs --control ENDPOINT"),
    (capture("--allow-remote-qp", "42:22", "--control", "tcp://127.0.0.1:5792"), "0 <= MIN <= MAX <= 51"),
    (capture("--allow-remote-qp", "x", "--control", "tcp://127.0.0.1:5792"), "--allow-remote-qp 'x': give MIN:MAX"),
    (capture("--allow-remote-qp", "22:42", "--control", "tcp://127.0.0.1:5792", "--codec", "jpeg", "--qp", "80"),
     "--allow-remote-qp moves the HEVC QP; --codec is jpeg"),
    (capture("--allow-remote-qp", "22:42", "--control", "tcp://127.0.0.1:5792", "--ladder", "hevc:30,40"),
     "--allow-remote-qp and --ladder/--ab are exclusive"),
    (capture("--allow-remote-engine", "none,ours"), "--allow-remote-engine needs --control ENDPOINT"),
    (capture("--allow-remote-engine", "ours,tvl1", "--control", "tcp://127.0.0.1:5792"),
     "--engine none is not in --allow-remote-engine ours,tvl1"),
    (capture("--allow-remote-engine", "none,nosuch", "--control", "tcp://127.0.0.1:5792"),
     "model not found: 'nosuch'"),
    (capture("--allow-remote-engine", "none,ours", "--control", "tcp://127.0.0.1:5792", "--ab", "none,ours"),
     "--allow-remote-engine and --ladder/--ab are exclusive"),
    # capture: dialling out to a relay (issue 15)
    (capture("--publish", "pub+bnd:tcp://127.0.0.1:5791"), "--publish: unknown role 'pub+bnd'"),
    (capture("--publish", "pub+connect:tcp://relay"), "--publish: cannot connect to tcp://relay: it needs tcp://HOST:PORT"),
    (capture("--publish", "pub+connect:"), "'pub+connect:' names a role but no address"),
    (capture("--control", "pub+connect:tcp://127.0.0.1:5792"), "--control: pub+connect:tcp://127.0.0.1:5792: only "
                                                                "--publish says a role"),
    (["capture", "--source", "folder:{images}", "--publish", "pub+connect:tcp://192.0.2.1:5555"],
     "refusing plain text on pub+connect:tcp://192.0.2.1:5555"),
    # capture: sources and models (items 4, 8)
    (["capture", "--source", "{missing}.mp4", "--publish", PUBLISH], "missing.mp4 does not exist"),
    (["capture", "--source", "{readme}", "--publish", PUBLISH], "is not a video or image FFmpeg can read"),
    (["capture", "--source", "{images}", "--publish", PUBLISH], "is a folder: use folder:"),
    (["capture", "--source", "ftp://camera/x", "--publish", PUBLISH], "unknown source 'ftp://camera/x'"),
    (["capture", "--source", "folder:{missing}", "--publish", PUBLISH], "data folder not found"),
    (capture("--engine", "{pickled}"), "is not an edgepipe ED checkpoint (not a readable checkpoint: it holds "
                                       "pickled Python objects such as torch.nn.modules.linear.Linear"),
    (capture("--engine", "{tagless}"), "is not an edgepipe ED checkpoint (no 'edgepipe-ed' format tag)"),
    (capture("--engine", "{missing}.onnx"), "model file not found"),
    # capture: status line and stream clock (issue 12)
    (capture("--status-every", "0"), "0 is not in the range x>=0.5"),
    (capture("--status-every", "soon"), "'soon' is not a valid float"),
    (capture("-q", "--status-every", "5"), "--quiet and --status-every are exclusive"),
    (capture("--fps", "0"), "0 is not in the range x>0"),
    # capture: thread budgets (issue 13)
    (capture("--threads", "engine=0"), "--threads 'engine=0': engine's threads must be a whole number 1..256"),
    (capture("--threads", "gpu=2"), "--threads 'gpu=2': unknown item 'gpu=2'"),
    (capture("--threads", "auto,4"), "give one of auto, defaults or a core count, not two"),
    (capture("--threads", "0"), "a core count must be a whole number 1..256"),
    (capture("--threads", "spin=maybe"), "spin is on or off"),
    (capture("--threads", ""), "an empty item"),
    # monitor: sinks and status line (issue 12)
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--record", "{tmp}/out.avi"], "the file must end in .mkv"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--record", "rtsp://camera/x.mkv"], "only files are supported"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--record", "{missing}/out.mkv"], "missing does not exist"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--record", "{tmp}"], "is a folder; give a file"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--save-frames", "{notes}"], "is a file; give a folder"),
    # monitor: the closed loop (issue 14 item 4)
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--target-agreement", "0.9"],
     "--target-agreement needs --control ENDPOINT"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--target-agreement", "1.5"], "1.5 is not in the range"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "tcp://127.0.0.1:5556", "--target-agreement",
      "0.9", "--target-qp-range", "30"], "--target-qp-range '30': give MIN:MAX"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "tcp://127.0.0.1:5556", "--target-agreement",
      "0.9", "--no-classify"], "--target-agreement and --no-classify are exclusive"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "tcp://127.0.0.1:5556", "--target-agreement",
      "0.9", "--target-measure", "kl"], "'kl' is not one of"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "tcp://127.0.0.1:5556", "--target-engines",
      "none,ours"], "--target-engines needs --target-agreement"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "tcp://127.0.0.1:5556", "--target-agreement",
      "0.9", "--target-engines", "ours"], "--target-engines 'ours': give two engines or more"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "tcp://127.0.0.1:5556", "--target-agreement",
      "0.9", "--target-engines", "none,nosuch"], "model not found: 'nosuch'"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "tcp://127.0.0.1:5556", "--target-agreement",
      "0.9", "--target-engines", "none,none"], "--target-engines: two of the engines none, none are the same model"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--save-frames", "{tmp}/f", "--save-every", "0"],
     "0 is not in the range x>=1"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--save-every", "5"], "--save-every needs --save-frames"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--status-every", "-1"], "-1.0 is not in the range x>=0.5"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--quiet", "--status-every", "2"],
     "--quiet and --status-every are exclusive"),
    # monitor (items 5, 9)
    (["monitor", "--connect", "camera:5555", "--no-classify"],
     "--connect: cannot connect to camera:5555: an endpoint is tcp://HOST:PORT or ipc://PATH"),
    (["monitor", "--connect", "tcp://camera:99999", "--no-classify"], "port 1..65535"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--control", "camera:5556"],
     "--control: cannot connect to camera:5556"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--frames", "0"], "0 is not in the range x>=1"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--recognizer", "resnet"], "'resnet' is not one of"),
    # monitor: classification beside decoding (issue 15) and --predictions (issue 14)
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--classify-queue", "0"], "0 is not in the range x>=1"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--classify-batch", "0"], "0 is not in the range x>=1"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--classify-every", "-2"], "-2 is not in the range x>=1"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--classify-queue", "4", "--classify-batch", "8"],
     "--classify-batch 8 is larger than --classify-queue 4"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--classify-policy", "newest"],
     "'newest' is not one of 'keyframes-first', 'all'"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--classify-policy", "all", "--classify-every", "3"],
     "--classify-every ranks frames for --classify-policy keyframes-first"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--no-classify", "--predictions", "{tmp}/p.jsonl"],
     "--no-classify and --predictions are exclusive"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--no-classify", "--classify-queue", "8"],
     "--no-classify and --classify-queue are exclusive"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--predictions", "{missing}/p.jsonl"], "missing does not exist"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--predictions", "{tmp}"], "is a folder; give a file"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--predictions", "/proc/edgepipe-predictions.jsonl"],
     "cannot create the file"),
    # monitor: a shard or some streams (issue 15)
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--shard", "3/2"], "--shard 3/2: K must be 0..1 for N = 2"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--shard", "0/0"], "--shard 0/0: N must be 1..256"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--shard", "1/300"], "--shard 1/300: N must be 1..256"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--shard", "half"], "--shard half: a shard is K/N"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--streams", "cam1,,cam2"], "an empty name is not one"),
    (["monitor", "--connect", "tcp://127.0.0.1:5555", "--streams", "cam1", "--shard", "0/2"],
     "--streams and --shard are exclusive"),
    # relay (issue 15)
    (["relay", "--cameras", "camera:5555", "--monitors", "tcp://127.0.0.1:5792"],
     "--cameras: cannot bind camera:5555: an endpoint is tcp://HOST:PORT"),
    (["relay", "--cameras", "tcp://127.0.0.1:5791", "--monitors", "tcp://127.0.0.1:99999"], "a port 1..65535"),
    (["relay", "--cameras", "pub+connect:tcp://127.0.0.1:5791", "--monitors", "tcp://127.0.0.1:5792"],
     "only --publish says a role"),
    (["relay", "--cameras", "tcp://127.0.0.1:5791", "--monitors", "tcp://localhost:5791"],
     "--cameras and --monitors are the same endpoint"),
    (["relay", "--cameras", "tcp://0.0.0.0:5791", "--monitors", "tcp://127.0.0.1:5792"],
     "relay: refusing plain text on tcp://0.0.0.0:5791"),
    (["relay", "--cameras", "tcp://127.0.0.1:5791", "--monitors", "tcp://127.0.0.1:5792", "--allow-cameras", "{tmp}"],
     "allow-cameras needs key"),
    (["relay", "--cameras", "tcp://127.0.0.1:5791", "--monitors", "tcp://127.0.0.1:5792", "--key", "{missing}"],
     "CURVE on the relay needs both allow-lists"),
    (["relay", "--cameras", "tcp://127.0.0.1:5791", "--monitors", "tcp://127.0.0.1:5792", "--key", "{missing}",
      "--allow-cameras", "{tmp}", "--allow-monitors", "{tmp}"], "missing not found"),
    (["relay", "--cameras", "tcp://127.0.0.1:5791", "--monitors", "tcp://127.0.0.1:5792", "--metrics", "99999"],
     "metrics port 99999 is out of range"),
    (["relay", "--cameras", "tcp://127.0.0.1:5791", "--monitors", "tcp://127.0.0.1:5792", "-q", "--status-every", "5"],
     "--quiet and --status-every are exclusive"),
    # demo
    (["demo", "--qp", "99"], "99 is not in the range 0<=x<=51"),
    (["demo", "--data", "{missing}"], "data folder not found"),
    (["demo", "--engine", "{missing}.onnx"], "model file not found"),
    # train and eval (item 9)
    (["train", "--data", "{images}", "--out", "{tmp}/ed.pt", "--recognizer", "resnet"], "'resnet' is not one of"),
    (["train", "--data", "{missing}", "--out", "{tmp}/ed.pt"], "data folder not found"),
    (["train", "--data", "{images}", "--out", "{tmp}/ed.pt", "--widths", "a,b,c"], "--widths must be three"),
    (["eval", "--data", "{images}", "--out", "{tmp}/eval", "--recognizer", "resnet"], "'resnet' is not one of"),
    (["eval", "--data", "{images}", "--out", "{tmp}/eval", "--codec", "webp"], "unknown codec 'webp'"),
    # export (item 8)
    (["export", "{missing}.pt", "--onnx", "{tmp}/ed.onnx"], "checkpoint not found"),
    (["export", "{pickled}", "--onnx", "{tmp}/ed.onnx"], "linear.pt is not an edgepipe ED checkpoint"),
    # build-engine (item 7): the file is checked before TensorRT is looked for
    (["build-engine", "{missing}.onnx"], "ONNX model not found"),
    (["build-engine", "{readme}"], "build-engine takes an ONNX model, got README.md"),
    (["build-engine", "ours", "--shapes", "1280x720"], "--shapes must be MIN:OPT:MAX"),
    # holdout
    (["holdout", "--data", "{missing}", "--out", "{tmp}/held"], "data folder not found"),
    (["holdout", "--data", "{images}", "--out", "{notes}"], "exists and is a file or not empty"),
    (["holdout", "--data", "{images}", "--out", "{tmp}/held", "--washed", "4"], "at least 8 pixels"),
]


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    out = []
    for arg in args:
        for key, value in files.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def check_one_error_line(output: str, phrase: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, output
    # besides click's own usage lines for a malformed flag, the error is all there is
    assert [line for line in lines if not line.startswith(("Usage:", "Try '"))] == errors, output
    assert phrase in errors[0], output


@pytest.mark.parametrize("args, phrase", CASES, ids=[case_id(a) for a, _ in CASES])
def test_bad_input_is_one_error_line(args, phrase, files):
    result = CliRunner().invoke(cli, _fill(args, files))
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    check_one_error_line(result.output, phrase)


def test_explicit_nvenc_without_a_usable_gpu_names_libx265(files):
    from edgepipe.media.codecs import resolve_encoder

    if resolve_encoder("auto") == "hevc_nvenc":
        pytest.skip("hevc_nvenc opens on this machine")
    result = CliRunner().invoke(cli, _fill(capture("--encoder", "hevc_nvenc"), files))
    assert result.exit_code != 0
    check_one_error_line(result.output, "no usable NVIDIA encoder on this machine")
    assert "libx265" in result.output


# OpenCV and its FFmpeg write to file descriptor 2 themselves: only a real process shows their noise.
@pytest.mark.parametrize("source, phrase", [
    ("rtsp://127.0.0.1:9/stream", "cannot open stream rtsp://127.0.0.1:9/stream"),
    ("/dev/video63", "camera /dev/video63 does not exist"),
])
def test_live_source_failure_is_one_line_on_stderr(source, phrase):
    if source.startswith("/dev/") and os.path.exists(source):
        pytest.skip(f"{source} exists here")
    proc = subprocess.run([sys.executable, "-m", "edgepipe.cli", "capture", "--source", source, "--publish", PUBLISH],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line, no FFmpeg/OpenCV lines
    check_one_error_line(proc.stderr, phrase)
