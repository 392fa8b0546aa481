"""Recovery and flow control over real ZeroMQ sockets on loopback, with real HEVC from a real clip:
monitor restart, loss + keyframe back channel, backpressure before encoding, a stuck network,
capture restart (epochs), a network stream that drops, SIGTERM at any point."""
from __future__ import annotations

import http.server
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.media.sources import FrameShaper, LiveSource
from edgepipe.ops.service import ServiceOptions
from edgepipe.server.monitor import Monitor
from edgepipe.server.service import MonitorService
from edgepipe.transport.protocol import FrameHeader
from edgepipe.transport.sockets import Publisher, SocketDefaults, free_tcp_endpoint

from field_helpers import PacedSource, Running, decode_frames, wait_for

EDGEPIPE = [sys.executable, "-m", "edgepipe.cli"]


@pytest.fixture(scope="module")
def clip_frames(video_clip):
    return decode_frames(video_clip, 60, (384, 216))


@pytest.fixture(scope="module")
def scene_changes(imagenette_val):
    """40 different real images: every frame is a scene change, so P-frames are as big as I-frames."""
    items = list_labelled_images(imagenette_val)[::97][:40]
    return [read_rgb(i.path) for i in items]


def network_drops(drops: dict) -> int:
    return drops.get("network_hwm_after_encode", 0) + drops.get("reference_dropped_after_encode", 0)


def test_monitor_restart_resyncs_within_one_gop_and_capture_never_waits(clip_frames):
    endpoint = free_tcp_endpoint()
    gop = 10
    source = PacedSource(clip_frames, fps=50)
    service = CaptureService(CaptureSettings(source="paced", publish=endpoint, gop=gop, stream_id="yard"),
                             source=source)
    loop = service.loop
    cap = Running(service.run)
    try:
        first = MonitorService(endpoint, None)
        run1 = Running(first.run)
        assert wait_for(lambda: first.monitor.decoded >= 15, 15)
        run1.stop()
        first.close()  # the "hub" goes away

        sent_when_gone = loop.stats.frames_sent
        assert wait_for(lambda: loop.stats.frames_sent >= sent_when_gone + 20, 5), "capture stalled without a monitor"

        second = MonitorService(endpoint, None)
        run2 = Running(second.run)
        assert wait_for(lambda: second.monitor.decoded >= 2 * gop, 15)
        run2.stop()
        second.close()
    finally:
        cap.stop()
        service.close()
    rep = second.monitor.report()
    waited = rep["rejects"].get("waiting_for_keyframe", 0)
    # stopped while frames flow: what it had received but not decoded is counted, not dropped
    assert set(rep["rejects"]) <= {"waiting_for_keyframe", "unprocessed_at_stop"}
    assert waited <= gop - 1  # resynced at the first keyframe it saw: within one GOP
    assert rep["lost"] == 0  # joining mid-stream is not loss
    assert network_drops(loop.stats.drops) == 0  # no monitor never made the sender drop or wait
    assert first.monitor.report()["lost"] == 0


class LossyProxy:
    """Sits between capture and monitor on real sockets and drops the frames with chosen seqs."""

    def __init__(self, upstream: str, drop_seqs: set[int]):
        ctx = zmq.Context.instance()
        self.endpoint = free_tcp_endpoint()
        self.upstream, self.drop_seqs = upstream, drop_seqs
        self.dropped: list[int] = []
        self.forwarded = 0
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)
        self.pub.bind(self.endpoint)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        # connect upstream only once the monitor has subscribed here, so it sees the stream from seq 0
        while not self._stop.is_set() and not self.pub.poll(50):
            pass
        self.sub.connect(self.upstream)
        while not self._stop.is_set():
            while self.pub.poll(0):
                self.pub.recv()
            if not self.sub.poll(50):
                continue
            parts = self.sub.recv_multipart()
            seq = FrameHeader.unpack(parts[0]).seq
            if seq in self.drop_seqs:
                self.dropped.append(seq)
                continue
            self.pub.send_multipart(parts)
            self.forwarded += 1

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.pub.close(0)
        self.sub.close(0)


