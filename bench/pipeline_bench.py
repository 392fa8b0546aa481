"""Pipeline benchmark: each stage alone, the whole overlapped capture loop, and an imagezmq baseline.

    python bench/pipeline_bench.py --out bench/results/pipeline.json
    python bench/pipeline_bench.py --threads auto --threads defaults ...   # thread policies side by side

For each resolution (224x224 from Imagenette val, other sizes from a real fixed-camera clip; `224x224:clip`
the clip at that size) and each
--threads policy it measures frames/s of source, engine and encoder alone, each with the threads the
policy gives it in the capture loop (edge/threads.py), and of send+receive, decode and recognizer; the
serial sum of the four capture stages' times, as a rate; then the capture loop (source -> engine ->
encoder -> ZeroMQ, overlapped) under the same policy, and its ratios to the slowest capture stage and
to the serial sum; the header and transport cost as a share of a frame's time; and, side by side, the
same 224x224 frames sent the way imagezmq users do (JPEG q95 over REQ/REP): bytes per frame, frames/s
and the monitor's top-1 for both. Each timing is the median of --repeats runs; the JSON records the
machine's load average before and after each measurement, since a loaded machine makes them meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgepipe.demo import default_engines  # noqa: E402
from edgepipe.edge.capture import CaptureLoop, CaptureSettings  # noqa: E402
from edgepipe.edge.engine_runs import run_in_order  # noqa: E402
from edgepipe.edge.threads import capture_budget, parse_threads, usable_cores  # noqa: E402
from edgepipe.engines import load_engine  # noqa: E402
from edgepipe.media.codecs import HevcDecoder, HevcEncoder  # noqa: E402
from edgepipe.media.frames import ReadStatus  # noqa: E402
from edgepipe.media.sources import open_source, set_opencv_threads  # noqa: E402
from edgepipe.recognition import Classifier  # noqa: E402
from edgepipe.server.monitor import Monitor  # noqa: E402
from edgepipe.transport.protocol import FrameHeader, parse_message  # noqa: E402
from edgepipe.transport.sockets import Publisher, Subscriber, free_tcp_endpoint  # noqa: E402

SHARED = Path(os.environ.get("EDGEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


CORES_USED: dict[str, float] = {}  # last measured: process CPU seconds / wall seconds of a stage alone


def median_rate(fn, n: int, repeats: int, name: str | None = None) -> float:
    """Median frames/s of fn() processing n frames, over `repeats` runs; records the cores it kept busy."""
    rates, cores = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        rates.append(n / wall)
        cores.append((time.process_time() - c0) / wall)
    if name:
        CORES_USED[name] = round(statistics.median(cores), 2)
    return statistics.median(rates)


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def read_all(spec: str, size, n: int, threads: int | None = None):
    src = open_source(spec, size, crop=True, loop=True, threads=threads)
    frames = []
    while len(frames) < n:
        status, frame = src.read()
        if status is ReadStatus.OK:
            frames.append(frame)
        elif status is ReadStatus.EOS:
            break
    src.close()
    return frames


def send_receive_rate(payloads: list[bytes], header: FrameHeader) -> float:
    endpoint = free_tcp_endpoint()
    pub, sub = Publisher(endpoint), Subscriber(endpoint)
    pub.wait_for_subscriber(5)
    got = []

    def drain():
        while len(got) < len(payloads):
            parts = sub.recv(timeout_ms=2000)
            if parts is None:
                break
            got.append(parse_message(parts))

    t = threading.Thread(target=drain)
    t0 = time.perf_counter()
    t.start()
    for p in payloads:
        while not pub.send(header, p):  # never drop in a throughput measurement
            time.sleep(0.0005)
    t.join()
    rate = len(got) / (time.perf_counter() - t0)
    pub.close()
    sub.close()
    return rate


# The loop's subscriber: another process that only drains the socket. A device's monitor runs on the server;
# one decoding in the capture's process (as this bench did until 2026-11-26) took 12 % of the capture's CPU at
# 224² and competed for its GIL, so the loop was timed against work a device never does.
DRAIN = """
import sys, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.connect(sys.argv[1])
sock.setsockopt(zmq.SUBSCRIBE, b"")
while True:
    sock.recv_multipart()
