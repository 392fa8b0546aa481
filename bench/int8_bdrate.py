"""BD-rate of one pre-transform against another from an `edgepipe eval` run: the accuracy cost of the int8 ED.

    nice -n 10 edgepipe eval --data runs/holdout --pre none,runs/int8/ours-fp32.onnx,runs/int8/ours-int8.onnx \\
        --codec jpeg,hevc --jobs 1 --out runs/eval_int8
    .venv/bin/python bench/int8_bdrate.py runs/eval_int8 --anchor ours-fp32 --test ours-int8 \\
        --out bench/results/ed_int8_bdrate.json

eval reports each pre-transform against the codec alone; this compares two of them directly (the anchor's curve
against the test's, per codec, cubic and PCHIP, as eval computes them), with both curves' points.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from edgepipe.core.bdrate import bd_quality, bd_rate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="an `edgepipe eval --out` folder (results.csv, run.json)")
    parser.add_argument("--anchor", required=True, help="pre-transform name as in results.csv (e.g. ours-fp32)")
    parser.add_argument("--test", required=True, help="the other one (e.g. ours-int8)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rows = list(csv.DictReader((args.eval_dir / "results.csv").open()))
    result = {"bench": "int8_bdrate", "eval_dir": str(args.eval_dir), "anchor": args.anchor, "test": args.test,
              "codecs": {}}
    run_json = args.eval_dir / "run.json"
    if run_json.is_file():
        run = json.loads(run_json.read_text())
        result["eval_command"] = run.get("command")
        result["images"] = run.get("n_images", run.get("images"))
    for codec in sorted({r["codec"] for r in rows if r["codec"] != "raw"}):
        curves = {}
        for pre in (args.anchor, args.test):
            points = [r for r in rows if r["pre"] == pre and r["codec"] == codec]
            if not points:
                sys.exit(f"no {codec} points for {pre} in {args.eval_dir / 'results.csv'}")
            curves[pre] = {"setting": [r["quality"] for r in points], "bpp": [float(r["bpp"]) for r in points],
                           "top1": [float(r["top1"]) for r in points]}
        a, t = curves[args.anchor], curves[args.test]
        ra, qa, rt, qt = (np.array(v) for v in (a["bpp"], a["top1"], t["bpp"], t["top1"]))
        result["codecs"][codec] = {
            "bd_rate_cubic_pct": round(bd_rate(ra, qa, rt, qt, method="cubic"), 2),
            "bd_rate_pchip_pct": round(bd_rate(ra, qa, rt, qt, method="pchip"), 2),
            "bd_top1_cubic_pts": round(100 * bd_quality(ra, qa, rt, qt, method="cubic"), 2),
            "bd_top1_pchip_pts": round(100 * bd_quality(ra, qa, rt, qt, method="pchip"), 2),
            "curves": curves,
        }
    bd_csv = args.eval_dir / "bdrate.csv"
    if bd_csv.is_file():  # each against the codec alone, as eval reported it
        result["against_codec_alone"] = [
            {k: r[k] for k in ("pre", "codec", "bd_rate_cubic_pct", "bd_rate_pchip_pct", "bd_rate_pchip_ci95_lo",
                               "bd_rate_pchip_ci95_hi")}
            for r in csv.DictReader(bd_csv.open()) if r["pre"] in (args.anchor, args.test)]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