def test_loss_triggers_a_keyframe_request_and_an_idr(clip_frames):
    """gop=1000: the only keyframes are the first and the one the monitor asks for."""
    endpoint, control = free_tcp_endpoint(), free_tcp_endpoint()
    service = CaptureService(CaptureSettings(source="paced", publish=endpoint, gop=1000, stream_id="gate",
                                             wait_subscriber_s=10, keyframe_min_interval_s=0.0),
                             ServiceOptions(control=control), source=PacedSource(clip_frames, fps=40))
    loop = service.loop
    proxy = LossyProxy(endpoint, drop_seqs={20, 21, 22})
    mon = MonitorService(proxy.endpoint, None, ServiceOptions(control=control))
    shown: list[tuple[int, bool]] = []  # (seq, keyframe) of every frame the monitor decoded
    handle = mon.monitor.handle

    def spy(parts, received_at=None):
        image = handle(parts, received_at)
        if image is not None:
            h = FrameHeader.unpack(parts[0])
            shown.append((h.seq, h.keyframe))
        return image

    mon.monitor.handle = spy
    run = Running(mon.run)
    cap = Running(service.run)
    try:
        assert wait_for(lambda: len(shown) >= 45, 20)
        cap.stop()
        sent = loop.stats.frames_sent
        assert wait_for(lambda: mon.monitor.messages == sent - 3, 10)
        run.stop()
    finally:
        cap.stop()
        run.stop()
        mon.close()
        proxy.close()
        service.close()
    rep = mon.monitor.report()
    assert proxy.dropped == [20, 21, 22]
    assert rep["lost"] == 3
    assert loop.stats.keyframe_requests == 1
    assert loop.forced_keyframes == 1 and loop.stats.keyframes == 2  # seq 0 and the forced IDR
    waiting = rep["rejects"].get("waiting_for_keyframe", 0)
    assert set(rep["rejects"]) <= {"waiting_for_keyframe"}
    # only frames already encoded when the request arrived (the send queue and the one in flight)
    # can still be P-frames: counted, never shown
    assert waiting <= loop.settings.queue_size + 2
    # exact accounting: every frame sent is decoded, rejected as undecodable, or lost
    assert rep["decoded"] + waiting + rep["lost"] == sent
    resumed = [(seq, key) for seq, key in shown if seq > 22]
    assert resumed[0][1] is True  # the first frame shown after the gap is the forced IDR
    assert resumed[0][0] == 23 + waiting


def test_backpressure_drops_before_encoding_and_counts_every_frame(clip_frames):
    """A camera faster than x265 'veryslow' at 768x432 must be dropped before inference, never after
    encoding, and the monitor sees no gap at all. 250 frames/s: the encoder kept up with a 25 fps camera
    on a fast machine (its P-frames of a looped 20-frame clip are cheap), where it ran ~3 frames/s on another."""
    full = [f.repeat(2, axis=0).repeat(2, axis=1) for f in clip_frames[:20]]  # 768x432
    endpoint = free_tcp_endpoint()
    source = PacedSource(full, fps=250)
    service = CaptureService(CaptureSettings(source="paced", publish=endpoint, gop=8, preset="veryslow",
                                             queue_size=1, wait_subscriber_s=10), source=source)
    loop = service.loop
    mon = MonitorService(endpoint, None)
    run = Running(mon.run)
    cap = Running(service.run)
    try:
        assert wait_for(lambda: loop.stats.frames_sent >= 5, 30)
    finally:
        cap.stop()
        sent = loop.stats.frames_sent
        wait_for(lambda: mon.monitor.messages >= sent, 10)
        run.stop()
        mon.close()
        service.close()
    drops = dict(loop.stats.drops)
    # the camera outran the encoder, so frames were dropped, and only before inference (how many
    # depends on the encoder's speed on a loaded machine, so only "some" is asserted)
    assert drops.get("pipeline_full_before_inference", 0) >= 1
    assert network_drops(drops) == 0
    assert source.produced == loop.stats.stages["source"].count == sent + sum(drops.values())  # nothing unaccounted
    rep = mon.monitor.report()
    assert rep["lost"] == 0 and not rep["rejects"] and rep["decoded"] == sent


