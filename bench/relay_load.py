"""Load test of the relay (issue 15 item 4): N capture processes -> edgepipe relay -> M sharded monitors, on
loopback, for T minutes, with the accounting checked at every hop.

    nice -n 10 python bench/relay_load.py --captures 4 --monitors 2 --minutes 1 --out /tmp/relay_load.json
    python bench/relay_load.py --captures 32 --monitors 4 --minutes 10 --out relay_load_32x4.json  # a quiet machine
    python bench/relay_load.py --captures 32 --monitors 4 --minutes 10 --sources folders --fps 2 --out ...  # 2 cores

Processes, all on loopback, plain text:

    edgepipe capture --source folder:imagenette/val | car-detection.mp4 (alternating) --realtime --loop
                     --size WxH (real HEVC) --publish pub+connect:tcp://127.0.0.1:A --stream-id camNN --stats
        -> edgepipe relay --cameras A --monitors B --metrics --report
        -> M x this script's monitor mode: --connect B --shard k/M, no classification (the transport's load;
           classification under load is issue 15 item 1's bench), every frame's end-to-end latency kept

Order: the relay, then the monitors (the test waits until every shard's subscriptions are at the relay), then
the captures (each waits for a subscriber that takes its stream). After T minutes the captures are stopped
(SIGTERM: each sends its end of stream), the monitors are given until the relay has forwarded every end of
stream plus a few seconds, then stopped, then the relay.

Written to --out (JSON): throughput (frames/s and Mbit/s through the relay, frames/s per stream), end-to-end
latency (capture read -> monitor received) p50/p99 per stream and overall, CPU seconds per process and per
stream (captures: their own; relay and monitors: shared by the streams they carry), RSS of every process
sampled every --sample-every s (and whether it stayed within +-10 % of its median after the warm-up), the
load average, and the accounting at every hop, per stream:

    capture  frames_sent, drops by cause, frames_unsubscribed (sent while no subscription took the stream)
    relay    frames forwarded (its tap), ends of stream
    monitor  received + lost (gaps, the tail from the end of stream)

    silent loss = frames_sent - (received + lost)       must be 0 for every stream
    relay check = relay frames == frames_sent - frames_unsubscribed

Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("EDGEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))
FOLDER = SHARED / "imagenette" / "val"
CLIPS = sorted((SHARED / "video").glob("*.mp4"))
TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_SHARE = 0.2  # RSS "flat" is judged after this share of the run (imports, decoders, queues filling)


# --- the monitor mode: one sharded monitor, every latency kept -------------------------------------

def run_monitor(args) -> None:
    """A Monitor on a SUB taking one shard, until SIGTERM; then its report and latencies as JSON."""
    import threading

    import numpy as np

    from edgepipe.server.monitor import Monitor, MonitorLimits, write_report
    from edgepipe.transport.sockets import Subscriber
    from edgepipe.transport.topics import selection

    takes = selection(None, args.shard)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sub = Subscriber(args.connect, topics=takes.topics())
    # one row per stream; a window as long as the run keeps every frame's latency for the percentiles
    monitor = Monitor(None, sub, limits=MonitorLimits(latency_window=args.latency_window))
    try:
        monitor.run(stop)
    finally:
        sub.close()
    report = monitor.report()
    latencies = {}
    with monitor._lock:
        for (stream, *_), row in monitor.rows.items():
            values = row.latency_s.values()
            latencies.setdefault(stream, []).append(values)
    report["latency_s"] = {s: np.concatenate(v).tolist() for s, v in latencies.items()}
    report["takes"] = takes.as_dict()
    write_report(report, args.out)


# --- process helpers -------------------------------------------------------------------------------

def edgepipe_cmd() -> list[str]:
    script = Path(sys.executable).with_name("edgepipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgepipe.cli"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def proc_sample(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, user + system; RSS in MB) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        return cpu, rss
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def relay_metrics(port: int) -> dict:
    """The relay's counters: frames and ends per stream, live topics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {"frames": {}, "ends": {}, "topics_live": 0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "edgepipe_relay_messages_total" and s.labels.get("direction") == "to_monitors":
                key = "frames" if s.labels["kind"] == "frame" else "ends"
                out[key][s.labels["stream"]] = int(s.value)
            elif s.name == "edgepipe_relay_topics_live":
                out["topics_live"] = int(s.value)
    return out


