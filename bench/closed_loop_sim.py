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

from edgepipe.server.engine_trial import TRIAL_DEFAULTS, EngineTrial, TrialSettings  # noqa: E402
from edgepipe.server.qp_control import LOOP_DEFAULTS, LoopSettings, QpController  # noqa: E402

CACHE = ROOT / "runs" / "closed_loop" / "cache"


def load_curves(clip: str, gop: int, preset: str, engine: str = "none") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{qp: (bytes per frame, overlap per frame)} cached by bench/closed_loop.py for this pre-transform."""
    curves = {}
    prefix = clip if engine == "none" else f"{clip}_{engine}"
    for p in sorted(CACHE.glob(f"{prefix}_qp*_gop{gop}_{preset}.npz")):
        qp = int(p.name[len(prefix) + 3:].split("_")[0])
        z = np.load(p)
        curves[qp] = (z["sizes"].astype(np.float64), z["overlaps"].astype(np.float64))
    return curves


def simulate(curves: dict, settings: LoopSettings, start_qp: int, fps: float, gop: int, answer_frames: int,
             frames: int | None = None, repeat: int = 1, offset: int = 0, trials: TrialSettings | None = None,
             engines: dict | None = None) -> dict:
    """`curves`: {qp: (sizes, overlaps)} of the engine the run starts with; with `trials` (engine trials as the
    monitor's --target-engines runs them), `engines` {name: curves} of every engine, the first the start."""
    engines = engines or {"none": curves}
    start_engine = next(iter(engines))
    cached = min(len(s) for c in engines.values() for s, _ in c.values()) if frames is None else frames
    # frame t of the run is cached frame (offset + t) mod cached: a longer run plays the cached one again, and an
    # offset (whole GOPs) starts the loop elsewhere in the scene; each wrap starts at an IDR
    n = cached * repeat
    ctl = QpController(settings, started=0.0)
    trial = EngineTrial(trials, started=0.0) if trials is not None else None
    qp, wanted, wanted_at = start_qp, None, None
    engine, engine_wanted, engine_wanted_at = start_engine, None, None
    pending: deque = deque()  # (arrives at frame, qp, engine, overlap)
    bits = np.zeros(n)
    overlap = np.zeros(n)
    trace, engine_trace = [(0.0, qp)], [(0.0, engine)]
    poll_every = max(1, int(fps / 2))  # the monitor's loop ticks twice a second
    for t in range(n):
        now = t / fps
        if wanted is not None and t % gop == 0 and t - wanted_at >= answer_frames:
            if wanted not in engines[engine]:
                raise SystemExit(f"closed_loop_sim: the controller asked for QP {wanted}, which is not cached")
            qp, wanted = wanted, None
            trace.append((now, qp))
        if engine_wanted is not None and t % gop == 0 and t - engine_wanted_at >= answer_frames:
            if qp not in engines[engine_wanted]:
                raise SystemExit(f"closed_loop_sim: QP {qp} is not cached for engine {engine_wanted}")
            engine, engine_wanted = engine_wanted, None
            engine_trace.append((now, engine))
        sizes, overlaps = engines[engine][qp]
        k = (offset + t) % cached
        bits[t], overlap[t] = sizes[k] * 8, overlaps[k]
        if trial is not None:
            trial.frame(engine, qp, int(sizes[k]), now, keyframe=k % gop == 0)
        pending.append((t + answer_frames, qp, engine, overlap[t]))
        while pending and pending[0][0] <= t:
            _, pair_qp, pair_engine, value = pending.popleft()
            if trial is not None:
                trial.pair(pair_engine, pair_qp, value, now)
                ctl.frozen = trial.active
            change = ctl.observe(pair_qp, {"top5_overlap": value, "top1_equal": True}, now, pair_engine)
            if change is not None:
                wanted, wanted_at = change.qp, t
        change = ctl.tick(now)
        if change is not None:
            wanted, wanted_at = change.qp, t
        # as the monitor (ClosedLoop.tick): no trial starts while a QP change is on its way
        if trial is not None and t % poll_every == 0 and (trial.active or (change is None and ctl.asked is None)):
            spec = trial.poll(now, ctl.agreement_per_qp(now))
            ctl.frozen = trial.active
            if spec is not None:
                engine_wanted, engine_wanted_at = spec, t
    out = {"frames": n, "bits_per_frame": float(bits.mean()), "overlap": float(overlap.mean()),
           "changes": len(trace) - 1, "trace": trace, "counts": dict(ctl.counts)}
    if trial is not None:
        out.update(engine_changes=len(engine_trace) - 1, engine_trace=engine_trace, engine_final=engine,
                   trials=trial.summary())
    return out


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
    ap.add_argument("--engines", default="none", help="comma list: with two or more, engine trials as monitor "
                    "--target-engines runs them, over the curves cached for each (bench/closed_loop.py --engine); "
                    "the first is the one the capture starts with")
    ap.add_argument("--synthetic", default=None, metavar="NAME:FACTOR",
                    help="an engine NAME (usable in --engines) made of none's cached curves with bits x FACTOR and the "
                         "same agreement: what a trial should find, to measure how often it does")
    ap.add_argument("--trial-window", type=float, default=TRIAL_DEFAULTS["window_s"], help="--engine-trial-window")
    ap.add_argument("--trial-every", type=float, default=TRIAL_DEFAULTS["every_s"], help="--engine-trial-every")
    ap.add_argument("--trial-cycles", type=int, default=TRIAL_DEFAULTS["cycles"], help="--engine-trial-cycles")
    ap.add_argument("--trial-margin", type=float, default=TRIAL_DEFAULTS["margin"], help="--engine-trial-margin")
    ap.add_argument("--trial-early", type=int, default=TRIAL_DEFAULTS["early_cycles"], help="--engine-trial-early")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args()

    try:
        floors = [float(f) for f in args.floor.split(",")]
    except ValueError:
        print(f"closed_loop_sim: --floor takes numbers separated by commas, not {args.floor!r}", file=sys.stderr)
        return 2
    names = [e.strip() for e in args.engines.split(",")]
    synthetic = {}
    if args.synthetic:
        name, _, factor = args.synthetic.partition(":")
        synthetic[name] = {q: (sz * float(factor), ov) for q, (sz, ov) in
                           load_curves(args.clip, args.gop, args.preset).items()}
    engines = {e: synthetic.get(e) or load_curves(args.clip, args.gop, args.preset, e) for e in names}
    missing = [e for e, c in engines.items() if not c]
    if missing:
        print(f"closed_loop_sim: nothing cached for {args.clip} with engine {missing[0]} (run bench/closed_loop.py "
              f"{'' if missing[0] == 'none' else f'--offline-only --engine {missing[0]} '}first)", file=sys.stderr)
        return 2
    common = set.intersection(*(set(c) for c in engines.values()))
    engines = {e: {q: c[q] for q in sorted(common)} for e, c in engines.items()}  # the QPs every engine has
    curves = engines[names[0]]
    cached = min(len(s) for c in engines.values() for s, _ in c.values())
    if args.phases < 1 or args.repeat < 1 or ((args.repeat > 1 or args.phases > 1) and cached % args.gop):
        print(f"closed_loop_sim: --repeat and --phases need N >= 1 and a cached run of whole GOPs ({cached} frames, GOP "
              f"{args.gop})", file=sys.stderr)
        return 2
    rows = [run_floor(args, curves, floor, engines) for floor in floors]
    if args.json:
        Path(args.json).write_text(json.dumps(rows[0] if len(rows) == 1 else {"rows": rows}, indent=1))
    return 0


def run_floor(args, curves: dict, floor: float, engines: dict) -> dict:
    """Simulated runs at one floor (one per phase), against the best fixed QP in hindsight on the same frames (with
    engine trials: the best fixed (engine, QP))."""
    qps = sorted(curves)
    cached = min(len(s) for c in engines.values() for s, _ in c.values())
    trials = None
    if len(engines) > 1:
        trials = TrialSettings(tuple(engines), tuple(engines), every_s=args.trial_every, window_s=args.trial_window,
                               cycles=args.trial_cycles, margin=args.trial_margin, early_cycles=args.trial_early)
    settings = LoopSettings(target=floor, band=args.band, low=args.low or qps[0], high=args.high or qps[-1],
                            step=args.step, min_pairs=args.target_pairs,
                            window=max(LOOP_DEFAULTS["window"], args.target_pairs), memory_s=args.memory, min_seconds=args.target_seconds,
                            min_interval_s=args.interval, share=not args.no_share)
    # every run covers whole plays of the cached frames, so each QP's means over it are those of one play
    holding = [(c[q][0].mean() * 8, e, q) for e, c in engines.items() for q in qps if c[q][1].mean() >= floor]
    best_bits, best_engine, best = min(holding) if holding else (None, None, None)
    best_bits = None if best_bits is None else float(best_bits)
    points = sorted((curves[q][1].mean(), np.log(curves[q][0].mean() * 8)) for q in qps)
    runs = []
    for phase in range(args.phases):
        offset = cached * phase // args.phases // args.gop * args.gop
        r = simulate(curves, settings, args.start_qp, args.fps, args.gop, args.answer_frames, repeat=args.repeat,
                     offset=offset, trials=trials, engines=engines)
        # the fixed-QP curve at the quality the loop reached: log bits interpolated in overlap between cached QPs
        same = float(np.exp(np.interp(r["overlap"], [p[0] for p in points], [p[1] for p in points])))
        r.update(offset=offset, held=r["overlap"] >= floor, fixed_bits_at_loop_quality=same,
                 ratio=r["bits_per_frame"] / best_bits if best_bits else None,
                 ratio_at_loop_quality=r["bits_per_frame"] / same)
        runs.append(r)
        print(f"{args.clip}: {'' if args.phases == 1 else f'start at frame {offset}: '}loop "
              f"{r['bits_per_frame']:.0f} bits/frame, overlap {r['overlap']:.3f} (floor {floor}: "
              f"{'held' if r['held'] else 'MISSED'}), {r['changes']} changes; "
              + (f"engine {r['engine_final']} after {r['engine_changes']} engine changes; " if trials else "")
              + (f"best fixed {'' if trials is None else f'{best_engine} '}QP {best}: {best_bits:.0f} bits/frame; "
                 f"ratio {r['ratio']:.2f}; " if best is not None
                 else "no cached QP holds the floor; ")
              + f"a fixed QP reaching the loop's overlap: {same:.0f} bits/frame (ratio {r['ratio_at_loop_quality']:.2f})")
    result = {"floor": floor, "cached_qps": qps, "best_fixed_qp": best, "best_fixed_engine": best_engine,
              "best_fixed_bits_per_frame": best_bits,
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