def test_stuck_network_never_sends_a_frame_whose_reference_was_dropped(scene_changes):
    """A monitor that stops reading: the sender waits, drops, forces an IDR and drops the dependents.
    Every gap the monitor sees is followed by a keyframe, so nothing is ever undecodable."""
    endpoint = free_tcp_endpoint()
    # a kernel buffer of 8 KB: the hung hub fills it in a frame or two, not after megabytes of loopback
    # buffer (which at a loaded machine's frame rate outlast the heartbeat timeout that unsubscribes it)
    pub = Publisher(endpoint, SocketDefaults(send_hwm=2, send_buffer_bytes=8192))
    settings = CaptureSettings(source="paced", publish=endpoint, gop=50, qp=20, send_stall_s=0.1,
                               keyframe_min_interval_s=0.0, wait_subscriber_s=10)
    loop = CaptureLoop(settings, source=PacedSource(scene_changes, fps=60), publisher=pub)
    ctx = zmq.Context.instance()
    sub_sock = ctx.socket(zmq.SUB)
    sub_sock.setsockopt(zmq.RCVHWM, 2)
    sub_sock.setsockopt(zmq.RCVBUF, 8192)
    sub_sock.setsockopt(zmq.SUBSCRIBE, b"")
    sub_sock.connect(endpoint)
    mon = Monitor(None)
    received: list[FrameHeader] = []
    paused = threading.Event()

    def receive(stop):
        while not stop.is_set():
            if paused.is_set() or not sub_sock.poll(20):
                time.sleep(0.005)
                continue
            parts = sub_sock.recv_multipart()
            header = FrameHeader.unpack(parts[0])
            if not header.end_of_stream:  # the capture's last message, after its frames
                received.append(header)
            mon.handle(parts)

    reader = Running(receive)
    cap = Running(loop.run)
    try:
        assert wait_for(lambda: len(received) >= 10, 15)
        paused.set()  # the hub hangs (still connected, reading nothing)
        assert wait_for(lambda: loop.stats.drops.get("network_hwm_after_encode", 0) >= 2, 15)
        paused.clear()
        assert wait_for(lambda: mon.decoded >= len(received) >= 40, 15)
        cap.stop()
        sent = loop.stats.frames_sent
        assert wait_for(lambda: len(received) == sent, 10)
    finally:
        cap.stop()
        reader.stop()
        loop.close()
        pub.close()
        sub_sock.close(0)
    drops = dict(loop.stats.drops)
    rep = mon.report()
    assert rep["lost"] == network_drops(drops) > 0  # every frame dropped after encoding is a counted gap
    assert not rep["rejects"]  # ...and never a frame that could not be decoded
    assert rep["decoded"] == len(received) == loop.stats.frames_sent
    for before, after in zip(received, received[1:]):
        if after.seq != before.seq + 1:
            assert after.keyframe, f"seq {after.seq} follows a gap but is not a keyframe"


def test_capture_restart_starts_a_new_epoch_and_accounting_period(small_val_folder):
    endpoint = free_tcp_endpoint()
    mon = MonitorService(endpoint, None)
    run = Running(mon.run)
    epochs, sent = [], []
    try:
        for _ in range(2):  # the same camera, restarted on the same endpoint
            settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=endpoint, gop=4,
                                       stream_id="door", wait_subscriber_s=15)
            service = CaptureService(settings)
            try:
                stats = service.run()
                epochs.append(service.loop.epoch)
                sent.append(stats.frames_sent)
            finally:
                service.close()
            time.sleep(0.05)
        assert wait_for(lambda: mon.monitor.messages >= sum(sent), 10)
    finally:
        run.stop()
        mon.close()
    rep = mon.monitor.report()
    assert epochs[0] != epochs[1]
    assert sorted(s["epoch"] for s in rep["streams"]) == sorted(epochs)
    for s in rep["streams"]:  # two periods, each complete: seq restarted at 0 without counting loss
        assert s["stream"] == "door" and s["received"] == 12 and s["lost"] == 0
    assert rep["decoded"] == 24 and not rep["rejects"]


# --- a network camera that drops ------------------------------------------------------------------

def write_ts(path: Path, frames, fps: int = 25) -> None:
    """A real MPEG-TS stream (MPEG-2 video) of real frames: what an IP camera serves over HTTP."""
    import av

    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


class CameraServer:
    """Serves one file over HTTP on a fixed loopback port; stop() refuses connections, start() resumes."""

    def __init__(self, folder: Path):
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **kw)  # noqa: E731
        self._handler = handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self._serve()

    def _serve(self):
        self.server.daemon_threads = True
        self.server.RequestHandlerClass.log_message = lambda *a: None
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def start(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self._serve()


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_network_stream_drop_reopens_with_backoff_in_logs_and_metrics(tmp_path, clip_frames, caplog):
    caplog.set_level(logging.WARNING, logger="edgepipe.media.sources")
    write_ts(tmp_path / "cam.ts", clip_frames)
    camera = CameraServer(tmp_path)
    url = f"http://127.0.0.1:{camera.port}/cam.ts"
    source = LiveSource(url, FrameShaper(None), backoff=(0.05, 0.4))
    service = CaptureService(CaptureSettings(source=url, publish=free_tcp_endpoint(), gop=10),
                             ServiceOptions(metrics="127.0.0.1:0"), source=source)
    loop, port = service.loop, service.metrics.port
    cap = Running(service.run)
    try:
        assert wait_for(lambda: loop.stats.frames_sent >= 10, 15)
        camera.stop()  # the camera goes away: the open stream ends, reopening is refused
        assert wait_for(lambda: source.failures >= 1 and not source.connected, 15)
        attempts = source.open_attempts
        caplog.clear()
        assert wait_for(lambda: source.open_attempts >= attempts + 4, 10)
        down = scrape(port)
        reconnects = source.reconnects
        sent_while_down = loop.stats.frames_sent
        camera.start()
        assert wait_for(lambda: source.reconnects > reconnects, 10)
        assert wait_for(lambda: loop.stats.frames_sent > sent_while_down + 10, 10)  # frames flow again
        up = scrape(port)
    finally:
        cap.stop()
        service.close()
        camera.stop()
    assert down["edgepipe_capture_source_up"] == 0
    assert down["edgepipe_capture_source_failures_total"] >= 1
    assert down["edgepipe_capture_source_retry_seconds"] > 0
    assert up["edgepipe_capture_source_reconnects_total"] > down["edgepipe_capture_source_reconnects_total"]
    # back-off doubles from 0.05 s to its 0.4 s ceiling, and every step is in the log
    waits = [float(m.group(1)) for r in caplog.records
             if (m := re.search(r"still unavailable; next try in ([\d.]+) s", r.getMessage()))]
    assert len(waits) >= 4 and waits == sorted(waits) and waits[-1] == 0.4
    assert not any("Traceback" in r.getMessage() for r in caplog.records)


# --- SIGTERM at any point -----------------------------------------------------------------------

def _spawn(args, **kw):
    return subprocess.Popen(EDGEPIPE + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, timeout: float):
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=timeout)
    return out, err, time.monotonic() - t0


