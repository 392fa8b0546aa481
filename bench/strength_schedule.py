"""Choose a residual strength per codec setting on some strength sweeps, judge it on others.

Reads the .npz files of bench/strength_sweep.py. For every setting q and strength s, a point
(mean bpp, top-1) is worth how far left of the codec alone's curve (s = 0) it lies: the gain
log R_none(top-1) - log R, with R_none the codec-alone rate at that top-1, interpolated on the
dense grid of settings. The schedule takes, per setting, the strength with the largest gain summed
over the --choose files; then BD-Rate(accuracy) against the codec alone, cubic / PCHIP with a
paired bootstrap interval, is reported on every file at the given points for: each fixed strength,
and the schedule.

    python bench/strength_schedule.py --choose runs/strength/holdout160_hevc.npz,runs/strength/holdout_hevc.npz \
        --judge runs/strength/val_hevc.npz --points 47,43,37,31 --out bench/results/strength_hevc.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgepipe.core.bdrate import compare, paired_bootstrap


def load(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def none_rate_at(z: dict, top1: np.ndarray) -> np.ndarray:
    """log bpp of the codec alone at the given top-1s: a cubic of log rate in top-1 over the dense grid."""
    s0 = int(np.flatnonzero(z["strengths"] == 0)[0])
    logr = np.log(np.nanmean(z["bpp"][s0], axis=1))
    acc = (z["correct"][s0] == 1).mean(axis=1)
    coef = np.polyfit(acc, logr, 3)
    return np.polyval(coef, top1)


def gains(z: dict) -> np.ndarray:
    """(strengths, settings) gain in log rate over the codec alone at equal top-1 (positive = fewer bits)."""
    logr = np.log(np.nanmean(z["bpp"], axis=2))
    acc = (z["correct"] == 1).mean(axis=2)
    return none_rate_at(z, acc) - logr


def choose(files: list[dict], allowed: list[float] | None = None) -> dict[int, float]:
    settings = files[0]["settings"]
    strengths = files[0]["strengths"]
    total = sum(gains(z) for z in files)
    mask = np.ones(len(strengths), bool) if allowed is None else np.isin(strengths, allowed)
    total = np.where(mask[:, None], total, -np.inf)
    return {int(q): float(strengths[int(np.argmax(total[:, j]))]) for j, q in enumerate(settings)}


def curve(z: dict, points: list[int], schedule: dict[int, float], idx=None) -> tuple[list[float], list[float]]:
    rates, accs = [], []
    for q in points:
        j = int(np.flatnonzero(z["settings"] == q)[0])
        a = int(np.flatnonzero(np.isclose(z["strengths"], schedule[q]))[0])
        b = z["bpp"][a, j] if idx is None else z["bpp"][a, j, idx]
        c = z["correct"][a, j] if idx is None else z["correct"][a, j, idx]
        rates.append(float(np.nanmean(b)))
        accs.append(100.0 * float((c == 1).mean()))
    return rates, accs


def _span(ci: list[float] | None) -> str:
    return f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "[none: under 90 % of the resamples fit]"


def bd(z: dict, points: list[int], schedule: dict[int, float], n_boot: int = 200) -> dict:
    anchor = {q: 0.0 for q in points}
    c = compare(*curve(z, points, anchor), *curve(z, points, schedule))
    ci = paired_bootstrap(lambda idx: curve(z, points, anchor, idx), lambda idx: curve(z, points, schedule, idx),
                          z["bpp"].shape[2], n_boot)
    rates, accs = curve(z, points, schedule)
    return {"cubic": c.rate_cubic, "pchip": c.rate_pchip, "ci": ci, "top1_pts_pchip": c.quality_pchip,
            "bpp": rates, "top1": accs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--choose", required=True, help="comma list of sweep .npz files the schedule is chosen on")
    ap.add_argument("--judge", default="", help="comma list of sweep .npz files it is judged on (also reported: --choose)")
    ap.add_argument("--points", required=True, help="comma list of settings (the evaluation's points); or FILE=q,q,... per file")
    ap.add_argument("--allowed", default=None, help="comma list: strengths the schedule may use")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    chosen_on = [p for p in args.choose.split(",") if p]
    judged_on = [p for p in args.judge.split(",") if p]
    files = {p: load(p) for p in chosen_on + judged_on}
    allowed = [float(s) for s in args.allowed.split(",")] if args.allowed else None
    schedule = choose([files[p] for p in chosen_on], allowed)
    points = {}
    for part in args.points.split(";"):
        if "=" in part:
            name, qs = part.split("=", 1)
            points[name] = [int(q) for q in qs.split(",")]
        else:
            points[""] = [int(q) for q in part.split(",")]
    report = {"schedule": schedule, "chosen_on": chosen_on, "results": {}}
    print("schedule (setting: strength):", ", ".join(f"{q}: {s:g}" for q, s in sorted(schedule.items())))
    for path, z in files.items():
        pts = points.get(path, points.get(""))
        rows = {}
        for s in z["strengths"]:
            if s == 0:
                continue
            rows[f"s={s:g}"] = bd(z, pts, {q: float(s) for q in pts})
        rows["schedule"] = bd(z, pts, {q: schedule.get(q, 1.0) for q in pts})
        report["results"][path] = {"points": pts, "rows": rows}
        role = "chosen on" if path in chosen_on else "judged on"
        print(f"\n{path} ({role}; points {pts}; {z['bpp'].shape[2]} images)")
        for name, r in rows.items():
            print(f"  {name:>9}: {r['cubic']:+6.1f} / {r['pchip']:+6.1f} %   "
                  f"PCHIP CI {_span(r['ci']['pchip'])}   "
                  f"top-1 {' '.join(f'{a:.1f}' for a in r['top1'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
