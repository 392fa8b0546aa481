"""The closed loop replayed offline: the monitor's own controller (`edgepipe/server/qp_control.py`) driven by the
per-frame curves that `bench/closed_loop.py` cached, so a rule or a setting can be judged in seconds, on exactly
the frames of a live run.

    python bench/closed_loop_sim.py --clip one-by-one-person-detection --floor 0.70,0.75 [--repeat 5 ...]

`bench/closed_loop.py` codes the frames of its 240 s live run (seq 0..n-1 of the looped clip) at each QP of its
grid as one stream with the capture's encoder settings, and caches per frame the bytes and the top-5 overlap with
the reference the capture sends (runs/closed_loop/cache/<clip>_qp<Q>_gop<G>_<preset>.npz). Here frame t is coded
at the QP the simulated capture holds: a QP the controller asks for takes effect at the next GOP boundary (as the
capture applies it) once `--answer-frames` frames have passed (the pair's classification and the control
message's way back); the frame's bytes and its pair's overlap are read from that QP's cache, and the pair reaches
the controller `--answer-frames` frames later. GOPs are aligned with the cached streams (an IDR every G frames
from frame 0), so the bytes of a GOP at a QP are those of the cached stream. QPs the cache lacks are outside the
simulated range: `--low/--high` default to the cached grid's ends, and a step onto a missing QP is an error.

Output: loop bits/frame, mean overlap over all frames, the best fixed QP in hindsight (the coarsest cached QP whose
mean holds the floor) and the ratio, the number of changes, and the bits a fixed QP would need for the overlap the
loop reached (log bits interpolated between cached QPs): over that, the loop's cost of mixing QPs, apart from what
it spends above the floor. `--json` writes them with the QP trace.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepipe.server.qp_control import LOOP_DEFAULTS, LoopSettings, QpController  # noqa: E402

CACHE = ROOT / "runs" / "closed_loop" / "cache"


def load_curves(clip: str, gop: int, preset: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    curves = {}
    for p in sorted(CACHE.glob(f"{clip}_qp*_gop{gop}_{preset}.npz")):
        qp = int(p.name[len(clip) + 3:].split("_")[0])
        z = np.load(p)
        curves[qp] = (z["sizes"].astype(np.float64), z["overlaps"].astype(np.float64))
    return curves


def simulate(curves: dict, settings: LoopSettings, start_qp: int, fps: float, gop: int, answer_frames: int,
             frames: int | None = None, repeat: int = 1, offset: int = 0) -> dict:
    cached = min(len(s) for s, _ in curves.values()) if frames is None else frames
    # frame t of the run is cached frame (offset + t) mod cached: a longer run plays the cached one again, and an
    # offset (whole GOPs) starts the loop elsewhere in the scene; each wrap starts at an IDR
    n = cached * repeat
    ctl = QpController(settings, started=0.0)
    qp, wanted, wanted_at = start_qp, None, None
    pending: deque = deque()  # (arrives at frame, qp, overlap)
    bits = np.zeros(n)
    overlap = np.zeros(n)
    trace = [(0.0, qp)]
    for t in range(n):
        now = t / fps
        if wanted is not None and t % gop == 0 and t - wanted_at >= answer_frames:
            if wanted not in curves:
                raise SystemExit(f"closed_loop_sim: the controller asked for QP {wanted}, which is not cached")
            qp, wanted = wanted, None
            trace.append((now, qp))
        sizes, overlaps = curves[qp]
        k = (offset + t) % cached
        bits[t], overlap[t] = sizes[k] * 8, overlaps[k]
        pending.append((t + answer_frames, qp, overlap[t]))
        while pending and pending[0][0] <= t:
            _, pair_qp, value = pending.popleft()
            change = ctl.observe(pair_qp, {"top5_overlap": value, "top1_equal": True}, now)
            if change is not None:
                wanted, wanted_at = change.qp, t
        change = ctl.tick(now)
        if change is not None:
            wanted, wanted_at = change.qp, t
    return {"frames": n, "bits_per_frame": float(bits.mean()), "overlap": float(overlap.mean()),
            "changes": len(trace) - 1, "trace": trace, "counts": dict(ctl.counts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--clip", required=True, help="the clip's file name without .mp4, as in the cache")
    ap.add_argument("--floor", required=True, help="the floor (monitor --target-agreement); several, comma-separated, "
                    "run one after another")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--gop", type=int, default=20)
    ap.add_argument("--preset", default="ultrafast")
    ap.add_argument("--start-qp", type=int, default=32)
    ap.add_argument("--answer-frames", type=int, default=3, help="frames between a pair's frame and its "
                    "judgement, and between a request and the capture seeing it")
    ap.add_argument("--low", type=int, default=None)
    ap.add_argument("--high", type=int, default=None)
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--band", type=float, default=LOOP_DEFAULTS["band"], help="monitor --target-band")
    ap.add_argument("--target-pairs", type=int, default=20, help="the controller's min_pairs")
    ap.add_argument("--memory", type=float, default=LOOP_DEFAULTS["memory_s"], help="monitor --target-memory")
    ap.add_argument("--target-seconds", type=float, default=LOOP_DEFAULTS["min_seconds"], help="monitor --target-seconds")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1, help="play the cached run N times in a row (a longer run of "
                    "the same scene; the cached run is a whole number of GOPs, so each replay starts at an IDR)")
    ap.add_argument("--phases", type=int, default=1, help="K runs, started at K points spread over the cached "
                    "frames (whole GOPs): one run is one draw of how the scene meets the loop")
    ap.add_argument("--no-share", action="store_true", help="monitor --target-per-qp: judge each QP alone")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args()

    try:
        floors = [float(f) for f in args.floor.split(",")]
    except ValueError:
        print(f"closed_loop_sim: --floor takes numbers separated by commas, not {args.floor!r}", file=sys.stderr)
        return 2
    curves = load_curves(args.clip, args.gop, args.preset)
    if not curves:
        print(f"closed_loop_sim: nothing cached for {args.clip} (run bench/closed_loop.py first)", file=sys.stderr)
        return 2
    cached = min(len(s) for s, _ in curves.values())
    if args.phases < 1 or args.repeat < 1 or ((args.repeat > 1 or args.phases > 1) and cached % args.gop):
        print(f"closed_loop_sim: --repeat and --phases need N >= 1 and a cached run of whole GOPs ({cached} frames, GOP "
              f"{args.gop})", file=sys.stderr)
        return 2
    rows = [run_floor(args, curves, floor) for floor in floors]
    if args.json:
        Path(args.json).write_text(json.dumps(rows[0] if len(rows) == 1 else {"rows": rows}, indent=1))
    return 0


def run_floor(args, curves: dict, floor: float) -> dict:
    """Simulated runs at one floor (one per phase), against the best fixed QP in hindsight on the same frames."""
    qps = sorted(curves)
    cached = min(len(s) for s, _ in curves.values())
    settings = LoopSettings(target=floor, band=args.band, low=args.low or qps[0], high=args.high or qps[-1],
                            step=args.step, min_pairs=args.target_pairs,
                            window=max(LOOP_DEFAULTS["window"], args.target_pairs), memory_s=args.memory, min_seconds=args.target_seconds,
                            min_interval_s=args.interval, share=not args.no_share)
    # every run covers whole plays of the cached frames, so each QP's means over it are those of one play
    holding = [q for q in qps if curves[q][1].mean() >= floor]
    best = max(holding) if holding else None
    best_bits = float(curves[best][0].mean() * 8) if best is not None else None
    points = sorted((curves[q][1].mean(), np.log(curves[q][0].mean() * 8)) for q in qps)
    runs = []
    for phase in range(args.phases):
        offset = cached * phase // args.phases // args.gop * args.gop
        r = simulate(curves, settings, args.start_qp, args.fps, args.gop, args.answer_frames, repeat=args.repeat,
                     offset=offset)
        # the fixed-QP curve at the quality the loop reached: log bits interpolated in overlap between cached QPs
        same = float(np.exp(np.interp(r["overlap"], [p[0] for p in points], [p[1] for p in points])))
        r.update(offset=offset, held=r["overlap"] >= floor, fixed_bits_at_loop_quality=same,
                 ratio=r["bits_per_frame"] / best_bits if best_bits else None,
                 ratio_at_loop_quality=r["bits_per_frame"] / same)
        runs.append(r)
        print(f"{args.clip}: {'' if args.phases == 1 else f'start at frame {offset}: '}loop "
              f"{r['bits_per_frame']:.0f} bits/frame, overlap {r['overlap']:.3f} (floor {floor}: "
              f"{'held' if r['held'] else 'MISSED'}), {r['changes']} changes; "
              + (f"best fixed QP {best}: {best_bits:.0f} bits/frame; ratio {r['ratio']:.2f}; " if best is not None
                 else "no cached QP holds the floor; ")
              + f"a fixed QP reaching the loop's overlap: {same:.0f} bits/frame (ratio {r['ratio_at_loop_quality']:.2f})")
    result = {"floor": floor, "cached_qps": qps, "best_fixed_qp": best, "best_fixed_bits_per_frame": best_bits,
              "settings": {**vars(args), "floor": floor}}
    if args.phases == 1:
        return {**runs[0], **result}
    ratios = sorted(r["ratio"] for r in runs if r["ratio"] is not None)
    result.update(runs=runs, held=sum(r["held"] for r in runs), phases=len(runs),
                  ratio_median=float(np.median(ratios)) if ratios else None,
                  ratio_max=ratios[-1] if ratios else None,
                  within_10pct=sum(x <= 1.10 for x in ratios))
    if ratios:
        print(f"{args.clip}, floor {floor}, {len(runs)} starts: ratio median {result['ratio_median']:.2f}, max "
              f"{result['ratio_max']:.2f}, within 10 % {result['within_10pct']}/{len(runs)}, floor held "
              f"{result['held']}/{len(runs)}")
    return result


if __name__ == "__main__":
    sys.exit(main())