def test_sigterm_with_a_hung_monitor_ends_within_the_linger(tmp_path, video_clip):
    """The hub is connected but reads nothing: the capture's queues are full and its sender waits.
    SIGTERM still ends it promptly, with whole statistics."""
    endpoint = free_tcp_endpoint()
    hung = zmq.Context.instance().socket(zmq.SUB)
    hung.setsockopt(zmq.RCVHWM, 1)
    hung.setsockopt(zmq.RCVBUF, 4096)
    hung.setsockopt(zmq.SUBSCRIBE, b"")
    hung.connect(endpoint)
    stats = tmp_path / "stats.json"
    # JPEG at quality 100 (~150 KB a frame) fills the socket buffers within a second
    proc = _spawn(["capture", "--source", str(video_clip), "--publish", endpoint, "--loop", "--codec", "jpeg",
                   "--qp", "100", "--stats", str(stats), "--control", free_tcp_endpoint(), "--metrics", "127.0.0.1:0"])
    try:
        time.sleep(3.0)  # long enough for every queue to fill behind the hung subscriber
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err, took = _finish(proc, 20)
    finally:
        proc.kill()
        hung.close(0)
    assert proc.returncode == 0, err
    assert took < 5.0, f"took {took:.1f} s to stop"
    assert "Traceback" not in err
    data = json.loads(stats.read_text())  # whole, parseable
    sent = int(re.search(r"sent (\d+) frames", err).group(1))
    assert data["frames_sent"] == sent
    assert data["drops"].get("network_hwm_after_encode", 0) >= 1  # the frames it gave up on are counted


def test_sigterm_to_the_monitor_writes_its_report_whole(tmp_path, clip_frames):
    endpoint = free_tcp_endpoint()
    service = CaptureService(CaptureSettings(source="paced", publish=endpoint, gop=10),
                             source=PacedSource(clip_frames, fps=40))
    loop = service.loop
    cap = Running(service.run)
    report = tmp_path / "report.json"
    try:
        proc = _spawn(["monitor", "--connect", endpoint, "--no-classify", "--report", str(report)])
        try:
            assert wait_for(lambda: loop.publisher.subscribers_seen >= 1, 15)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            out, err, took = _finish(proc, 20)
        finally:
            proc.kill()
        sent_after = loop.stats.frames_sent
        assert wait_for(lambda: loop.stats.frames_sent > sent_after + 10, 5)  # capture carries on
    finally:
        cap.stop()
        service.close()
    assert proc.returncode == 0, err
    assert took < 5.0
    rep = json.loads(report.read_text())
    assert rep["decoded"] > 10 and rep["lost"] == 0
    assert f"decoded {rep['decoded']}" in out  # the table printed matches the file


@pytest.mark.parametrize("delay", [0.05, 0.4, 0.8, 1.5])
def test_sigterm_at_any_point_of_startup_or_run(tmp_path, video_clip, delay):
    stats = tmp_path / "stats.json"
    proc = _spawn(["capture", "--source", str(video_clip), "--publish", free_tcp_endpoint(), "--size", "384x216",
                   "--realtime", "--loop", "--stats", str(stats), "--control", free_tcp_endpoint()])
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err, took = _finish(proc, 20)
    finally:
        proc.kill()
    assert took < 5.0
    assert "Traceback" not in err
    if proc.returncode == -signal.SIGTERM:  # before Python installed the handler: nothing opened yet
        assert not stats.exists()
    else:
        assert proc.returncode == 0, err
        assert json.loads(stats.read_text())["frames_sent"] >= 0