"""


def capture_loop_rate(spec, size, engine_spec, n, qp, gop, preset, threads="auto"):
    """Frames/s of the capture loop alone (source -> engine -> encoder -> ZeroMQ), drained by another process."""
    endpoint = free_tcp_endpoint()
    drain = subprocess.Popen([sys.executable, "-c", DRAIN, endpoint])
    try:
        settings = CaptureSettings(source=spec, publish=endpoint, engine=engine_spec, qp=qp, gop=gop, preset=preset,
                                   frames=n, size=size, crop=True, loop=True, wait_subscriber_s=10, threads=threads)
        loop = CaptureLoop(settings)
        try:
            # warm up the engine outside the timed run (ORT allocates on the first call of a shape)
            loop.engine.run(np.zeros((1, size[1], size[0], 3), np.uint8))
            stats = loop.run()
            rate = stats.frames_sent / (time.monotonic() - stats.started)
        finally:
            loop.close()
    finally:
        drain.kill()
        drain.wait()
    if stats.frames_unsubscribed:
        raise RuntimeError(f"{stats.frames_unsubscribed} frames went out before the drain subscribed")
    return rate, stats.as_dict()


CAPTURE_STAGES = ("source", "engine", "encoder", "send_receive")


def bench_resolution(spec, size, engine_spec, n, repeats, qp, gop, preset, classifier, threads="auto"):
    """One resolution under one --threads policy: each capture stage alone with the threads the policy gives
    it in the loop, the server's stages with their libraries' defaults, then the overlapped loop."""
    load_before = load_average()
    budget = capture_budget(threads, engine_spec, "hevc", "libx265", spec)
    opencv_before = set_opencv_threads(budget.opencv)  # as in the loop (process-wide), for the capture stages
    frames = read_all(spec, size, n, budget.source)
    images = [f.image for f in frames]
    n = len(images)
    engine = load_engine(engine_spec, budget.engine_threads())
    engine.run(images[0][None])
    out = {"resolution": f"{size[0]}x{size[1]}", "content": "photos" if spec.startswith("folder:") else "clip",
           "frames": n, "engine": engine.model_id, "qp": qp, "gop": gop,
           "preset": preset, "threads": budget.as_dict(), "stages_fps": {}}
    s = out["stages_fps"]
    s["source"] = median_rate(lambda: read_all(spec, size, n, budget.source), n, repeats, "source")
    # the engine as the loop runs it: budget.engine_frames frames at once (1 where it may not overlap), in order
    def run_engine():
        return run_in_order(lambda im: engine.run(im[None])[0], images, budget.engine_frames)

    s["engine"] = median_rate(run_engine, n, repeats, "engine")
    transformed = run_engine()
    engine.close()
    packets = []

    def encode():
        enc = HevcEncoder(size[0], size[1], qp=qp, gop=gop, preset=preset, pool_threads=budget.encoder)
        packets[:] = [p for im in transformed for p in enc.encode(im)] + enc.flush()

    s["encoder"] = median_rate(encode, n, repeats, "encoder")
    set_opencv_threads(opencv_before)  # the server's stages: the monitor sets no budget
    header = FrameHeader("bench", 0, time.time(), "hevc", size[0], size[1], qp, True, -1, out["engine"])
    payloads = [p.data for p in packets]
    s["send_receive"] = statistics.median(send_receive_rate(payloads, header) for _ in range(repeats))
    s["decode"] = median_rate(lambda: _decode_all(payloads, size), n, repeats, "decode")
    s["recognizer"] = median_rate(lambda: [classifier.top1(im[None]) for im in images[: max(1, n // 4)]],
                                  max(1, n // 4), repeats, "recognizer")
    loop_rates, loop_stats = [], None
    for _ in range(repeats):
        rate, loop_stats = capture_loop_rate(spec, size, engine_spec, n, qp, gop, preset, threads)
        loop_rates.append(rate)
    out["capture_loop_fps"] = statistics.median(loop_rates)
    slowest = min(CAPTURE_STAGES, key=lambda k: s[k])
    out["slowest_capture_stage"] = slowest
    out["loop_vs_slowest_stage"] = out["capture_loop_fps"] / s[slowest]
    # the four capture stages one after another, each with its budget: what overlapping must beat
    out["sum_of_stage_times_fps"] = 1 / sum(1 / s[k] for k in CAPTURE_STAGES)
    out["loop_vs_serial_sum"] = out["capture_loop_fps"] / out["sum_of_stage_times_fps"]
    out["capture_loop_stats"] = loop_stats
    # on a small CPU a stage that alone keeps every core busy cannot overlap with the others:
    # then the loop's ceiling is the serial sum of stage times, not the slowest stage
    out["stage_cores_used_alone"] = {k: CORES_USED.get(k) for k in s}
    # what the cores allow at best: each capture stage's CPU seconds a frame (cores it kept busy alone / its
    # rate; send+receive, not timed for CPU, counted as one busy core) spread over the budget's cores. When the
    # heavy stage alone keeps most cores busy, the others' CPU time comes out of it, and the loop cannot reach
    # the slowest stage's solo rate however well it overlaps: this is the ceiling it can reach
    cpu_s = sum((out["stage_cores_used_alone"][k] or 1.0) / s[k] for k in CAPTURE_STAGES)
    out["cpu_bound_fps"] = budget.cores / cpu_s
    out["loop_vs_cpu_bound"] = out["capture_loop_fps"] / out["cpu_bound_fps"]
    out["bytes_per_frame"] = sum(len(p) for p in payloads) / n
    # header pack + unpack + validation, and the whole ZeroMQ hop, as shares of a frame's time
    reps = 20000
    t0 = time.perf_counter()
    for _ in range(reps):
        parse_message([header.pack(), b"x"])
    header_s = (time.perf_counter() - t0) / reps
    frame_s = 1 / out["capture_loop_fps"]
    out["header_us"] = header_s * 1e6
    out["header_share_of_frame"] = header_s / frame_s
    out["transport_share_of_frame"] = (1 / s["send_receive"]) / frame_s
    out["load_average"] = {"before": load_before, "after": load_average()}
    return out


def _decode_all(payloads, size):
    dec = HevcDecoder()
    for p in payloads:
        dec.decode(p, size[0], size[1])


def imagezmq_comparison(folder, engine_spec, qp, classifier, n, preset):
    """Same 224x224 labelled frames: edgepipe (pre-transform + HEVC + edgepipe transport + monitor)
    against imagezmq (JPEG q95, REQ/REP), each classified by the same recognizer on the server side."""
    import cv2
    import imagezmq

    frames = read_all(f"folder:{folder}", (224, 224), n)
    # edgepipe
    rate, stats, report = capture_loop_rate_labelled(folder, engine_spec, qp, classifier, len(frames), preset)
    ours = {"bytes_per_frame": stats["bytes_sent"] / max(1, stats["frames_sent"]), "frames_per_s": rate,
            "top1": report["rows"][0]["top1"] if report["rows"] else None, "engine": engine_spec, "qp": qp,
            "codec": f"HEVC intra QP {qp} ({preset}) over edgepipe PUB/SUB"}
    # imagezmq: the hub binds REP, the sender connects REQ and waits for each reply
    endpoint = free_tcp_endpoint()
    port = endpoint.rsplit(":", 1)[1]
    hub = imagezmq.ImageHub(open_port=f"tcp://127.0.0.1:{port}")
    sender = imagezmq.ImageSender(connect_to=f"tcp://127.0.0.1:{port}")
    correct, sizes = [], []

    def serve():
        for _ in frames:
            name, jpg = hub.recv_jpg()
            hub.send_reply(b"OK")
            rgb = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            correct.append(int(classifier.top1(np.ascontiguousarray(rgb)[None])[0]) == int(name))

    t = threading.Thread(target=serve)
    t.start()
    t0 = time.perf_counter()
    for f in frames:
        ok, jpg = cv2.imencode(".jpg", f.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        sizes.append(len(jpg))
        sender.send_jpg(str(f.label), jpg)
    t.join()
    elapsed = time.perf_counter() - t0
    sender.close()
    hub.close()
    theirs = {"bytes_per_frame": float(np.mean(sizes)), "frames_per_s": len(frames) / elapsed,
              "top1": float(np.mean(correct)), "codec": "JPEG q95 over REQ/REP"}
    return {"edgepipe": ours, "imagezmq": theirs,
            "bytes_ratio_edgepipe_over_imagezmq": ours["bytes_per_frame"] / theirs["bytes_per_frame"]}


def capture_loop_rate_labelled(folder, engine_spec, qp, classifier, n, preset):
    endpoint = free_tcp_endpoint()
    sub = Subscriber(endpoint)
    mon = Monitor(lambda im: int(classifier.top1(im[None])[0]), sub)
    t = threading.Thread(target=mon.run, kwargs=dict(max_frames=n, idle_timeout=30))
    t.start()
    settings = CaptureSettings(source=f"folder:{folder}", publish=endpoint, engine=engine_spec, qp=qp, gop=0,
                               preset=preset, frames=n, size=(224, 224), crop=True, wait_subscriber_s=5)
    loop = CaptureLoop(settings)
    t0 = time.perf_counter()
    stats = loop.run()
    t.join()  # the monitor classifies every frame: this is the end-to-end rate
    rate = stats.frames_sent / (time.perf_counter() - t0)
    loop.close()
    sub.close()
    return rate, stats.as_dict(), mon.report()


def hardware() -> dict:
    import onnxruntime
    import torch

    cpu = platform.processor() or ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable_cores().found,
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def parse_sizes(text: str) -> list[tuple[tuple[int, int], str | None]]:
    """WxH[:photos|:clip],...: the size, and the content when named (default: photos at 224x224, else the clip)."""
    out = []
    for item in text.split(","):
        size, _, content = item.partition(":")
        if content not in ("", "photos", "clip"):
            raise ValueError(f"content must be photos or clip, got {content!r} in {item!r}")
        out.append((tuple(int(v) for v in size.lower().split("x")), content or None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/pipeline.json")
    ap.add_argument("--engine", default=None, help="pre-transform (default: ours when shipped, else none)")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--qp", type=int, default=32)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--preset", default="ultrafast")
    ap.add_argument("--sizes", default="224x224,1280x720",
                    help="WxH[:photos|:clip],...: 224x224 replays Imagenette val, any other size the car-detection "
                         "clip; :clip or :photos names the content (224x224:clip: camera frames at a size whose "
                         "sides divide the ED's stride)")
    ap.add_argument("--threads", action="append", default=None,
                    help="a capture --threads policy; repeat to measure several side by side (default: auto)")
    ap.add_argument("--compare-frames", type=int, default=100, help="frames of the imagezmq comparison; 0: skip it")
    args = ap.parse_args()
    policies = args.threads or ["auto"]
    for policy in policies:
        parse_threads(policy)  # a bad policy fails now, not after an hour of measuring
    val = SHARED / "imagenette" / "val"
    clip = SHARED / "video" / "car-detection.mp4"
    for needed in (val, clip):
        if not needed.exists():
            ap.error(f"{needed} not found: point EDGEPIPE_SHARED_DATA at the shared data folder")
    engine_spec = args.engine or default_engines()[-1]
    classifier = Classifier("efficientnet-lite0")
    result = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "hardware": hardware(),
              "date": time.strftime("%Y-%m-%d"), "load_average_at_start": load_average(), "resolutions": []}
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        ap.error(f"--sizes: {exc}")
    for size, content in sizes:
        photos = content == "photos" or (content is None and size == (224, 224))
        spec = f"folder:{val}" if photos else str(clip)
        for policy in policies:
            r = bench_resolution(spec, size, engine_spec, args.frames, args.repeats, args.qp, args.gop, args.preset,
                                 classifier, policy)
            result["resolutions"].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "capture_loop_stats"}, indent=1), flush=True)
    if args.compare_frames > 0:
        result["imagezmq_comparison"] = imagezmq_comparison(val, engine_spec, args.qp, classifier,
                                                            args.compare_frames, args.preset)
        print(json.dumps(result["imagezmq_comparison"], indent=1))
    result["load_average_at_end"] = load_average()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