def wait_until(predicate, timeout: float, what: str, procs: list) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs:
            if p.poll() is not None:
                raise SystemExit(f"relay_load: {name} exited ({p.returncode}) while waiting for {what}:\n"
                                 f"{p.stderr.read() if p.stderr else ''}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"relay_load: timed out waiting for {what}")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "n": 0}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)  # noqa: E731
    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": round(ordered[-1] * 1000, 2), "n": len(ordered)}


def cpu_cores(series: list[tuple[float, float, float]], duration: float) -> float | None:
    """Cores a process used after the warm-up: CPU seconds over wall seconds (start-up imports left out)."""
    after = [(t, cpu) for t, cpu, _ in series if t >= WARMUP_SHARE * duration]
    if len(after) < 2 or after[-1][0] <= after[0][0]:
        return None
    return (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])


def memory_summary(samples: list[tuple[float, float]], duration: float) -> dict:
    """RSS over time: start, end, and whether it stayed within +-10 % of its median after the warm-up."""
    if not samples:
        return {}
    after = [rss for t, rss in samples if t >= WARMUP_SHARE * duration] or [samples[-1][1]]
    median = statistics.median(after)
    deviation = max(abs(r - median) / median for r in after) if median else 0.0
    return {"first_mb": round(samples[0][1], 1), "last_mb": round(samples[-1][1], 1),
            "median_after_warmup_mb": round(median, 1), "max_deviation_after_warmup": round(deviation, 4),
            "flat_within_10_percent": deviation <= 0.10}


# --- the run ---------------------------------------------------------------------------------------

