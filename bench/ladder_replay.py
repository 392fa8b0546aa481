"""Replay a live ladder run offline, GOP by GOP, with every engine: is its A/B a difference of pre-transforms or of
scenes?

    python bench/ladder_replay.py bench/results/ladder_person_clip/predictions.jsonl.gz \\
        --clip ../shared/data/video/one-by-one-person-detection.mp4 --engines none,ours \\
        --out bench/results/ladder_replay_person.json

A ladder (`capture --ladder ... --ab none,ours`) codes each GOP at one operating point, so `none` and `ours` code
*different* GOPs of the scene. This script takes the run's `monitor --predictions` lines (stream sequence number,
model, QP, bytes and keyframe of every frame), maps each sequence number to its clip frame (the capture looped
the clip from frame 0: frame = (seq - --first-seq) mod the clip's length), and codes every GOP of the run
again offline, once with each engine, as a fresh stream at the GOP's QP with the capture's encoder settings
(`HevcEncoder`: libx265 ultrafast, zerolatency, GOP --gop, --fps, one pool thread; a ladder re-opens the
encoder at each GOP, so each GOP is its own stream from an IDR).

Per QP it reports:
    live_bytes[model]            the live run's mean bytes per frame over the GOPs that model coded
    replay_same[model]           the offline bytes of the same GOPs with the same engine: if the replay is faithful,
                                 close to live_bytes (the I-frames byte for byte)
    replay_other[model]          the offline bytes of the same GOPs with the other engine(s): what the other
                                 pre-transform would have cost on exactly those frames
    paired_ratio                 over all GOPs at the QP, each coded with both engines: bytes(engine) / bytes(first)
    live_ratio                   the live run's ratio (different GOPs per engine), for comparison
and per frame type (I, P). `iframe_exact` counts I-frames whose offline size equals the live one.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepipe.core.errors import EdgepipeError  # noqa: E402
from edgepipe.engines import load_engine  # noqa: E402
from edgepipe.media.codecs.hevc import HevcEncoder  # noqa: E402

ED_BATCH = 8


class UsageError(Exception):
    """A one-line problem with the inputs (exit code 2)."""


def read_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read predictions {path}: {exc}") from None


def read_clip(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except Exception as exc:  # av's errors vary by version
        raise UsageError(f"cannot read {path}: {exc}") from None


def gops_of(lines: list[dict], gop: int, first_seq: int) -> dict[int, dict]:
    """GOP index -> {model, qp, seqs, bytes, keyframes} from the lines of one stream, in sequence order."""
    out: dict[int, dict] = {}
    for line in sorted(lines, key=lambda x: x["seq"]):
        g = (line["seq"] - first_seq) // gop
        entry = out.setdefault(g, {"model": line["model"], "qp": line["qp"], "seqs": [], "bytes": [],
                                   "keyframes": []})
        if (entry["model"], entry["qp"]) != (line["model"], line["qp"]):
            raise UsageError(f"sequence {line['seq']}: GOP {g} mixes operating points; check --gop and --first-seq")
        entry["seqs"].append(line["seq"])
        entry["bytes"].append(line["bytes"])
        entry["keyframes"].append(bool(line.get("keyframe")))
    # a GOP seen from its start only: the monitor may have joined mid-GOP (frames before its first keyframe)
    return {g: e for g, e in out.items() if e["keyframes"] and e["keyframes"][0]}


def _fmt(value: float | None) -> str:
    """A ratio, or n/a where a QP had no GOP of that engine (a short run)."""
    return "n/a" if value is None else f"{value:.3f}"


def code_gop(frames: np.ndarray, qp: int, gop: int, fps: float) -> tuple[list[int], list[bool]]:
    """Bytes and keyframe flags of each frame, coded as one fresh stream the way the capture codes a ladder GOP."""
    t, h, w = frames.shape[:3]
    enc = HevcEncoder(w, h, qp=qp, gop=gop, preset="ultrafast", fps=fps, pool_threads=1)
    packets = []
    for f in frames:
        packets += enc.encode(np.ascontiguousarray(f))
    packets += enc.flush()
    packets.sort(key=lambda p: p.pts)
    return [p.size for p in packets], [p.keyframe for p in packets]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("predictions", help="the run's `monitor --predictions` file (.jsonl or .jsonl.gz)")
    ap.add_argument("--clip", required=True, help="the clip the capture looped")
    ap.add_argument("--engines", default="none,ours", help="the ladder's --ab engines, first is the anchor")
    ap.add_argument("--model-names", default=None,
                    help="comma list of the model ids in the lines, one per engine (default: 'none' and the "
                         "engine's own model id)")
    ap.add_argument("--gop", type=int, default=20, help="the capture's --gop")
    ap.add_argument("--fps", type=float, default=10.0, help="the capture's frame rate")
    ap.add_argument("--first-seq", type=int, default=0, help="the sequence number of the clip's frame 0")
    ap.add_argument("--qps", default=None, help="only these QPs (comma list)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ladder_replay.json"))
    args = ap.parse_args()

    try:
        lines = read_lines(Path(args.predictions))
        streams = sorted({x["stream"] for x in lines})
        if len(streams) != 1:
            raise UsageError(f"expected the lines of one stream, found {len(streams)}: {', '.join(streams)}")
        specs = [s.strip() for s in args.engines.split(",") if s.strip()]
        engines = {s: load_engine(s, threads=2) for s in specs}
        names = args.model_names.split(",") if args.model_names else [
            "none" if s == "none" else engines[s].model_id for s in specs]
        if len(names) != len(specs):
            raise UsageError("--model-names needs one name per engine")
        spec_of = dict(zip(names, specs))
        gops = gops_of([x for x in lines if x["model"] in spec_of], args.gop, args.first_seq)
        if args.qps:
            wanted = {int(q) for q in args.qps.split(",")}
            gops = {g: e for g, e in gops.items() if e["qp"] in wanted}
        if not gops:
            raise UsageError("no complete GOP of the given engines in the predictions")
        clip = read_clip(Path(args.clip))
    except (UsageError, EdgepipeError) as exc:
        print(f"ladder_replay: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"ladder_replay: bad --qps: {exc}", file=sys.stderr)
        return 2

    started = time.time()
    n = len(clip)
    needed = sorted({(s - args.first_seq) % n for e in gops.values() for s in e["seqs"]})
    outputs: dict[str, dict[int, np.ndarray]] = {}
    for spec, engine in engines.items():
        t0 = time.time()
        done = {}
        for i in range(0, len(needed), ED_BATCH):
            idx = needed[i:i + ED_BATCH]
            for k, out in zip(idx, engine.run(clip[idx])):
                done[k] = out
        outputs[spec] = done
        print(f"{spec}: {len(done)} frames through the engine in {time.time() - t0:.0f} s", flush=True)

    per_gop = []
    for g, e in sorted(gops.items()):
        frames_idx = [(s - args.first_seq) % n for s in e["seqs"]]
        row = {"gop": g, "model": e["model"], "qp": e["qp"], "seq0": e["seqs"][0], "frame0": frames_idx[0],
               "frames": len(frames_idx), "live_bytes": e["bytes"], "live_keyframes": e["keyframes"], "replay": {}}
        for name, spec in spec_of.items():
            sizes, keys = code_gop(np.stack([outputs[spec][k] for k in frames_idx]), e["qp"], args.gop, args.fps)
            row["replay"][name] = {"bytes": sizes, "keyframes": keys}
        per_gop.append(row)
    print(f"{len(per_gop)} GOPs coded {len(spec_of)} ways in {time.time() - started:.0f} s", flush=True)

    def mean_bytes(rows, pick, frame_type):
        vals = []
        for r in rows:
            sizes, keys = pick(r)
            vals += [b for b, k in zip(sizes, keys) if frame_type == "all" or (frame_type == "I") == k]
        return float(np.mean(vals)) if vals else None

    anchor = names[0]
    summary = []
    exact = collections.Counter()
    for r in per_gop:
        live_i = [b for b, k in zip(r["live_bytes"], r["live_keyframes"]) if k]
        same = r["replay"][r["model"]]
        rep_i = [b for b, k in zip(same["bytes"], same["keyframes"]) if k]
        exact["iframes"] += len(live_i)
        exact["equal"] += sum(a == b for a, b in zip(live_i, rep_i))
    for qp in sorted({r["qp"] for r in per_gop}):
        at = [r for r in per_gop if r["qp"] == qp]
        entry = {"qp": qp, "gops": {m: sum(r["model"] == m for r in at) for m in names}}
        for frame_type in ("all", "I", "P"):
            t = {}
            for m in names:
                mine = [r for r in at if r["model"] == m]
                t[f"live_bytes[{m}]"] = mean_bytes(mine, lambda r: (r["live_bytes"], r["live_keyframes"]), frame_type)
                t[f"replay_same[{m}]"] = mean_bytes(
                    mine, lambda r: (r["replay"][r["model"]]["bytes"], r["replay"][r["model"]]["keyframes"]),
                    frame_type)
                t[f"paired_all[{m}]"] = mean_bytes(
                    at, lambda r, m=m: (r["replay"][m]["bytes"], r["replay"][m]["keyframes"]), frame_type)
            for m in names[1:]:
                a, b = t[f"paired_all[{anchor}]"], t[f"paired_all[{m}]"]
                t[f"paired_ratio[{m}]"] = b / a if a else None
                la, lb = t[f"live_bytes[{anchor}]"], t[f"live_bytes[{m}]"]
                t[f"live_ratio[{m}]"] = lb / la if la and lb else None
            entry[frame_type] = t
        summary.append(entry)
        for m in names[1:]:
            p, live = entry["P"], entry["all"]
            own = {x: (live[f"replay_same[{x}]"] / live[f"live_bytes[{x}]"] if live[f"live_bytes[{x}]"] else None)
                   for x in names}
            print(f"QP {qp}: {m} / {anchor} bytes, live (different GOPs) all {_fmt(live[f'live_ratio[{m}]'])} "
                  f"P {_fmt(p[f'live_ratio[{m}]'])}; replayed on the same GOPs all {_fmt(live[f'paired_ratio[{m}]'])} "
                  f"P {_fmt(p[f'paired_ratio[{m}]'])}; replay/live of each engine's own GOPs: "
                  + ", ".join(f"{x} {_fmt(v)}" for x, v in own.items()), flush=True)
    print(f"I-frames byte for byte equal to the live ones: {exact['equal']} of {exact['iframes']}")
    result = {"command": " ".join(sys.argv), "predictions": args.predictions, "clip": args.clip,
              "engines": dict(zip(names, specs)), "gop": args.gop, "fps": args.fps, "first_seq": args.first_seq,
              "iframes_equal": exact["equal"], "iframes": exact["iframes"], "summary": summary,
              "seconds": round(time.time() - started, 1), "machine": platform.platform(), "gops": per_gop}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
