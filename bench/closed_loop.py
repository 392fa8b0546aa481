"""The closed loop against the best fixed QP in hindsight (issue 14): does `monitor --target-agreement` hold its
floor at no more than 10 % above the bits of the coarsest fixed QP that holds it, on the same frames?

    python bench/closed_loop.py --clip /work/shared/data/video/one-by-one-person-detection.mp4 --floor 0.9

Per clip:
1. Live, in real time: `edgepipe capture` replays the clip looped at its own frame rate (`--realtime --loop
   --frames fps*duration`, HEVC `--qp START --gop G --allow-remote-qp LOW:HIGH`, `--reference-every 1
   --reference-share 0` so every frame has a reference pair, pre-transform `none`) into `edgepipe monitor
   --target-agreement FLOOR --target-measure top5_overlap --classify-policy all --predictions`, over loopback
   sockets (plain text is allowed there). Collected: the capture's stats (`remote_qp` trace, bytes), the
   monitor's report (`closed_loop` trace with the measure that decided each change) and its predictions lines
   (per frame: QP, bytes, top-5 overlap with its reference).
2. Offline, on the same frames (seq 0..n-1 of the loop, clip frame seq % clip length): each QP of the loop's grid
   (LOW..HIGH in its step, from START) coded as ONE HEVC stream with the capture's encoder settings (HevcEncoder,
   libx265, same preset and GOP, the capture's thread pool of 1, so the same bitstream as the capture's), decoded,
   and classified as the monitor does (efficientnet-lite0, centre-crop view) against the reference the capture
   would send (the source frame's centre square at 224 as JPEG q95, edgepipe/edge/references.py), the pair measured
   by edgepipe/server/agreement.agreement (the monitor's own function). The best fixed QP in hindsight: the
   coarsest whose mean top-5 overlap over all n frames is >= FLOOR; the odd QP above it is tried too (step 1).
   Per-frame results are cached under runs/closed_loop/cache (a longer cached stream's first n frames are the
   same bitstream: zerolatency, no lookahead).
3. Writes bench/results/closed_loop_<clip>.json and docs/images/closed_loop_<clip>.png (QP over time with the
   best fixed QP as a line; the running top-5 overlap with the floor on a second axis).

`--offline-only` runs step 2 alone for n = fps * duration frames (to see the curve before choosing a floor);
with `--engine ours` it caches the curves of the frames through that pre-transform (the clip's frames go through
it once, kept as .npy beside the cache), for bench/closed_loop_sim.py --engines.
Before the live run it waits (polling every 30 s, at most --max-wait s) while the 1-minute load is above
--max-load: a real-time replay on a busy CPU drops frames.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepipe.edge.references import ReferencePolicy  # noqa: E402
from edgepipe.media.codecs import decode_image  # noqa: E402
from edgepipe.media.codecs.hevc import HevcDecoder, HevcEncoder  # noqa: E402
from edgepipe.recognition import Classifier  # noqa: E402
from edgepipe.server.agreement import agreement  # noqa: E402
from edgepipe.server.qp_control import LOOP_DEFAULTS  # noqa: E402

EDGEPIPE = [str(ROOT / ".venv" / "bin" / "edgepipe")]
CACHE = ROOT / "runs" / "closed_loop" / "cache"
CLASSIFY_CHUNK = 64


class UsageError(Exception):
    """A one-line problem with the inputs (exit code 2)."""


def clip_info(path: Path) -> tuple[float, int, int, int]:
    """(frames/s, frames, width, height) of a clip, counted by decoding."""
    import av

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            fps = float(s.average_rate)
            w, h = s.codec_context.width, s.codec_context.height
            n = sum(1 for _ in c.decode(video=0))
    except Exception as exc:  # av's errors vary by version
        raise UsageError(f"cannot read {path}: {exc}") from None
    return fps, n, w, h


def read_clip(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# --- offline: the fixed-QP curve on the loop's frames ---------------------------------------------------------

_FRAMES: np.ndarray | None = None  # the clip, shared with forked workers
_CODED: np.ndarray | None = None  # what the capture codes: the clip through its pre-transform (--engine)


def pretransform(job: tuple) -> str:
    """The clip's frames through the engine, saved as .npy (run in a worker forked before any library starts
    threads; the coding workers are forked after this one has exited, with the result mapped in)."""
    from edgepipe.engines import load_engine

    engine_spec, path = job
    engine = load_engine(engine_spec, 1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=_FRAMES.shape)
    for i in range(0, len(_FRAMES), 16):
        out[i:i + 16] = engine.run(_FRAMES[i:i + 16])
    out.flush()
    engine.close()
    return path


def references(_=None) -> tuple[np.ndarray, np.ndarray]:
    """The monitor's top-5 of the reference the capture sends for each clip frame (centre square, JPEG q95).
    Run in a worker: this process never starts a recognizer (a fork after its threads start hangs)."""
    frames, classifier = _FRAMES, Classifier(view="centre-crop", threads=1)
    policy = ReferencePolicy(1)
    refs = []
    for f in frames:
        still = policy.encode(policy.picture(f))
        refs.append(decode_image("jpeg", still))
    top = classifier.topk(np.stack(refs), 5)
    return top.classes, top.probs


def code_fixed_qp(job: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    """One QP over the first n frames of the looped clip: (qp, bytes per frame, top-5 overlap per frame)."""
    qp, n, gop, preset, fps, (ref_classes, ref_probs) = job
    frames = _CODED
    length, h, w = frames.shape[:3]
    classifier = Classifier(view="centre-crop", threads=1)
    enc = HevcEncoder(w, h, qp=qp, gop=gop, preset=preset, fps=fps, pool_threads=1)
    dec = HevcDecoder()
    sizes, overlaps, crops, idx = [], [], [], []

    def classify() -> None:
        if not crops:
            return
        top = classifier.topk(np.stack(crops), 5)
        for j, i in enumerate(idx):
            m = agreement(ref_classes[i], ref_probs[i], top.classes[j], top.probs[j])
            overlaps.append(m["top5_overlap"])
        crops.clear()
        idx.clear()

    def take(packets, seq0: int) -> None:
        for p in packets:
            sizes.append(p.size)
            for d in dec.decode(p.data, w, h):
                i = (seq0 + len(idx) + len(overlaps)) % length
                crops.append(classifier.prepare(d))
                idx.append(i)
                if len(crops) >= CLASSIFY_CHUNK:
                    classify()

    for seq in range(n):
        take(enc.encode(frames[seq % length]), 0)
    take(enc.flush(), 0)
    classify()
    if len(sizes) != n or len(overlaps) != n:
        raise RuntimeError(f"QP {qp}: {n} frames gave {len(sizes)} packets and {len(overlaps)} decoded frames")
    return qp, np.array(sizes, np.int64), np.array(overlaps, np.float64)


def cache_path(clip: Path, qp: int, gop: int, preset: str, engine: str = "none") -> Path:
    """The cached curve of one QP; a pre-transform other than none puts its name after the clip's."""
    tag = "" if engine == "none" else f"_{Path(engine).stem}"
    return CACHE / f"{clip.stem}{tag}_qp{qp}_gop{gop}_{preset}.npz"


