"""The recognizer on Triton: the repository generator, the gRPC client's error paths, and a real server.

Always run (no tritonclient, no server): URL checks, the missing-package message, the repository (config and
ONNX export, logits against the in-process Classifier on real images), and the client's start checks, outage
and reconnect logic against a stand-in for tritonclient. With tritonclient (`pip install -e '.[triton]'`):
an unreachable server, and the config parsed by Triton's own ModelConfig protobuf.

The real server (marked slow): the Triton binary bundled by PyPI's nvidia-pytriton, started from the venv
that `deploy/triton/make-venv.sh` makes (Debian's /usr/bin/python3), serving the generated repository on
loopback. Skipped, with the reason, while that venv or tritonclient is missing.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.recognition.triton_client import RecognizerUnavailable, TritonClassifier, parse_server_url
from edgepipe.recognition.triton_repo import config_pbtxt, write_model_repository

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "deploy" / "triton" / "pytriton_serve.py"
MAKE_VENV = "deploy/triton/make-venv.sh"
MODEL = "efficientnet-lite0"


def _triton_venv() -> Path:
    if os.environ.get("EDGEPIPE_TRITON_VENV"):
        return Path(os.environ["EDGEPIPE_TRITON_VENV"])
    cache = os.environ.get("EDGEPIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgepipe")
    return Path(cache) / "triton-venv"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def frames(small_val_folder):
    """12 real Imagenette val images (3 classes x 4), uint8 RGB, with their labels."""
    from edgepipe.core.datasets import list_labelled_images, read_rgb

    items = list_labelled_images(small_val_folder)
    images = [read_rgb(i.path) for i in items]
    assert len({im.shape for im in images}) == 1, "the test batches frames of one size"
    return np.stack(images), np.array([i.label for i in items])


@pytest.fixture(scope="module")
def in_process(frames):
    from edgepipe.recognition import Classifier

    return Classifier(MODEL).logits(frames[0])


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_repository")
    write_model_repository(root, MODEL)
    return root


# --- no server, no tritonclient ---------------------------------------------------------------------


@pytest.mark.parametrize("url, match", [
    ("http://triton:8000", "its gRPC port is 8001"),
    ("triton:8001", "expected grpc://HOST:PORT"),
    ("grpc://triton", "port 1..65535"),
    ("grpc://triton:0", "port 1..65535"),
    ("grpc://:8001", "port 1..65535"),
    ("grpc://::1:8001", "IPv6 host in brackets"),
])
def test_bad_server_urls_fail_in_one_line_before_any_import(url, match, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # a URL typo is reported even without the package
    with pytest.raises(EdgepipeError, match=match):
        TritonClassifier(url)


def test_good_server_urls():
    assert parse_server_url("grpc://triton:8001") == "triton:8001"
    assert parse_server_url("grpc://10.0.0.5:9001/") == "10.0.0.5:9001"
    assert parse_server_url("grpc://[::1]:8001") == "[::1]:8001"


def test_missing_tritonclient_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(EdgepipeError, match=r"pip install 'edgepipe\[triton\]'"):
        TritonClassifier("grpc://127.0.0.1:8001")


def test_importing_edgepipe_does_not_import_tritonclient():
    code = ("import sys, edgepipe.recognition.triton_client, edgepipe.recognition.triton_repo, edgepipe.cli; "
            "sys.exit('tritonclient' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_config_pbtxt_has_dynamic_batching_and_the_recognizer_signature():
    text = config_pbtxt(MODEL, max_batch_size=16, queue_delay_us=500)
    assert 'name: "efficientnet-lite0"' in text and 'backend: "onnxruntime"' in text
    assert "max_batch_size: 16" in text and "max_queue_delay_microseconds: 500" in text
    assert 'name: "frames"' in text and "TYPE_UINT8" in text and "dims: [ -1, -1, 3 ]" in text
    assert 'name: "logits"' in text and "TYPE_FP32" in text and "dims: [ 1000 ]" in text
    with pytest.raises(EdgepipeError, match="--max-batch"):
        config_pbtxt(MODEL, max_batch_size=0)


def test_config_pbtxt_parses_as_tritons_model_config(model_repository):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed: pip install -e '.[triton]'")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((model_repository / MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == MODEL and config.backend == "onnxruntime" and config.max_batch_size == 32
    assert config.HasField("dynamic_batching")
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == \
        [("frames", "TYPE_UINT8", [-1, -1, 3])]
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == \
        [("logits", "TYPE_FP32", [1000])]


def test_repository_model_gives_the_in_process_logits(model_repository, frames, in_process):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_repository / MODEL / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    images, labels = frames
    logits = session.run(["logits"], {"frames": images})[0]
    assert logits.shape == (len(images), 1000)
    assert np.abs(logits - in_process).max() < 1e-3
    assert (logits.argmax(1) == in_process.argmax(1)).all()
    assert (logits.argmax(1) == labels).mean() >= 0.75  # a real recognizer, not a constant
    small = session.run(["logits"], {"frames": np.ascontiguousarray(images[:2, :96, :128])})[0]
    assert small.shape == (2, 1000)  # batch, height and width are dynamic


def test_recognizer_repo_command(tmp_path):
    from click.testing import CliRunner

    from edgepipe.cli import cli

    runner = CliRunner()
    assert "recognizer-repo" in runner.invoke(cli, ["--help"]).output
    result = runner.invoke(cli, ["recognizer-repo", "--out", str(tmp_path / "bad"), "--max-batch", "0"])
    assert result.exit_code != 0 and "--max-batch must be at least 1" in result.output
    assert not (tmp_path / "bad").exists()  # checked before the export
    result = runner.invoke(cli, ["recognizer-repo", "--out", str(tmp_path / "repo"), "--queue-delay-us", "100"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "repo" / MODEL / "1" / "model.onnx").stat().st_size > 1_000_000
    assert "max_queue_delay_microseconds: 100" in (tmp_path / "repo" / MODEL / "config.pbtxt").read_text()
    assert "tritonserver --model-repository" in result.output


# --- the client against a stand-in for tritonclient (its start checks, outage and reconnect) ----------


class _FakeServerError(Exception):
    def __init__(self, msg, status=None):
        super().__init__(msg)
        self._msg, self._status = msg, status

    def message(self):
        return self._msg

    def status(self):
        return self._status


class _FakeServer:
    """What a tritonclient.grpc client sees: up or down, one model and its signature."""

    def __init__(self):
        self.up = True
        self.ready = True
        self.input_shape = ["-1", "-1", "-1", "3"]
        self.max_batch_size = 4
        self.batches: list[int] = []
        self.shapes: list[tuple] = []

    def _check_up(self):
        if not self.up:
            raise _FakeServerError("failed to connect to all addresses; Connection refused", "StatusCode.UNAVAILABLE")


class _FakeClient:
    server: _FakeServer

    def __init__(self, url):
        self.closed = False

    def is_server_live(self, client_timeout=None):
        self.server._check_up()
        return True

    def is_model_ready(self, model, version="", client_timeout=None):
        self.server._check_up()
        return self.server.ready and model == MODEL

    def get_model_repository_index(self, as_json=False, client_timeout=None):
        return {"models": [{"name": MODEL, "state": "READY" if self.server.ready else "UNAVAILABLE"}]}

    def get_model_metadata(self, model, version="", as_json=False, client_timeout=None):
        self.server._check_up()
        return {"inputs": [{"name": "frames", "datatype": "UINT8", "shape": self.server.input_shape}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": ["-1", "1000"]}]}

    def get_model_config(self, model, version="", as_json=False, client_timeout=None):
        return {"config": {"max_batch_size": self.server.max_batch_size}}

    def infer(self, model, inputs, model_version="", outputs=None, client_timeout=None):
        assert not self.closed
        self.server._check_up()
        batch = inputs[0].data
        self.server.batches.append(len(batch))
        self.server.shapes.append(batch.shape)
        logits = np.zeros((len(batch), 1000), np.float32)
        logits[np.arange(len(batch)), batch[:, 0, 0, 0]] = 1.0  # class = first pixel's red value
        return type("Result", (), {"as_numpy": lambda self, name: logits})()

    def close(self):
        self.closed = True


class _FakeInput:
    def __init__(self, name, shape, datatype):
        assert (name, datatype) == ("frames", "UINT8")

    def set_data_from_numpy(self, data):
        assert data.dtype == np.uint8 and data.flags.c_contiguous
        self.data = data


@pytest.fixture
def fake_server(monkeypatch):
    import types

    server = _FakeServer()
    grpc = types.ModuleType("tritonclient.grpc")
    grpc.InferenceServerClient = type("Client", (_FakeClient,), {"server": server})
    grpc.InferInput = _FakeInput
    grpc.InferRequestedOutput = lambda name: name
    utils = types.ModuleType("tritonclient.utils")
    utils.InferenceServerException = _FakeServerError
    package = types.ModuleType("tritonclient")
    package.grpc, package.utils = grpc, utils
    for name, module in [("tritonclient", package), ("tritonclient.grpc", grpc), ("tritonclient.utils", utils)]:
        monkeypatch.setitem(sys.modules, name, module)
    return server


def _frames_of_classes(classes) -> np.ndarray:
    frames = np.zeros((len(classes), 8, 8, 3), np.uint8)
    frames[:, 0, 0, 0] = classes
    return frames


def test_client_batches_by_the_servers_max_batch_size(fake_server):
    client = TritonClassifier("grpc://triton:8001", MODEL)
    classes = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    assert client.top1(_frames_of_classes(classes)).tolist() == classes
    assert fake_server.batches == [4, 4, 2]
    assert client.logits(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 1000)
    with pytest.raises(ValueError, match="uint8"):
        client.logits(np.zeros((1, 8, 8, 3), np.float32))


def test_client_gives_top5_with_probabilities_in_batches(fake_server):
    """Top-5 from the server's logits, computed as in process; frames of any size batch together once the
    centre crop has made them 224x224 (what the monitor does with `prepare`)."""
    from edgepipe.server.classify import Recognizer

    client = TritonClassifier("grpc://triton:8001", MODEL)
    top = client.topk(_frames_of_classes([3, 9, 1, 4, 1, 5]), 5)
    assert top.top1.tolist() == [3, 9, 1, 4, 1, 5] and fake_server.batches == [4, 2]
    e = np.e
    assert top.probs[:, 0] == pytest.approx(e / (e + 999))  # one logit of 1 among 1000 zeros
    assert top.classes[0].tolist() == [3, 0, 1, 2, 4]  # then the tied zeros, lowest index first
    cropped = TritonClassifier("grpc://triton:8001", MODEL, view="centre-crop")
    frames = [np.zeros((120, 240, 3), np.uint8), np.zeros((300, 200, 3), np.uint8)]
    fake_server.shapes.clear()
    Recognizer.from_classifier(cropped).classify(frames)
    assert fake_server.shapes == [(2, 224, 224, 3)]  # two sizes, one request


def test_client_sees_frames_through_the_classifiers_view(fake_server):
    wide = np.zeros((2, 120, 240, 3), np.uint8)
    wide[0, 60, 60, 0], wide[1, 60, 180, 0] = 5, 7  # a mark in the left tile of frame 0, the right tile of 1
    client = TritonClassifier("grpc://triton:8001", MODEL, view="centre-crop")
    assert client.logits(wide).shape == (2, 1000)
    assert fake_server.shapes[-1][1:] == (224, 224, 3)  # the centre square at 224 goes over the wire
    fake_server.shapes.clear()
    client = TritonClassifier("grpc://triton:8001", MODEL, view="tiles")
    logits = client.logits(wide)
    assert [s[1:] for s in fake_server.shapes] == [(224, 224, 3)]  # 2 frames x 2 tiles: one batch of 4
    assert fake_server.batches[-1] == 4 and logits.shape == (2, 1000)
    with pytest.raises(EdgepipeError, match="unknown recognizer view"):
        TritonClassifier("grpc://triton:8001", MODEL, view="zoom")


def test_client_start_errors_are_one_line(fake_server):
    fake_server.up = False
    with pytest.raises(EdgepipeError, match="cannot reach Triton at grpc://triton:8001") as info:
        TritonClassifier("grpc://triton:8001", MODEL)
    assert not isinstance(info.value, RecognizerUnavailable) and "\n" not in str(info.value)
    fake_server.up = True
    with pytest.raises(EdgepipeError, match=r"model 'vgg16' is not ready .*the server has: efficientnet-lite0"):
        TritonClassifier("grpc://triton:8001", "vgg16")
    fake_server.input_shape = ["-1", "3", "-1", "-1"]  # an NCHW float-style model
    with pytest.raises(EdgepipeError, match=r"expected one UINT8 input 'frames' \[-1, H, W, 3\].*recognizer-repo"):
        TritonClassifier("grpc://triton:8001", MODEL)
    fake_server.input_shape = ["-1", "224", "224", "3"]  # fixed size: accepted, other sizes refused in one line
    client = TritonClassifier("grpc://triton:8001", MODEL)
    with pytest.raises(EdgepipeError, match="takes 224x224 frames only, got 8x8"):
        client.logits(_frames_of_classes([1]))


def test_server_loss_gives_unavailable_then_recovers(fake_server):
    client = TritonClassifier("grpc://triton:8001", MODEL, retry_s=(0.2, 0.4))
    assert client.top1(_frames_of_classes([7])).tolist() == [7]
    fake_server.up = False
    with pytest.raises(RecognizerUnavailable, match="unavailable"):
        client.top1(_frames_of_classes([7]))
    t0 = time.monotonic()
    with pytest.raises(RecognizerUnavailable, match="next try in"):  # backoff: no call to a dead server
        client.top1(_frames_of_classes([7]))
    assert time.monotonic() - t0 < 0.05
    time.sleep(0.25)
    with pytest.raises(RecognizerUnavailable):  # tried again, still down: the backoff doubles
        client.top1(_frames_of_classes([7]))
    assert client.unavailable_calls == 3 and client.reconnects == 0
    fake_server.up = True
    time.sleep(0.45)
    assert client.top1(_frames_of_classes([8])).tolist() == [8]
    assert client.reconnects == 1
    assert isinstance(RecognizerUnavailable("x"), EdgepipeError)  # uncaught, the CLI still prints one line


# --- with tritonclient, no server -------------------------------------------------------------------


def test_unreachable_server_with_the_real_client():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed: pip install -e '.[triton]'")
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(EdgepipeError, match=f"cannot reach Triton at grpc://127.0.0.1:{port} .*UNAVAILABLE"):
        TritonClassifier(f"grpc://127.0.0.1:{port}", MODEL, connect_timeout_s=5)
    assert time.monotonic() - t0 < 5  # refused at once, not a timeout


# --- a real Triton server ---------------------------------------------------------------------------


class _Server:
    """pytriton_serve.py in the Triton venv, on loopback ports, in its own process group."""

    def __init__(self, venv: Path, repository: Path, log: Path, grpc_port: int | None = None):
        self.venv, self.repository, self.log = venv, repository, log
        self.grpc_port = grpc_port or _free_port()
        self.batch_log = log.with_name("batches.log")
        self.proc = None

    def batch_sizes(self) -> list[int]:
        return [int(line.split()[1]) for line in self.batch_log.read_text().splitlines()] \
            if self.batch_log.exists() else []

    def start(self, timeout_s: float = 60.0) -> float:
        """Start and wait until the model is ready; returns the seconds it took."""
        import tritonclient.grpc as grpcclient

        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "python"), str(SERVE), "--model-repository", str(self.repository),
                 "--grpc-port", str(self.grpc_port), "--http-port", str(_free_port()),
                 "--metrics-port", str(_free_port()), "--threads", "2",
                 "--workspace", str(self.log.parent / f"workspace-{self.grpc_port}-{time.monotonic_ns()}"),
                 "--batch-log", str(self.batch_log)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        try:
            while time.monotonic() - t0 < timeout_s:
                code = self.proc.poll()
                if code == 2:  # the serve script could not read our repository: our bug, not the machine's
                    pytest.fail(f"pytriton_serve.py rejected the generated repository:\n{self._tail()}")
                if code is not None:
                    pytest.skip(f"the Triton server from {self.venv} exited with {code} at start:\n{self._tail()}")
                try:
                    if client.is_model_ready(MODEL, client_timeout=1):
                        return time.monotonic() - t0
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        pytest.skip(f"the Triton server from {self.venv} was not ready in {timeout_s:.0f} s:\n{self._tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group (pytriton's tritonserver and Python-backend stubs are its children)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])


@pytest.fixture(scope="module")
def triton_server(model_repository, tmp_path_factory):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed: pip install -e '.[triton]'")
    venv = _triton_venv()
    if not (venv / ".edgepipe-triton-venv").exists():
        pytest.skip(f"no Triton test venv at {venv} (make it with {MAKE_VENV}, about 30 s and 450 MB; "
                    f"or set EDGEPIPE_TRITON_VENV)")
    server = _Server(venv, model_repository, tmp_path_factory.mktemp("triton") / "server.log")
    server.startup_s = server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_real_triton_server_matches_in_process_top1(triton_server, frames, in_process):
    images, labels = frames
    client = TritonClassifier(f"grpc://127.0.0.1:{triton_server.grpc_port}", MODEL)
    logits = client.logits(images)  # warm-up and the answer
    assert (logits.argmax(1) == in_process.argmax(1)).all()
    assert np.abs(logits - in_process).max() < 1e-3
    assert (logits.argmax(1) == labels).mean() >= 0.75
    from edgepipe.recognition import top_k

    remote, local = client.topk(images, 5), top_k(in_process, 5)
    np.testing.assert_array_equal(remote.classes, local.classes)  # top-5 as in process, probabilities too
    np.testing.assert_allclose(remote.probs, local.probs, atol=1e-4)

    def timed(batch, n=5):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.logits(batch)
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1000

    one, twelve = timed(images[:1]), timed(images)
    # Dynamic batching: single frames sent at once from 6 threads come back right and are run together.
    results, errors = {}, []
    seen = len(triton_server.batch_sizes())

    def send(i):
        try:
            results[i] = int(client.top1(images[i:i + 1])[0])
        except Exception as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and [results[i] for i in range(6)] == in_process[:6].argmax(1).tolist()
    joined = triton_server.batch_sizes()[seen:]
    assert sum(joined) == 6 and max(joined) > 1, f"the server ran the 6 requests as batches {joined}"
    print(f"\nTriton (pytriton {triton_server.venv.name}) startup {triton_server.startup_s:.1f} s; "
          f"latency per call: 1 frame {one:.1f} ms, 12 frames {twelve:.1f} ms (224x224); "
          f"top-1 agreement {int((logits.argmax(1) == in_process.argmax(1)).sum())}/{len(images)}, "
          f"max |logit diff| {np.abs(logits - in_process).max():.2e}; 6 concurrent 1-frame requests ran as "
          f"batches {joined}")
    with pytest.raises(EdgepipeError, match="model 'vgg16' is not ready"):
        TritonClassifier(f"grpc://127.0.0.1:{triton_server.grpc_port}", "vgg16")
    client.close()


@pytest.mark.slow
def test_real_triton_server_matches_in_process_views(triton_server, frames):
    """The monitor's views on frames that are not 224x224: the same pixels reach the model either way."""
    import cv2

    from edgepipe.recognition import Classifier

    images = np.stack([cv2.resize(im, (448, 224), interpolation=cv2.INTER_LINEAR) for im in frames[0][:6]])
    for view in ("centre-crop", "tiles"):
        remote = TritonClassifier(f"grpc://127.0.0.1:{triton_server.grpc_port}", MODEL, view=view).logits(images)
        local = Classifier(MODEL, view=view).logits(images)
        assert (remote.argmax(1) == local.argmax(1)).all(), view
        assert np.abs(remote - local).max() < 1e-3, view


@pytest.mark.slow
def test_real_triton_server_going_away_then_back(triton_server, frames, in_process):
    images, _ = frames
    client = TritonClassifier(f"grpc://127.0.0.1:{triton_server.grpc_port}", MODEL, retry_s=(0.5, 1.0))
    assert (client.top1(images[:4]) == in_process[:4].argmax(1)).all()
    triton_server.stop()  # SIGTERM, as a restart does (SIGKILL gives the client the same UNAVAILABLE, but
    #                       leaves pytriton's shared memory behind in /dev/shm)
    with pytest.raises(RecognizerUnavailable):
        client.top1(images[:4])
    with pytest.raises(RecognizerUnavailable, match="next try in"):
        client.top1(images[:4])
    restart_s = triton_server.start()  # same port
    time.sleep(1.0)  # past the backoff
    assert (client.top1(images[:4]) == in_process[:4].argmax(1)).all()
    assert client.reconnects == 1 and client.unavailable_calls == 2
    print(f"\nTriton restart {restart_s:.1f} s; client recovered on the first call after the backoff")
    client.close()
