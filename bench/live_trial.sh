#!/bin/bash
# Issue 14: a live run with engine trials. The person clip replayed in real time, looped, into a monitor that
# holds a top-5 overlap floor of 0.7 and tries `ours` against `none` (short windows so trials fit in 6 minutes).
cd "$(dirname "$0")/.." || exit 1
D=tcp://127.0.0.1:47811; C=tcp://127.0.0.1:47812; O=${OUT:-runs/live_trial}; mkdir -p "$O"
.venv/bin/edgepipe monitor --connect "$D" --control "$C" --report "$O/report.json" --idle-timeout 15 --classify-policy all \
  --target-agreement 0.7 --target-engines none,ours --engine-trial-window 10 --engine-trial-cycles 3 \
  --engine-trial-every 60 --target-qp-range 28:40 --status-every 30 > "$O/monitor.log" 2>&1 &
M=$!
sleep 8
.venv/bin/edgepipe -v capture --source "${EDGEPIPE_SHARED_DATA:-../shared/data}/video/one-by-one-person-detection.mp4" --loop --realtime \
  --frames 3600 --publish "$D" --control "$C" --allow-remote-engine none,ours --engine none --allow-remote-qp 28:40 \
  --qp 34 --gop 20 --reference-every 1 --reference-share 0 --wait-subscriber 30 --stats "$O/stats.json" > "$O/capture.log" 2>&1
wait "$M"
echo "live trial run written to $O"