def main() -> int:
    if sys.argv[1:2] == ["monitor"]:  # internal: one of the sharded monitors this script starts
        mon = argparse.ArgumentParser(prog="relay_load.py monitor")
        mon.add_argument("--connect", required=True)
        mon.add_argument("--shard", required=True)
        mon.add_argument("--out", required=True)
        mon.add_argument("--latency-window", type=int, default=2_000_000)
        run_monitor(mon.parse_args(sys.argv[2:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", type=int, default=4)
    parser.add_argument("--monitors", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--size", default="384x216", help="capture --size (real HEVC at this size)")
    parser.add_argument("--fps", type=float, default=25.0, help="the folder replays' rate (a clip keeps its own)")
    parser.add_argument("--sources", choices=("alternate", "folders"), default="alternate",
                        help="alternate folder replays and clips, or folder replays only (all at --fps: a rate a "
                             "small machine can carry for many captures)")
    parser.add_argument("--qp", type=int, default=32)
    parser.add_argument("--gop", type=int, default=25)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.monitors < 1 or args.captures < 1 or not 1 <= args.monitors <= 256:
        parser.error("--captures >= 1 and --monitors in 1..256")
    if not FOLDER.exists() or not CLIPS:
        raise SystemExit(f"relay_load: shared data not found under {SHARED} (set EDGEPIPE_SHARED_DATA)")
    return orchestrate(args)


def orchestrate(args) -> int:
    from edgepipe.transport.sockets import free_tcp_endpoint

    work = Path(args.out).resolve().parent / (Path(args.out).stem + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    cameras, monitors_ep = free_tcp_endpoint(), free_tcp_endpoint()
    metrics_port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    env = child_env()
    procs: dict[str, subprocess.Popen] = {}
    logs = {}

    def spawn(name: str, cmd: list[str]) -> subprocess.Popen:
        logs[name] = open(work / f"{name}.log", "w")
        procs[name] = subprocess.Popen(cmd, env=env, stdout=logs[name], stderr=subprocess.STDOUT, text=True)
        return procs[name]

    load_before = os.getloadavg()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    samples: dict[str, list] = {}
    t0 = time.monotonic()

    def sample_all() -> None:
        now = time.monotonic() - t0
        for name, p in procs.items():
            s = proc_sample(p.pid) if p.poll() is None else None
            if s is not None:
                samples.setdefault(name, []).append((round(now, 2), s[0], round(s[1], 1)))

    streams = [f"cam{i:02d}" for i in range(args.captures)]
    try:
        spawn("relay", [*edgepipe_cmd(), "relay", "--cameras", cameras, "--monitors", monitors_ep, "--metrics",
                        f"127.0.0.1:{metrics_port}", "--report", str(work / "relay.json"), "-q"])
        alive = lambda: [(n, p) for n, p in procs.items()]  # noqa: E731
        wait_until(lambda: relay_metrics(metrics_port) is not None, 60, "the relay", alive())
        for k in range(args.monitors):
            spawn(f"monitor{k}", [sys.executable, str(Path(__file__).resolve()), "monitor", "--connect", monitors_ep, "--shard", f"{k}/{args.monitors}",
                                  "--out", str(work / f"monitor{k}.json")])
        topics = 1 if args.monitors == 1 else 256
        wait_until(lambda: relay_metrics(metrics_port)["topics_live"] >= topics, 120, "the monitors' subscriptions",
                   alive())
        for i, stream in enumerate(streams):
            clip = args.sources == "alternate" and i % 2 == 1
            source = [str(CLIPS[(i // 2) % len(CLIPS)])] if clip else [f"folder:{FOLDER}", "--fps", f"{args.fps:g}"]
            spawn(stream, [*edgepipe_cmd(), "capture", "--source", *source, "--realtime", "--loop", "--size",
                           args.size, "--qp", str(args.qp), "--gop", str(args.gop), "--publish",
                           "pub+connect:" + cameras, "--stream-id", stream, "--wait-subscriber", "120",
                           "--stats", str(work / f"{stream}.json"), "-q"])
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_sample = t0
        relay_over_time = []
        while time.monotonic() < end:
            if time.monotonic() >= next_sample:
                sample_all()
                try:
                    m = relay_metrics(metrics_port)
                    relay_over_time.append((round(time.monotonic() - t0, 2), sum(m["frames"].values())))
                except OSError:
                    pass
                next_sample += args.sample_every
            for name, p in procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"relay_load: {name} exited early ({p.returncode}); see {work}/{name}.log")
            time.sleep(0.2)
        sample_all()
        duration = time.monotonic() - t0
        load_during = os.getloadavg()
        for stream in streams:  # each sends its end of stream
            procs[stream].send_signal(signal.SIGTERM)
        for stream in streams:
            procs[stream].wait(60)
        wait_until(lambda: len(relay_metrics(metrics_port)["ends"]) >= len(streams)
                   and all(v >= 1 for v in relay_metrics(metrics_port)["ends"].values()), 60,
                   "every end of stream at the relay", [])
        time.sleep(3.0)  # the monitors decode what is queued
        for k in range(args.monitors):
            procs[f"monitor{k}"].send_signal(signal.SIGTERM)
        for k in range(args.monitors):
            procs[f"monitor{k}"].wait(120)
        procs["relay"].send_signal(signal.SIGTERM)
        procs["relay"].wait(30)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for f in logs.values():
            f.close()
    return summarize(args, work, streams, samples, duration, relay_over_time,
                     {"before": load_before, "at_end_of_run": load_during, "after": os.getloadavg()}, started_at)


def summarize(args, work: Path, streams: list[str], samples: dict, duration: float, relay_over_time: list,
              load: dict, started_at: str) -> int:
    captures = {s: json.loads((work / f"{s}.json").read_text()) for s in streams}
    relay = json.loads((work / "relay.json").read_text())
    monitors = [json.loads((work / f"monitor{k}.json").read_text()) for k in range(args.monitors)]
    relay_streams = {s["stream"]: s for s in relay["streams"]}
    taken: dict[str, list] = {}
    latencies: dict[str, list[float]] = {}
    monitor_cpu = {}  # cores each process used after the warm-up
    for k, rep in enumerate(monitors):
        for st in rep["streams"]:
            taken.setdefault(st["stream"], []).append((k, st))
        for stream, values in rep.get("latency_s", {}).items():
            latencies.setdefault(stream, []).extend(values)
        monitor_cpu[k] = cpu_cores(samples.get(f"monitor{k}", []), duration) or 0.0
    relay_cpu = cpu_cores(samples.get("relay", []), duration) or 0.0

    per_stream, failures = {}, []
    for s in streams:
        cap = captures[s]
        sent, unsubscribed = cap["frames_sent"], cap.get("frames_unsubscribed", 0)
        at_monitors = taken.get(s, [])
        received = sum(st["received"] for _, st in at_monitors)
        lost = sum(st["lost"] for _, st in at_monitors)
        relay_frames = relay_streams.get(s, {}).get("frames", 0)
        silent = sent - received - lost
        row = {
            "source": "clip" if args.sources == "alternate" and streams.index(s) % 2 == 1 else "folder",
            "capture": {"frames_sent": sent, "frames_unsubscribed": unsubscribed, "drops": cap.get("drops", {}),
                        "end_of_stream": cap.get("end_of_stream"), "kbit_s": cap.get("kbit_s")},
            "relay": {"frames": relay_frames, "ends": relay_streams.get(s, {}).get("ends", 0)},
            "monitor": {"shard": [k for k, _ in at_monitors], "received": received, "lost": lost,
                        "ended": all(st.get("ended") for _, st in at_monitors) and bool(at_monitors)},
            "silent_loss": silent,
            "lost_between_relay_and_monitor": relay_frames - received,
            "frames_per_s": round(received / duration, 2),
            "latency": percentiles(latencies.get(s, [])),
            "cpu_cores": {"capture": _round(cpu_cores(samples.get(s, []), duration))},
        }
        per_stream[s] = row
        if len(at_monitors) != 1:
            failures.append(f"{s}: taken by {len(at_monitors)} monitors (a shard set must take it once)")
        if silent != 0:
            failures.append(f"{s}: silent loss {silent} (sent {sent}, received {received}, lost {lost})")
        if relay_frames != sent - unsubscribed:
            failures.append(f"{s}: relay forwarded {relay_frames}, capture sent {sent - unsubscribed} to subscribers")
        if not row["monitor"]["ended"]:
            failures.append(f"{s}: its end of stream did not reach its monitor")
    monitor_streams = {k: sum(1 for s in per_stream.values() if k in s["monitor"]["shard"])
                       for k in range(args.monitors)}
    for row in per_stream.values():  # what one stream costs at each hop: its capture, its share of the others
        k = row["monitor"]["shard"][0] if row["monitor"]["shard"] else None
        cores = row["cpu_cores"]
        cores["relay_share"] = _round(relay_cpu / len(streams))
        cores["monitor_share"] = _round(monitor_cpu[k] / monitor_streams[k]) if k is not None else None
        cores["total"] = _round(sum(v for v in cores.values() if v is not None))
    all_latency = [v for vs in latencies.values() for v in vs]
    total_received = sum(r["monitor"]["received"] for r in per_stream.values())
    result = {
        "bench": "relay_load (issue 15 item 4)",
        "started_at": started_at,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average": {k: [round(x, 2) for x in v] for k, v in load.items()}},
        "settings": {"captures": args.captures, "monitors": args.monitors, "minutes": args.minutes,
                     "size": args.size, "qp": args.qp, "gop": args.gop, "sources": [f"folder ({args.fps:g} frames/s)"]
                     + (["clip (its own rate)"] if args.sources == "alternate" else []),
                     "classification": "off (the transport's load)"},
        "duration_s": round(duration, 1),
        "throughput": {"frames_per_s": round(total_received / duration, 1),
                       "relay_mbit_s": round(relay["bytes"] * 8 / 1e6 / max(relay["uptime_s"], 1e-9), 3),
                       "relay_frames": relay["frames"], "relay_frames_over_time": relay_over_time},
        "latency_end_to_end": percentiles(all_latency),
        "cpu_cores_after_warmup": {"relay": _round(relay_cpu),
                                   "monitors": {k: _round(v) for k, v in monitor_cpu.items()},
                                   "captures": {s: r["cpu_cores"]["capture"] for s, r in per_stream.items()},
                                   "per_stream_mean": _round(statistics.mean(
                                       r["cpu_cores"]["total"] for r in per_stream.values()))},
        "memory_mb": {name: {**memory_summary([(t, rss) for t, _, rss in v], duration),
                             "samples": [(t, rss) for t, _, rss in v]} for name, v in sorted(samples.items())},
        "accounting": {"silent_loss_total": sum(r["silent_loss"] for r in per_stream.values()),
                       "lost_total": sum(r["monitor"]["lost"] for r in per_stream.values()),
                       "unsubscribed_total": sum(r["capture"]["frames_unsubscribed"] for r in per_stream.values()),
                       "failures": failures},
        "relay": {k: relay[k] for k in ("connections", "subscriptions", "refused", "unrecognised")},
        "streams": per_stream,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    flat = all(m.get("flat_within_10_percent", True) for m in result["memory_mb"].values())
    print(f"relay_load: {args.captures} captures -> relay -> {args.monitors} monitors, {duration:.0f} s: "
          f"{result['throughput']['frames_per_s']} frames/s, latency p50 {result['latency_end_to_end']['p50_ms']} ms "
          f"p99 {result['latency_end_to_end']['p99_ms']} ms, lost {result['accounting']['lost_total']}, silent loss "
          f"{result['accounting']['silent_loss_total']}, memory flat: {flat}; load {load['at_end_of_run']}")
    for f in failures:
        print("  FAIL", f)
    return 1 if failures else 0


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


if __name__ == "__main__":
    sys.exit(main())
