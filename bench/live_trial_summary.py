"""One JSON of a live engine-trial run (bench/live_trial.sh): the monitor's closed loop and engine trials, the
capture's remote-control counts, and the monitor's rows, from the report and stats files the run wrote.

    python bench/live_trial_summary.py runs/live_trial --note "person clip, 3600 frames" --out RESULT.json
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path


def summary(folder: Path, note: str) -> dict:
    report = json.loads((folder / "report.json").read_text())
    stats = json.loads((folder / "stats.json").read_text())
    (stream, loop), = report["closed_loop"].items()  # one camera per run
    trials = loop.pop("engine_trials", {})
    verdicts = [t.get("verdict") for t in trials.get("trace", [])]
    return {
        "command": f"bench/live_trial.sh (see docs/monitor.md): {note}",
        "date": datetime.date.today().isoformat(),
        "stream": stream,
        "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
        "engine_trials": trials,
        "qp_loop": {k: loop[k] for k in ("changes", "counts", "trace") if k in loop},
        "capture": {k: stats.get(k) for k in ("frames_sent", "drops", "remote_engine", "remote_qp", "kbit_s",
                                              "loop_fps", "wall_s")},
        "monitor": {k: report.get(k) for k in ("messages", "decoded", "classified", "lost", "rejects")},
        "monitor_rows": report.get("rows", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = summary(args.folder, args.note)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['stream']}: verdicts {result['verdicts']}, engine requests "
          f"{(result['capture']['remote_engine'] or {}).get('requests')}, frames sent {result['capture']['frames_sent']}")


if __name__ == "__main__":
    main()
