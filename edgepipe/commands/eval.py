"""`edgepipe eval`: accuracy-vs-bpp curves and BD-Rate(accuracy) tables, as in Suzuki et al., ICIP 2019."""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import click

from edgepipe.engines import describe_specs
from edgepipe.media.codecs import CODECS, STILL_CODECS
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS, VIEWS

log = logging.getLogger(__name__)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command("eval")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Labelled folder ROOT/<synset>/*.JPEG.")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True,
              help="Frozen recognizer (vgg16 needs --weights).")
@click.option("--weights", default=None, type=click.Path(dir_okay=False), help="Recognizer weights (vgg16 needs them).")
@click.option("--pre", "pre", default="none,tvl1", show_default=True,
              help=f"Comma list of pre-transforms, each {describe_specs()}.")
@click.option("--codec", "codec", default="jpeg,jpeg2000,hevc", show_default=True,
              help="Comma list of " + ", ".join(f"{name} [{CODECS[name].title}]" for name in STILL_CODECS) + ".")
@click.option("--points", default=4, show_default=True, type=int, help="Operating points per codec (paper: 4; 6 as a robustness check).")
@click.option("--max-bpp", default=1.0, show_default=True, type=float, help="Anchor mean rate ceiling for the points.")
@click.option("--limit", default=None, type=int, help="Only the first N images of the fixed shuffled order.")
@click.option("--jobs", default=2, show_default=True, type=int, help="Worker processes (1 thread each).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (cache lives in OUT/cache).")
@click.option("--recognizer-view", type=click.Choice(VIEWS), default="native", show_default=True,
              help="What the recognizer sees: each image as it is (datasets prepared at 224), its centre square "
                   "at 224, or square tiles with probabilities averaged (the monitor's choices).")
@click.option("--cached-only", is_flag=True, help="Compute nothing: report the largest run the cache completes.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def evaluate(data, recognizer, weights, pre, codec, points, max_bpp, limit, jobs, out, recognizer_view, cached_only,
             no_progress):
    """Accuracy vs bpp for each pre-transform and codec, and BD-Rate(accuracy) against the codec alone."""
    from edgepipe.evaluation.report import write_all
    from edgepipe.evaluation.runner import Runner

    command = "edgepipe eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else "edgepipe eval"
    started = time.time()
    runner = Runner(data, recognizer, weights, _split(pre), _split(codec), points=points, max_bpp=max_bpp,
                    limit=limit, jobs=jobs, out=out, cached_only=cached_only, progress=not no_progress,
                    view=recognizer_view)
    ev = runner.run()
    paths = write_all(ev, Path(out), command)
    meta = {
        "command": command, "images": ev.n_images, "skipped": ev.n_skipped, "points": ev.points,
        "pre": {p.label: p.identity for p in ev.pres}, "seconds": round(time.time() - started, 1),
        "computed_tasks": ev.computed_tasks, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (Path(out) / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    click.echo(f"{ev.n_images} images ({ev.n_skipped} skipped), {meta['seconds']} s; "
               f"points {ev.points}; wrote {', '.join(str(p) for p in paths.values())}")
