"""BD-rates of a pre-transform that switches model by QP, from an evaluation's cache (no coding).

The capture knows its QP, so it could run one ED trained for high QPs and another for low ones. This reads
the per-image results `edgepipe eval` cached for both models, builds the switch (the --high model at every
evaluation point with QP >= --switch-qp, the --low model below it), and reports BD-Rate(accuracy) of every
pre-transform and of the switch against the codec alone and against --compare-to, cubic / PCHIP, with the
evaluation's own paired bootstrap (several views of a photo drawn together). Run the evaluation first with
the same --data, --pre and --codec, so every number here is in its cache.

    python bench/qp_switch.py --data runs/holdout_views --out runs/eval_views \\
        --pre none,runs/ft10/final/f2tt.pt,runs/ft17/final/qh.pt,runs/ft17/final/ql.pt \\
        --high qh --low ql --switch-qp 40 --compare-to f2tt --json bench/results/qp_switch_views.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.evaluation.report import bd_table
from edgepipe.evaluation.runner import Evaluation, PreSpec, Runner
from edgepipe.recognition import DEFAULT_RECOGNIZER

SWITCH = "switch"


def with_switch(ev: Evaluation, codec: str, high: str, low: str, switch_qp: int) -> Evaluation:
    """`ev` restricted to `codec`, plus a pre-transform "switch": `high`'s results at every point with
    QP >= switch_qp, `low`'s below it."""
    labels = [p.label for p in ev.pres]
    for name in (high, low):
        if name not in labels:
            raise EdgepipeError(f"{name!r} is not one of the evaluated pre-transforms: {', '.join(labels)}")
    if codec not in ev.codecs:
        raise EdgepipeError(f"codec {codec!r} was not evaluated: {', '.join(ev.codecs)}")
    points = ev.points[codec]
    if all(q >= switch_qp for q in points) or all(q < switch_qp for q in points):
        raise EdgepipeError(f"--switch-qp {switch_qp} puts all of {codec}'s points {points} on one side: "
                            "the switch would be one of the two models")
    results = {k: v for k, v in ev.results.items() if k[1] == codec or k[0] == "none"}
    for q in points:
        results[(SWITCH, codec, q)] = ev.results[(high if q >= switch_qp else low, codec, q)]
    return replace(ev, pres=[*ev.pres, PreSpec(SWITCH, SWITCH, SWITCH)], codecs=[codec],
                   points={codec: points}, results=results)


def _span(row: dict, column: str) -> str:
    lo, hi = row[f"{column}_ci95_lo"], row[f"{column}_ci95_hi"]
    return "[n/a]" if math.isnan(lo) else f"[{lo:+.1f}, {hi:+.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the evaluated folder (as given to edgepipe eval)")
    ap.add_argument("--out", required=True, help="edgepipe eval's --out folder, whose cache is read")
    ap.add_argument("--pre", required=True, help="comma list, as given to edgepipe eval (none first)")
    ap.add_argument("--codec", default="hevc", help="the codec whose QP picks the model (default hevc)")
    ap.add_argument("--high", required=True, help="label of the model used at QP >= --switch-qp")
    ap.add_argument("--low", required=True, help="label of the model used below it")
    ap.add_argument("--switch-qp", type=int, required=True)
    ap.add_argument("--compare-to", default=None, help="a label to compare every other pre-transform against, paired")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)
    try:
        if not Path(args.data).is_dir():
            raise EdgepipeError(f"--data is not a folder: {args.data}")
        if not (Path(args.out) / "cache").is_dir():
            raise EdgepipeError(f"no evaluation cache in {args.out}: run edgepipe eval with --out {args.out} first")
        runner = Runner(args.data, DEFAULT_RECOGNIZER, None, args.pre.split(","), [args.codec],
                        out=args.out, cached_only=True, progress=False)
        ev = with_switch(runner.run(), args.codec, args.high, args.low, args.switch_qp)
    except EdgepipeError as e:
        print(f"qp_switch: {e}", file=sys.stderr)
        return 2
    report = {"data": args.data, "codec": args.codec, "points": ev.points[args.codec], "images": ev.n_images,
              "high": args.high, "low": args.low, "switch_qp": args.switch_qp, "against": {}}
    for anchor in ["none"] + ([args.compare_to] if args.compare_to else []):
        rows = bd_table(ev, anchor)  # the columns of edgepipe eval's bdrate*.csv
        report["against"][anchor] = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                                     for r in rows]  # JSON has no NaN
        print(f"against {anchor} ({args.codec} at {ev.points[args.codec]}, {ev.n_images} images): "
              "BD-rate cubic / PCHIP [PCHIP 95 %], BD-top-1 PCHIP [95 %]")
        for r in rows:
            print(f"  {r['pre']:>8}: {r['bd_rate_cubic_pct']:+6.1f} / {r['bd_rate_pchip_pct']:+6.1f} % "
                  f"{_span(r, 'bd_rate_pchip')}   {r['bd_top1_pchip_pts']:+.2f} pt {_span(r, 'bd_top1_pchip')}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
