"""The closed loop replayed offline: the monitor's own controller (`edgepipe/server/qp_control.py`) driven by the
per-frame curves that `bench/closed_loop.py` cached, so a rule or a setting can be judged in seconds, on exactly
the frames of a live run.

    python bench/closed_loop_sim.py --clip one-by-one-person-detection --floor 0.75 [--target-pairs 300 ...]

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

from edgepipe.server.qp_control import LoopSettings, QpController  # noqa: E402

CACHE = ROOT / "runs" / "closed_loop" / "cache"


def load_curves(clip: str, gop: int, preset: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    curves = {}
    for p in sorted(CACHE.glob(f"{clip}_qp*_gop{gop}_{preset}.npz")):
        qp = int(p.name[len(clip) + 3:].split("_")[0])
        z = np.load(p)
        curves[qp] = (z["sizes"].astype(np.float64), z["overlaps"].astype(np.float64))
    return curves


def simulate(curves: dict, settings: LoopSettings, start_qp: int, fps: float, gop: int, answer_frames: int,
             frames: int | None = None) -> dict:
    n = min(len(s) for s, _ in curves.values()) if frames is None else frames
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
        bits[t], overlap[t] = sizes[t] * 8, overlaps[t]
        pending.append((t + answer_frames, qp, overlaps[t]))
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
    ap.add_argument("--floor", type=float, required=True)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--gop", type=int, default=20)
    ap.add_argument("--preset", default="ultrafast")
    ap.add_argument("--start-qp", type=int, default=32)
    ap.add_argument("--answer-frames", type=int, default=3, help="frames between a pair's frame and its "
                    "judgement, and between a request and the capture seeing it")
    ap.add_argument("--low", type=int, default=None)
    ap.add_argument("--high", type=int, default=None)
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--band", type=float, default=0.0, help="monitor --target-band")
    ap.add_argument("--target-pairs", type=int, default=20, help="the controller's min_pairs")
    ap.add_argument("--memory", type=float, default=120.0, help="monitor --target-memory")
    ap.add_argument("--target-seconds", type=float, default=20.0, help="monitor --target-seconds")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args()

    curves = load_curves(args.clip, args.gop, args.preset)
    if not curves:
        print(f"closed_loop_sim: nothing cached for {args.clip} (run bench/closed_loop.py first)", file=sys.stderr)
        return 2
    qps = sorted(curves)
    settings = LoopSettings(target=args.floor, band=args.band, low=args.low or qps[0], high=args.high or qps[-1],
                            step=args.step, min_pairs=args.target_pairs,
                            window=max(4096, args.target_pairs), memory_s=args.memory, min_seconds=args.target_seconds,
                            min_interval_s=args.interval)
    result = simulate(curves, settings, args.start_qp, args.fps, args.gop, args.answer_frames)
    holding = [q for q in qps if curves[q][1][:result["frames"]].mean() >= args.floor]
    best = max(holding) if holding else None
    best_bits = float(curves[best][0][:result["frames"]].mean() * 8) if best is not None else None
    # the fixed-QP curve at the quality the loop reached: log bits interpolated in overlap between cached QPs
    n = result["frames"]
    points = sorted((curves[q][1][:n].mean(), np.log(curves[q][0][:n].mean() * 8)) for q in qps)
    same_quality = float(np.exp(np.interp(result["overlap"], [p[0] for p in points], [p[1] for p in points])))
    result.update(floor=args.floor, cached_qps=qps, best_fixed_qp=best, best_fixed_bits_per_frame=best_bits,
                  ratio=result["bits_per_frame"] / best_bits if best_bits else None,
                  fixed_bits_at_loop_quality=same_quality,
                  ratio_at_loop_quality=result["bits_per_frame"] / same_quality, settings=vars(args))
    print(f"{args.clip}: loop {result['bits_per_frame']:.0f} bits/frame, overlap {result['overlap']:.3f} "
          f"(floor {args.floor}), {result['changes']} changes; "
          + (f"best fixed QP {best}: {best_bits:.0f} bits/frame; ratio {result['ratio']:.2f}; " if best is not None
             else "no cached QP holds the floor; ")
          + f"a fixed QP reaching the loop's overlap: {same_quality:.0f} bits/frame "
          f"(ratio {result['ratio_at_loop_quality']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
