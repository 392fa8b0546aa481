#!/bin/bash
# Issue 14: a live run with engine trials. A camera clip replayed in real time, looped, into a monitor that holds
# a top-5 overlap floor of 0.7 and tries `ours` against `none` (short windows, so several trials fit in a run).
#   bench/live_trial.sh                                   # the person clip, 3,600 frames (6 minutes)
#   CLIP=car-detection.mp4 GOP=25 FRAMES=11250 PORT=47821 OUT=runs/live_trial_car bench/live_trial.sh
# Writes $OUT/{monitor.log,capture.log,report.json,stats.json} and $OUT/summary.json (bench/live_trial_summary.py).
cd "$(dirname "$0")/.." || exit 1
CLIP=${CLIP:-one-by-one-person-detection.mp4}; FRAMES=${FRAMES:-3600}; GOP=${GOP:-20}; PORT=${PORT:-47811}
D=tcp://127.0.0.1:$PORT; C=tcp://127.0.0.1:$((PORT + 1)); O=${OUT:-runs/live_trial}; mkdir -p "$O"
.venv/bin/edgepipe monitor --connect "$D" --control "$C" --report "$O/report.json" --idle-timeout 15 --classify-policy all \
  --target-agreement 0.7 --target-engines none,ours --engine-trial-window 10 --engine-trial-cycles 3 \
  --engine-trial-every 60 --target-qp-range 28:40 --status-every 30 > "$O/monitor.log" 2>&1 &
M=$!
sleep 8
.venv/bin/edgepipe -v capture --source "${EDGEPIPE_SHARED_DATA:-../shared/data}/video/$CLIP" --loop --realtime \
  --frames "$FRAMES" --publish "$D" --control "$C" --allow-remote-engine none,ours --engine none --allow-remote-qp 28:40 \
  --qp 34 --gop "$GOP" --reference-every 1 --reference-share 0 --wait-subscriber 30 --stats "$O/stats.json" > "$O/capture.log" 2>&1
wait "$M"
.venv/bin/python bench/live_trial_summary.py "$O" --out "$O/summary.json" \
  --note "$CLIP, realtime, looped, $FRAMES frames, GOP $GOP; monitor --target-agreement 0.7 --target-engines none,ours --engine-trial-window 10 --engine-trial-cycles 3 --engine-trial-every 60 --target-qp-range 28:40"
echo "live trial run written to $O"