def offline_curve(clip: Path, qps: list[int], n: int, gop: int, preset: str, fps: float, jobs: int,
                  engine: str = "none") -> dict:
    """{qp: (bytes per frame, overlap per frame)} over the first n frames, from the cache or computed; `engine`:
    the capture's pre-transform (the references are of the source frames, as the capture sends them)."""
    global _FRAMES, _CODED
    out, todo = {}, []
    for qp in qps:
        p = cache_path(clip, qp, gop, preset, engine)
        if p.exists():
            z = np.load(p)
            if len(z["sizes"]) >= n:
                out[qp] = (z["sizes"][:n], z["overlaps"][:n])
                continue
        todo.append(qp)
    if not todo:
        return out
    t0 = time.time()
    _FRAMES = read_clip(clip)
    print(f"closed_loop: offline {clip.name}: {n} frames at QPs {todo}, engine {engine} ({jobs} jobs)", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    _CODED = _FRAMES
    if engine != "none":
        frames_path = CACHE / f"{clip.stem}_{Path(engine).stem}_frames.npy"
        if not frames_path.exists():
            with mp.get_context("fork").Pool(1) as pool:
                pool.apply(pretransform, ((engine, str(frames_path) + ".tmp.npy"),))
            os.replace(str(frames_path) + ".tmp.npy", frames_path)
            print(f"  {len(_FRAMES)} clip frames through {engine} ({time.time() - t0:.0f} s)", flush=True)
        _CODED = np.load(frames_path, mmap_mode="r")
    # the workers are forked before this process starts any recognizer (a fork after its threads start hangs)
    with mp.get_context("fork").Pool(jobs) as pool:
        ref = pool.apply(references)
        todo_jobs = [(q, n, gop, preset, fps, ref) for q in todo]
        for qp, sizes, overlaps in pool.imap_unordered(code_fixed_qp, todo_jobs):
            np.savez(cache_path(clip, qp, gop, preset, engine), sizes=sizes, overlaps=overlaps)
            out[qp] = (sizes, overlaps)
            print(f"  QP {qp}: {sizes.mean() * 8:.0f} bits/frame, top-5 overlap {overlaps.mean():.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    _FRAMES = _CODED = None
    return out


def best_fixed(curve: dict, floor: float) -> int | None:
    """The coarsest QP whose mean top-5 overlap holds the floor (None: none does)."""
    held = [qp for qp, (_, ov) in curve.items() if ov.mean() >= floor]
    return max(held) if held else None


def bracket(clip: Path, grid: list[int], n: int, args, fps: float, lines: list[dict]) -> dict:
    """Search the grid for the coarsest QP that holds the floor, --jobs QPs at a time: first those next to the
    loop's median QP, then points spread evenly inside the interval still open between the coarsest QP known to
    hold it and the first coarser one known to fail, until they are neighbours on the grid (cached QPs count as
    known). `--full-grid` codes every QP."""
    if args.full_grid:
        return offline_curve(clip, grid, n, args.gop, args.preset, fps, args.jobs)
    median = float(np.median([r["qp"] for r in lines])) if lines else args.start_qp
    i = min(range(len(grid)), key=lambda k: abs(grid[k] - median))
    cached = [q for q in grid if cache_path(clip, q, args.gop, args.preset).exists()]
    curve = offline_curve(clip, sorted(set(grid[i:i + args.jobs]) | set(cached)), n, args.gop, args.preset, fps,
                          args.jobs)
    while True:
        held = [grid.index(q) for q in curve if q in grid and curve[q][1].mean() >= args.floor]
        lo = max(held) if held else -1
        above = [grid.index(q) for q in curve if q in grid and grid.index(q) > lo]
        hi = min(above) if above else len(grid)
        if hi - lo <= 1:
            return curve
        todo = sorted({grid[min(hi - 1, max(lo + 1, round(lo + (hi - lo) * k / (args.jobs + 1))))]
                       for k in range(1, args.jobs + 1)})
        curve.update(offline_curve(clip, todo, n, args.gop, args.preset, fps, args.jobs))


def curve_rows(curve: dict) -> list[dict]:
    return [{"qp": qp, "bits_per_frame": round(float(s.mean() * 8), 1), "top5_overlap": round(float(o.mean()), 5),
             "frames": int(len(s))} for qp, (s, o) in sorted(curve.items())]


# --- live: capture + monitor in real time --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_load(max_load: float, max_wait: float) -> float:
    """Wait while the 1-minute load is above max_load (poll 30 s, at most max_wait s); the load at the end."""
    t0 = time.time()
    while os.getloadavg()[0] > max_load and time.time() - t0 < max_wait:
        print(f"closed_loop: load {os.getloadavg()[0]:.2f} > {max_load}, waiting", flush=True)
        time.sleep(30)
    return os.getloadavg()[0]


def live_commands(args, clip: Path, n: int, out: Path, data: str, control: str) -> tuple[list, list]:
    """The monitor's and the capture's command lines."""
    preds, report, stats = out / "predictions.jsonl", out / "report.json", out / "capture.json"
    monitor = EDGEPIPE + [
        "monitor", "--connect", data, "--control", control, "--classify-policy", "all",
        "--target-agreement", str(args.floor), "--target-measure", "top5_overlap",
        "--target-qp-range", f"{args.low}:{args.high}", "--target-step", str(args.step),
        "--target-pairs", str(args.target_pairs), "--target-interval", str(args.target_interval),
        "--target-band", str(args.band), "--target-memory", str(args.target_memory),
        "--target-seconds", str(args.target_seconds),
        *(["--target-per-qp"] if args.target_per_qp else []),
        "--predictions", str(preds), "--report", str(report), "--idle-timeout", "20", "-q"]
    capture = EDGEPIPE + [
        "capture", "--source", str(clip), "--publish", data, "--control", control, "--realtime", "--loop",
        "--frames", str(n), "--engine", "none", "--qp", str(args.start_qp), "--gop", str(args.gop),
        "--preset", args.preset, "--allow-remote-qp", f"{args.low}:{args.high}", "--reference-every", "1",
        "--reference-share", "0", "--wait-subscriber", "60", "--stream-id", clip.stem, "--stats", str(stats), "-q"]
    return monitor, capture


def live_run(args, clip: Path, fps: float, n: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    preds, report, stats = out / "predictions.jsonl", out / "report.json", out / "capture.json"
    for p in (preds, report, stats):
        p.unlink(missing_ok=True)
    monitor, capture = live_commands(args, clip, n, out, data, control)
    procs = []
    t0 = time.time()
    try:
        with open(out / "monitor.log", "w") as mlog, open(out / "capture.log", "w") as clog:
            procs.append(subprocess.Popen(monitor, stdout=mlog, stderr=subprocess.STDOUT))
            time.sleep(3)
            procs.append(subprocess.Popen(capture, stdout=clog, stderr=subprocess.STDOUT))
            print(f"closed_loop: live {clip.name}: capture pid {procs[1].pid}, monitor pid {procs[0].pid}, "
                  f"{n} frames at {fps:g} frames/s", flush=True)
            rc_capture = procs[1].wait(timeout=n / fps + 180)
            rc_monitor = procs[0].wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    if rc_capture != 0 or not stats.exists() or not report.exists() or not preds.exists():
        raise UsageError(f"live run failed (capture rc {rc_capture}, monitor rc {rc_monitor}); see {out}/*.log")
    info = {"wall_s": round(time.time() - t0, 1), "capture_command": shlex.join(capture),
            "monitor_command": shlex.join(monitor), "rc": {"capture": rc_capture, "monitor": rc_monitor}}
    (out / "run.json").write_text(json.dumps(info, indent=1))
    return info


def load_live(out: Path) -> tuple[dict, dict, list[dict]]:
    stats = json.loads((out / "capture.json").read_text())
    report = json.loads((out / "report.json").read_text())
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return stats, report, lines


# --- plot ----------------------------------------------------------------------------------------------------

def plot(path: Path, title: str, lines: list[dict], best_qp: int | None, floor: float, window: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = sorted(lines, key=lambda r: r["seq"])
    t0 = lines[0]["capture_time"]
    t = np.array([r["capture_time"] - t0 for r in lines])
    qp = np.array([r["qp"] for r in lines])
    paired = [(r["capture_time"] - t0, r["agreement"]["top5_overlap"]) for r in lines if r.get("agreement")]
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    ax.step(t, qp, where="post", color="C0", label="loop QP (per frame)")
    if best_qp is not None:
        ax.axhline(best_qp, color="C0", ls="--", lw=1, label=f"best fixed QP in hindsight ({best_qp})")
    ax.set_xlabel("seconds")
    ax.set_ylabel("HEVC QP", color="C0")
    ax2 = ax.twinx()
    if paired:
        pt, ov = np.array(paired).T
        run = np.convolve(ov, np.ones(window) / window, mode="valid") if len(ov) >= window else ov
        ax2.plot(pt[len(pt) - len(run):], run, color="C1", lw=1, label=f"top-5 overlap, mean of last {window} pairs")
        ax2.plot(pt, np.cumsum(ov) / np.arange(1, len(ov) + 1), color="C3", lw=1, label="top-5 overlap, mean so far")
    ax2.axhline(floor, color="C1", ls=":", lw=1.2, label=f"floor {floor}")
    ax2.set_ylabel("top-5 overlap with the reference", color="C1")
    ax2.set_ylim(0, 1.05)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=7, framealpha=0.85)
    ax.set_title(title, fontsize=8.5)
    lo, hi = min(qp.min(), best_qp or qp.min()), max(qp.max(), best_qp or qp.max())
    ax.set_ylim(hi + 1, lo - 1)  # finer QP (more bits) up
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--clip", required=True, help="video file replayed looped at its own frame rate")
    ap.add_argument("--name", default=None, help="name in the output files [default: the clip's first word]")
    ap.add_argument("--floor", type=float, default=0.9, help="top-5 overlap floor (monitor --target-agreement)")
    ap.add_argument("--duration", type=float, default=240.0, help="seconds of the live run (frames = fps * this)")
    ap.add_argument("--start-qp", type=int, default=32, help="capture --qp at the start")
    ap.add_argument("--gop", type=int, default=20, help="capture --gop")
    ap.add_argument("--preset", default="ultrafast", help="libx265 preset (capture's default)")
    ap.add_argument("--low", type=int, default=22, help="finest QP the loop may ask for (and the safe QP)")
    ap.add_argument("--high", type=int, default=42, help="coarsest QP the loop may ask for")
    ap.add_argument("--step", type=int, default=2, help="monitor --target-step")
    ap.add_argument("--band", type=float, default=LOOP_DEFAULTS["band"], help="monitor --target-band")
    ap.add_argument("--target-memory", type=float, default=LOOP_DEFAULTS["memory_s"], help="monitor --target-memory")
    ap.add_argument("--target-pairs", type=int, default=LOOP_DEFAULTS["min_pairs"], help="monitor --target-pairs")
    ap.add_argument("--target-interval", type=float, default=LOOP_DEFAULTS["min_interval_s"], help="monitor --target-interval")
    ap.add_argument("--target-seconds", type=float, default=LOOP_DEFAULTS["min_seconds"], help="monitor --target-seconds")
    ap.add_argument("--target-per-qp", action="store_true", help="monitor --target-per-qp (no time-sharing)")
    ap.add_argument("--jobs", type=int, default=2, help="offline encoder processes (one QP each)")
    ap.add_argument("--max-load", type=float, default=2.5, help="wait before the live run while the load is above")
    ap.add_argument("--max-wait", type=float, default=900.0, help="longest wait for the load, seconds")
    ap.add_argument("--full-grid", action="store_true",
                    help="code every QP of the grid offline, not only those that bracket the floor")
    ap.add_argument("--offline-only", action="store_true", help="only the fixed-QP curve (see above)")
    ap.add_argument("--engine", default="none", help="with --offline-only: the capture's pre-transform for the "
                    "cached curves (bench/closed_loop_sim.py --engines compares them); live runs use none")
    ap.add_argument("--reuse-live", action="store_true", help="do not run live: use the raw files of a previous run")
    ap.add_argument("--live-load", type=float, default=None,
                    help="with --reuse-live: the 1-minute load when that live run started (as noted)")
    ap.add_argument("--tag", default="", help="suffix of the output names (a variation of the settings)")
    ap.add_argument("--window", type=int, default=60, help="pairs in the plot's running mean")
    args = ap.parse_args()

    try:
        clip = Path(args.clip)
        if not clip.is_file():
            raise UsageError(f"no such clip: {clip}")
        if not 0 < args.floor <= 1 or args.duration <= 0 or not 0 <= args.low <= args.start_qp <= args.high <= 51:
            raise UsageError("need 0 < --floor <= 1, --duration > 0 and 0 <= --low <= --start-qp <= --high <= 51")
        if (args.start_qp - args.low) % args.step:
            raise UsageError(f"--start-qp {args.start_qp} is not on the grid --low {args.low} + k * --step")
        fps, length, w, h = clip_info(clip)
        name = (args.name or clip.stem.split("-")[0]) + args.tag
        n = int(round(fps * args.duration))
        grid = list(range(args.low, args.high + 1, args.step))
        raw = ROOT / "runs" / "closed_loop" / name
        if args.offline_only:
            curve = offline_curve(clip, grid, n, args.gop, args.preset, fps, args.jobs, args.engine)
            for r in curve_rows(curve):
                print(f"QP {r['qp']}: {r['bits_per_frame']:.0f} bits/frame, top-5 overlap {r['top5_overlap']:.4f}")
            return 0
        load_start = os.getloadavg()
        live = {"reused": True}
        if (raw / "run.json").exists():
            live.update(json.loads((raw / "run.json").read_text()))
        else:  # a run before run.json was kept: its command lines, ports left out
            monitor, capture = live_commands(args, clip, n, raw, "tcp://127.0.0.1:PORT1", "tcp://127.0.0.1:PORT2")
            live.update({"capture_command": shlex.join(capture), "monitor_command": shlex.join(monitor)})
        if args.live_load is not None:
            live["load_at_go"] = args.live_load
        if not args.reuse_live:
            load_go = wait_for_load(args.max_load, args.max_wait)
            live = live_run(args, clip, fps, n, raw)
            live["load_at_go"] = round(load_go, 2)
        load_live_end = os.getloadavg()
        stats, report, lines = load_live(raw)
    except UsageError as exc:
        print(f"closed_loop: {exc}", file=sys.stderr)
        return 2

    sent = int(stats["frames_sent"])
    seqs = sorted(r["seq"] for r in lines)
    paired = [r for r in lines if r.get("agreement")]
    loop_bits = stats["bytes_sent"] * 8 / sent
    loop_overlap = float(np.mean([r["agreement"]["top5_overlap"] for r in paired])) if paired else None
    # the frames the loop covered: seq 0..sent-1 (clip frame seq % length)
    curve = bracket(clip, grid, sent, args, fps, lines)
    best = best_fixed(curve, args.floor)
    if best is not None and best + 1 <= args.high + args.step - 1 and best + 1 <= 51:  # the odd QP above it
        curve.update(offline_curve(clip, [best + 1], sent, args.gop, args.preset, fps, args.jobs))
        best = best_fixed(curve, args.floor)
    best_bits = float(curve[best][0].mean() * 8) if best is not None else None
    # over the frames the monitor paired only (the loop's own measure is over them), for a like-for-like check
    paired_idx = np.array([r["seq"] for r in paired if r["seq"] < sent], np.int64)
    best_on_paired = (float(curve[best][1][paired_idx].mean()) if best is not None and len(paired_idx) else None)
    qps_seen = {}
    for r in lines:
        qps_seen[r["qp"]] = qps_seen.get(r["qp"], 0) + 1
    loop_report = report.get("closed_loop", {})
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "clip": clip.name, "clip_fps": fps, "clip_frames": length, "size": f"{w}x{h}",
        "settings": {k: getattr(args, k) for k in ("floor", "duration", "start_qp", "gop", "preset", "low", "high",
                                                   "step", "band", "target_pairs", "target_interval")},
        "measure": "top5_overlap",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_start": [round(x, 2) for x in load_start],
                    "load_after_live": [round(x, 2) for x in load_live_end],
                    "load_end": [round(x, 2) for x in os.getloadavg()]},
        "live": {**live, "raw": str(raw.relative_to(ROOT)), "frames_sent": sent, "kbit_s": stats.get("kbit_s"),
                 "loop_fps": stats.get("loop_fps"), "drops": stats.get("drops"),
                 "predictions_lines": len(lines), "pairs": len(paired),
                 "seq_range": [seqs[0], seqs[-1]] if seqs else None,
                 "frames_per_qp": dict(sorted(qps_seen.items())),
                 "lost": report.get("lost"), "rejects": report.get("rejects")},
        "trace_capture": stats.get("remote_qp"),
        "trace_monitor": loop_report,
        "loop_bits_per_frame": round(loop_bits, 1),
        "loop_bits_per_frame_predictions": round(float(np.mean([r["bytes"] for r in lines]) * 8), 1) if lines else None,
        "loop_top5_overlap": None if loop_overlap is None else round(loop_overlap, 5),
        "offline_curve": curve_rows(curve),
        "best_fixed_qp": best,
        "best_fixed_bits_per_frame": None if best_bits is None else round(best_bits, 1),
        "best_fixed_top5_overlap": None if best is None else round(float(curve[best][1].mean()), 5),
        "best_fixed_top5_overlap_on_paired_frames": None if best_on_paired is None else round(best_on_paired, 5),
        "ratio_loop_to_best_fixed": None if best_bits is None else round(loop_bits / best_bits, 4),
        "floor_held": None if loop_overlap is None else bool(loop_overlap >= args.floor),
        "within_10pct": None if best_bits is None else bool(loop_bits <= 1.10 * best_bits),
    }
    out_json = ROOT / "bench" / "results" / f"closed_loop_{name}.json"
    out_json.write_text(json.dumps(result, indent=1))
    with gzip.open(ROOT / "bench" / "results" / f"closed_loop_{name}_predictions.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines))
    ratio = result["ratio_loop_to_best_fixed"]
    title = (f"{clip.name} ({name}): floor {args.floor} top-5 overlap\nloop {loop_bits:.0f} bits/frame, overlap "
             f"{loop_overlap:.3f}; best fixed QP {best} {best_bits or 0:.0f} bits/frame"
             + (f" (ratio {ratio:.3f})" if ratio else ""))
    plot(ROOT / "docs" / "images" / f"closed_loop_{name}.png", title, lines, best, args.floor, args.window)
    print(f"closed_loop: {name}: loop {loop_bits:.0f} bits/frame, top-5 overlap {loop_overlap}, best fixed QP "
          f"{best} at {best_bits} bits/frame, ratio {ratio}, floor held {result['floor_held']}; wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
