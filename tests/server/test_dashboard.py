"""`monitor --dashboard` (issue 14 item 5): the JSON snapshot of a real monitor fed real frames, the HTTP server
on a real port, the flag's checks, and the page rendered by a real headless browser (Debian's Chromium) against
a real monitor process that classified real frames from real captures."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.edge.references import ReferencePolicy
from edgepipe.media.codecs import HevcEncoder, encode_image
from edgepipe.ops.status import monitor_sample
from edgepipe.recognition import TopK
from edgepipe.server.classify import Recognizer
from edgepipe.server.dashboard import DashboardServer, snapshot
from edgepipe.server.monitor import Monitor
from edgepipe.transport.protocol import TOPIC_VERSION, FrameHeader
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import wait_for

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")

EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def labelled(small_val_folder):
    return [(read_rgb(i.path), i.label) for i in list_labelled_images(small_val_folder)]


def brightness_recognizer() -> Recognizer:
    """Top-5 from the mean brightness: a picture and its coded copy mostly agree, more so at a low QP."""
    def batch(frames):
        means = frames.reshape(len(frames), -1).mean(axis=1)
        classes = np.stack([(np.arange(5) + int(m) // 4) % 1000 for m in means]).astype(np.int64)
        probs = np.tile(np.array([0.6, 0.2, 0.1, 0.05, 0.05], np.float32), (len(frames), 1))
        return TopK(classes, probs)
    return Recognizer(batch, name="brightness")


def coded_stream(labelled, qp: int, stream: str, epoch: int, every: int = 2, first_seq: int = 0,
                 model: str = "none") -> list[list[bytes]]:
    """Real HEVC frames of real images with a JPEG q95 reference every `every` frames, as a capture sends them."""
    enc = HevcEncoder(224, 224, qp=qp, gop=4)
    msgs = []
    for i, (img, label) in enumerate(labelled):
        seq = first_seq + i
        (pkt,) = enc.encode(img)
        has_ref = i % every == 0
        h = FrameHeader(stream, seq, 1000.0 + seq, "hevc", 224, 224, qp, pkt.keyframe, label, model, epoch,
                        media_time=seq / 25, duration=1 / 25, clock="fps", has_reference=has_ref)
        msgs.append([h.pack(TOPIC_VERSION), pkt.data])
        if has_ref:
            r = FrameHeader(stream, seq, 1000.0 + seq, "jpeg", 224, 224, 95, True, label, model, epoch,
                            media_time=seq / 25, duration=0.0, clock="fps", reference=True)
            msgs.append([r.pack(TOPIC_VERSION), ReferencePolicy.encode(img)])
    return msgs


def fed_monitor(labelled) -> Monitor:
    """Stream cam0 at QP 20, then at QP 45 (a new epoch), with references; cam1 as JPEG with two frames lost."""
    mon = Monitor(brightness_recognizer())
    for m in coded_stream(labelled, 20, "cam0", 1) + coded_stream(labelled, 45, "cam0", 2):
        mon.handle(m)
    for seq, (img, label) in enumerate(labelled):
        if seq in (3, 4):
            continue  # lost in the network
        h = FrameHeader("cam1", seq, 2000.0 + seq, "jpeg", 224, 224, 80, True, label, "none", 5,
                        media_time=seq / 10, duration=0.1, clock="fps")
        mon.handle([h.pack(TOPIC_VERSION), encode_image("jpeg", img, 80)])
    return mon


def test_the_snapshot_carries_the_live_curve_and_bd_rate_of_a_ladder(labelled):
    """Operating points of two models at four QPs (issue 14 item 3): each card has the window's curve and, per
    measure, the BD-rate of the other model against none, as the report has it."""
    mon = Monitor(brightness_recognizer())
    epoch = 10
    for qp in (20, 30, 40, 50):
        for model in ("none", "ours-test"):
            epoch += 1
            for m in coded_stream(labelled[:4], qp, "lad", epoch, every=1, model=model):
                mon.handle(m)
    data, _ = snapshot(mon)
    (card,) = data["streams"]
    live = card["live_rd"]
    assert live == json.loads(json.dumps(mon.report()["live_rd"]["lad"]))
    assert len(live["points"]) == 8 and {p["frames"] for p in live["points"]} == {4}
    assert all(p["top1_agreement_n"] == 4 and p["top1_n"] == 4 for p in live["points"])
    measures = {e["measure"]: e for e in live["bd"]}
    assert set(measures) == {"top1", "top1_agreement", "top5_overlap"}
    for e in measures.values():  # the same frames under two model ids: no difference, or none defined
        assert e["model"] == "ours-test" and e["anchor"] == "none" and e["points"] == 4
        assert e["bd_rate"] == 0.0 or (e["bd_rate"] is None and e["reason"])
    assert "live_rd" not in fed_monitor(labelled).report()  # one model only: no BD-rate, no section


def get(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# --- the snapshot -------------------------------------------------------------------------------------------

def test_the_snapshot_reads_the_monitors_own_numbers(labelled):
    mon = fed_monitor(labelled)
    data, sample = snapshot(mon)
    json.dumps(data, allow_nan=False)  # what the endpoint sends: strict JSON
    report, status = mon.report(), monitor_sample(mon)
    cam0, cam1 = data["streams"]
    assert [cam0["stream"], cam1["stream"]] == ["cam0", "cam1"]

    # cam0: one point per QP, each the report's row; the current operating point is the latest, QP 45
    rows = {r["qp"]: r for r in report["rows"] if r["stream"] == "cam0"}
    assert sorted(p["qp"] for p in cam0["points"]) == [20, 45] == sorted(rows)
    for point in cam0["points"]:
        row = rows[point["qp"]]
        assert (point["kbit_s"], point["frames"], point["top1"]) == (row["kbit_s"], row["frames"], row["top1"])
        agreement = row["reference"]["agreement"]
        assert point["pairs"] == agreement["pairs"] == 6  # 12 frames, a reference every 2nd
        for name in ("top1_equal", "top5_overlap", "p_reference", "kl"):
            assert point[name] == agreement[name]["mean"]
    current = cam0["current"]
    assert (current["codec"], current["qp"], current["model"]) == ("hevc", 45, "none")
    assert current["kbit_s"] == rows[45]["kbit_s"] > 0
    assert rows[20]["kbit_s"] > rows[45]["kbit_s"]  # the real encoder: a lower QP costs more bits
    assert cam0["epoch"] == 2 and cam0["lost"] == 0 and cam0["frames"] == 24 and cam0["references_lost"] == 0

    # cam1: its losses as the report counts them, no references
    assert cam1["lost"] == 2 == sum(s["lost"] for s in report["streams"] if s["stream"] == "cam1")
    assert cam1["current"]["codec"] == "jpeg" and cam1["current"]["qp"] == 80 and cam1["current"]["pairs"] == 0
    assert cam1["loss_ratio"] == pytest.approx(2 / 12, abs=1e-4)

    # monitor-wide: the status line's and the report's numbers
    m = data["monitor"]
    assert m["decoded"] == report["decoded"] == 34 and m["lost"] == report["lost"] == status["lost"] == 2
    assert m["pairs"] == status["pairs"] == 12 and m["top1_agreement"] == status["top1_agreement"]
    assert m["top1"] == pytest.approx(status["correct"] / status["labelled"], abs=1e-5)
    assert m["frames_s"] is None  # no earlier snapshot to take a rate over

    # a second snapshot takes the live rate over the time since the first
    h = FrameHeader("cam1", 12, 2012.0, "jpeg", 224, 224, 80, True, -1, "none", 5, media_time=1.2, duration=0.1,
                    clock="fps")
    payload = encode_image("jpeg", labelled[0][0], 80)
    mon.handle([h.pack(TOPIC_VERSION), payload])
    later, _ = snapshot(mon, sample)
    assert later["monitor"]["frames_s"] > 0
    assert later["monitor"]["kbit_s"] == pytest.approx(len(payload) * 8 / 1000 / 0.1, rel=1e-3)


def test_an_empty_monitor_has_an_empty_snapshot():
    data, _ = snapshot(Monitor(None))
    assert data["streams"] == [] and data["monitor"]["messages"] == 0 and data["monitor"]["classifying"] is False


# --- the HTTP server ----------------------------------------------------------------------------------------

def test_serves_the_page_and_the_json_and_nothing_else(labelled):
    mon = fed_monitor(labelled)
    server = DashboardServer(mon, "127.0.0.1:0")
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/"
        status, headers, body = get(server.url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        page = body.decode()
        assert "api/streams" in page and "<script>" in page
        # self-contained: nothing is loaded from elsewhere (the SVG namespace is a name, not a fetch)
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
        assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
        assert "@import" not in page and "<link" not in page

        status, headers, body = get(server.url + "api/streams")
        assert status == 200 and headers["Content-Type"] == "application/json"
        data = json.loads(body)
        assert [s["stream"] for s in data["streams"]] == ["cam0", "cam1"]
        assert data["streams"][0]["current"]["qp"] == 45

        status, headers, body = get(server.url, method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(page.encode())
        for path in ("nope", "api/streams/x", "../etc/passwd", "metrics"):
            assert get(server.url + path)[0] == 404, path
        status, headers, _ = get(server.url + "api/streams", method="POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    finally:
        server.close()
    server.close()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_a_busy_port_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EdgepipeError) as err:
            DashboardServer(Monitor(None), f"127.0.0.1:{port}")
    assert str(err.value) == f"cannot serve the dashboard on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("value, message", [
    ("99999", "dashboard port 99999 is out of range"),
    ("localhost:http", "dashboard address must be PORT, :PORT or HOST:PORT, got 'localhost:http'"),
    ("", None),  # an empty value is no dashboard: the monitor starts (and is refused a socket here)
])
def test_a_bad_dashboard_value_is_one_line(value, message, monkeypatch):
    import edgepipe.transport.sockets

    def no_socket(*_args, **_kwargs):
        raise EdgepipeError("no socket in this test")

    monkeypatch.setattr(edgepipe.transport.sockets, "Subscriber", no_socket)
    result = CliRunner().invoke(cli, ["monitor", "--connect", "tcp://127.0.0.1:5999", "--no-classify", "-q",
                                      "--dashboard", value])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"Error: {message or 'no socket in this test'}"]


def test_a_busy_dashboard_port_ends_the_monitor_with_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(EDGEPIPE + ["monitor", "--connect", free_tcp_endpoint(), "--no-classify", "-q",
                                         "--dashboard", f"127.0.0.1:{port}"], capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"Error: cannot serve the dashboard on 127.0.0.1:{port}: "
                                               "Address already in use"]


# --- a real browser against a real monitor ------------------------------------------------------------------

def chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"  # a fresh profile each run
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def live_monitor(tmp_path, small_val_folder):
    """A real `edgepipe monitor --dashboard 127.0.0.1:0` process (real recognizer) that has classified every frame
    of two real captures of stream "lab", at QP 10 and then QP 45, each with references every 3rd frame.
    Yields (dashboard URL, its snapshot once both captures are in); stops the monitor with SIGINT after."""
    endpoint = free_tcp_endpoint()
    log = tmp_path / "monitor.log"
    report = tmp_path / "report.json"
    with open(log, "w") as err:
        monitor = subprocess.Popen(EDGEPIPE + ["monitor", "--connect", endpoint, "--dashboard", "127.0.0.1:0",
                                               "--classify-policy", "all", "--idle-timeout", "300",
                                               "--report", str(report)],
                                   stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert wait_for(lambda: "dashboard on" in log.read_text() or monitor.poll() is not None, 120), log.read_text()
        found = re.search(r"monitor: dashboard on (http://127\.0\.0\.1:\d+/)", log.read_text())
        assert found, log.read_text()
        url = found.group(1)
        for qp in (10, 45):
            cap = subprocess.run(EDGEPIPE + ["capture", "--source", f"folder:{small_val_folder}", "--publish",
                                             endpoint, "--qp", str(qp), "--gop", "4", "--wait-subscriber", "60",
                                             "--stream-id", "lab", "--reference-every", "3", "--reference-share", "0", "-q"],
                                 capture_output=True, text=True, timeout=180)
            assert cap.returncode == 0, cap.stderr

            def classified(qp=qp):
                data = json.loads(get(url + "api/streams")[2])
                points = {p["qp"]: p for s in data["streams"] for p in s["points"]}
                return qp in points and points[qp]["classified"] == 12 and points[qp]["pairs"] == 4
            assert wait_for(classified, 120, interval=0.5), log.read_text()
        time.sleep(0.6)  # past the snapshot cache: the one below is the one the browser will get
        yield url, json.loads(get(url + "api/streams")[2])
    finally:
        monitor.send_signal(signal.SIGINT)
        try:
            out, _ = monitor.communicate(timeout=60)
        finally:
            monitor.kill()
    assert monitor.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert json.loads(report.read_text())["decoded"] == 24


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                                                  "(apt-get install chromium; .ci/run installs it)")
def test_a_real_browser_renders_the_live_page(live_monitor, tmp_path):
    url, data = live_monitor
    (lab,) = data["streams"]
    current = lab["current"]
    assert (current["codec"], current["qp"], current["model"]) == ("hevc", 45, "none")
    run = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert run.returncode == 0, run.stderr
    dom = run.stdout
    # what the page's JavaScript built from the JSON it fetched: the card, its bitrate and operating point
    card = re.search(r'<article class="card" data-stream="lab">.*?</article>', dom, re.S)
    assert card, dom[:3000]
    card = card.group(0)
    assert '<h2 class="stream-id">lab</h2>' in card
    assert f'{current["kbit_s"]:.1f} kbit/s' in card
    assert "HEVC · QP 45 · model none" in card
    assert 'class="pill live"' in dom and "last update" in dom
    # the RD curve: an SVG with one point per operating point, at the JSON's bitrates, axes labelled
    plot = re.search(r'<svg class="rd".*?</svg>', card, re.S).group(0)
    points = re.findall(r'<circle class="pt"[^>]*data-qp="(\d+)"[^>]*data-kbit-s="([\d.]+)"', plot)
    assert sorted((int(qp), float(k)) for qp, k in points) == sorted((p["qp"], p["kbit_s"]) for p in lab["points"])
    assert ">kbit/s</text>" in plot and ">top-1 agreement</text>" in plot


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                                                  "(apt-get install chromium; .ci/run installs it)")
def test_the_page_says_disconnected_when_the_json_fails(labelled, tmp_path, monkeypatch):
    """The page served, its JSON failing (500, as when a snapshot fails; a monitor gone fails the fetch the
    same way): the page says disconnected and shows no data."""
    server = DashboardServer(fed_monitor(labelled), "127.0.0.1:0")

    def broken():
        raise RuntimeError("snapshot failed")

    monkeypatch.setattr(server, "snapshot_json", broken)
    try:
        assert get(server.url + "api/streams")[0] == 500
        run = chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", server.url)
    finally:
        server.close()
    assert run.returncode == 0, run.stderr
    assert 'class="pill down"' in run.stdout and ">disconnected<" in run.stdout
    assert "the monitor does not answer" in run.stdout
    assert 'data-stream="' not in run.stdout  # no data was ever shown
