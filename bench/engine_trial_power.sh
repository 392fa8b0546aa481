#!/bin/bash
# How often engine trials (monitor --target-engines, its defaults) find a better engine, and how often they switch
# to one that is not: bench/closed_loop_sim.py on the cached camera-clip curves, 20-minute runs from 8 starts,
# with synthetic engines made of the codec alone's curves (same agreement): "same" (bits x 1.0) and "cheaper"
# (bits x 0.8). Writes bench/results/engine_trial_sim.json.
set -e
cd "$(dirname "$0")/.."
out=runs/engine_trial_power
mkdir -p "$out"
for engines in none,same none,cheaper cheaper,none; do
  synthetic=cheaper:0.8
  case $engines in *same*) synthetic=same:1.0 ;; esac
  .venv/bin/python bench/closed_loop_sim.py --clip car-detection --fps 12.5 --floor 0.5 --engines "$engines" \
    --synthetic "$synthetic" --phases 8 --repeat 5 --json "$out/car_${engines/,/_}.json" > /dev/null
  .venv/bin/python bench/closed_loop_sim.py --clip one-by-one-person-detection --floor 0.75 --engines "$engines" \
    --synthetic "$synthetic" --phases 8 --repeat 5 --json "$out/person_${engines/,/_}.json" > /dev/null
done
.venv/bin/python - "$out" <<'PY'
import glob, json, sys
from collections import Counter
out = {}
for path in sorted(glob.glob(f"{sys.argv[1]}/*.json")):
    d = json.load(open(path))
    verdicts = Counter(t["verdict"][:7] for r in d["runs"] for t in r["trials"]["trace"])
    key = path.rsplit("/", 1)[1][:-5]
    out[key] = {"verdicts": dict(verdicts), "ratio_median": d["ratio_median"], "best_fixed_engine": d["best_fixed_engine"],
                "trials": [t for r in d["runs"] for t in r["trials"]["trace"]]}
    print(key, dict(verdicts), round(d["ratio_median"], 3), d["best_fixed_engine"])
command = ("bench/engine_trial_power.sh: bench/closed_loop_sim.py --engines E --synthetic same:1.0|cheaper:0.8 --phases 8 "
           "--repeat 5 (car --fps 12.5 --floor 0.5; person --floor 0.75), monitor --engine-trial-* defaults")
json.dump({"command": command, "results": out}, open("bench/results/engine_trial_sim.json", "w"), indent=1, default=float)
PY
