"""What `edgepipe eval` is asked to do: EvalSettings, one field per setting, each carrying its flag and help.

The command's options are made from these fields (commands/eval.py), and `evaluate()` runs them: a new setting
is one field here and its use in the runner. Nothing heavy at import: the command's --help runs without the
recognizer or the codecs' work.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.options import flag
from edgepipe.engines import describe_specs
from edgepipe.media.codecs import CODECS, STILL_CODECS
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS, VIEWS

# What counts as right (`--score`): top-1 over the recognizer's 1000 classes, or top-1 among the classes the data's
# labels use. On Imagenette most 1000-way errors are answers outside its 10 classes, so a pre-transform can raise
# the first by moving the recognizer's belief onto those classes, which gains nothing on photos of other things;
# the second it cannot raise that way. The runner computes both in one pass and caches them side by side.
SCORES = ("top1", "top1-among-labels")


def setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


def _split(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """'none, tvl1,' -> ('none', 'tvl1'): the flags' comma lists (a tuple is kept as it is)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


@dataclass
class EvalSettings:
    data: str = field(metadata=flag(path="dir", help="Labelled folder ROOT/<synset>/*.JPEG."))
    out: str = field(metadata=flag(path="dir", help="Output folder (cache lives in OUT/cache)."))
    recognizer: str = setting(DEFAULT_RECOGNIZER, choices=RECOGNIZERS,
                              help="Frozen recognizer (vgg16 needs --weights).")
    weights: str | None = setting(None, path="file", help="Recognizer weights (vgg16 needs them).")
    # the flags' comma lists, split here
    pre: tuple[str, ...] = setting(("none", "tvl1"), type=str,
                                   help=f"Comma list of pre-transforms, each {describe_specs()}; or "
                                        "guided[:STEPS[@PSNR_DB]]: each picture optimised for each codec setting by "
                                        "the recognizer (docs/guided.md; default 8 steps, 30 dB).")
    codec: tuple[str, ...] = setting(("jpeg", "jpeg2000", "hevc"), type=str,
                                     help="Comma list of " + ", ".join(f"{name} [{CODECS[name].title}]"
                                                                       for name in STILL_CODECS) + ".")
    points: int = setting(4, help="Operating points per codec (paper: 4; 6 as a robustness check).")
    max_bpp: float = setting(1.0, help="Anchor mean rate ceiling for the points.")
    limit: int | None = setting(None, help="Only the first N images of the fixed shuffled order.")
    jobs: int = setting(2, help="Worker processes (1 thread each).")
    recognizer_view: str = setting("native", choices=VIEWS,
                                   help="What the recognizer sees: each image as it is (datasets prepared at 224), "
                                        "its centre square at 224, or square tiles with probabilities averaged (the "
                                        "monitor's choices).")
    score: str = setting("top1", choices=SCORES,
                         help="What counts as right: top-1 over the recognizer's 1000 classes, or top-1 among the "
                              "classes the data's labels use (Imagenette: 10), which a pre-transform cannot raise by "
                              "moving the recognizer's belief onto those classes. Operating points are chosen on the "
                              "first either way; both are cached in one pass.")
    compare_to: str | None = setting(None, metavar="NAME",
                                     help="Also compare every pre-transform with this one (its name in the tables, "
                                          "e.g. ours or a model file's stem), paired on the same images: "
                                          "OUT/bdrate_vs_NAME.csv and a section of results.md.")
    cached_only: bool = setting(False, help="Compute nothing: report the largest run the cache completes.")
    progress: bool = setting(True, "--no-progress", invert=True, help="No progress bar.")

    def __post_init__(self) -> None:
        self.pre = _split(self.pre)
        self.codec = _split(self.codec)


def evaluate(settings: EvalSettings, command: str) -> str:
    """Run the evaluation, write its reports and OUT/run.json (`command`: how it was asked for, recorded
    there); returns the one-line summary."""
    from edgepipe.evaluation.report import write_all
    from edgepipe.evaluation.runner import Runner

    s = settings
    started = time.time()
    runner = Runner(s.data, s.recognizer, s.weights, list(s.pre), list(s.codec), points=s.points,
                    max_bpp=s.max_bpp, limit=s.limit, jobs=s.jobs, out=s.out, cached_only=s.cached_only,
                    progress=s.progress, view=s.recognizer_view, score=s.score)
    labels = [p.label for p in runner.pres]
    if s.compare_to is not None and s.compare_to not in labels:
        raise EdgepipeError(f"--compare-to {s.compare_to}: not one of the pre-transforms ({', '.join(labels)})")
    if s.compare_to == "none":
        raise EdgepipeError("--compare-to none: every BD-rate is already against the codec alone")
    ev = runner.run()
    paths = write_all(ev, Path(s.out), command, s.compare_to)
    meta = {
        "command": command, "images": ev.n_images, "skipped": ev.n_skipped, "points": ev.points, "score": ev.score,
        "pre": {p.label: p.identity for p in ev.pres}, "seconds": round(time.time() - started, 1),
        "computed_tasks": ev.computed_tasks, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (Path(s.out) / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    return (f"{ev.n_images} images ({ev.n_skipped} skipped), {meta['seconds']} s; "
            f"points {ev.points}; wrote {', '.join(str(p) for p in paths.values())}")
