"""Operating points: which codec settings the curves are measured at.

As in the reference paper: for each codec, N settings (4 by default) whose *anchor* (codec alone)
mean rate lies under `max_bpp`, spread over the useful range, and the same settings for every
pre-transform so the curves are compared at equal codec settings.

"Useful" is made concrete here: a candidate setting is useful when its anchor mean bpp is at most
`max_bpp` and the recognizer keeps at least `min_accuracy_ratio` (default one half) of the top-1 it
has on the uncompressed images. Below that, accuracy has collapsed and the points only bend the
cubic fit. The N points are then spread evenly in log-bpp between the cheapest and the dearest
useful candidate (nearest candidate to each target, no repeats).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs import CODECS

log = logging.getLogger(__name__)

DEFAULT_MIN_ACCURACY_RATIO = 0.5


def candidate_settings(codec: str) -> tuple[int, ...]:
    """The settings a codec's points are chosen from, lowest rate first; each codec's module lists its own
    (`Codec.candidates`, with the anchor bpp they were measured at)."""
    found = CODECS[codec].candidates
    if not found:
        raise EdgepipeError(f"codec {codec} lists no candidate settings, so it cannot be evaluated")
    return found


@dataclass(frozen=True)
class Candidate:
    quality: int
    bpp: float
    top1: float


def select_points(candidates: list[Candidate], n: int, max_bpp: float, reference_top1: float,
                  min_accuracy_ratio: float = DEFAULT_MIN_ACCURACY_RATIO) -> list[int]:
    """The n settings, ordered by increasing anchor bpp. Raises when fewer than n are useful."""
    if n < 2:
        raise EdgepipeError(f"--points must be at least 2 (a curve), got {n}")
    floor = min_accuracy_ratio * reference_top1
    useful = sorted((c for c in candidates if c.bpp <= max_bpp and c.top1 >= floor), key=lambda c: c.bpp)
    # Equal rates give nothing to fit: keep the first setting of each distinct rate.
    distinct: list[Candidate] = []
    for c in useful:
        if not distinct or c.bpp > distinct[-1].bpp * (1 + 1e-9):
            distinct.append(c)
    if len(distinct) < n:
        seen = ", ".join(f"{c.quality}: {c.bpp:.3f} bpp, top-1 {c.top1:.3f}" for c in sorted(candidates, key=lambda c: c.bpp))
        raise EdgepipeError(
            f"only {len(distinct)} candidate setting(s) under {max_bpp} bpp with top-1 >= {floor:.3f}, "
            f"need {n}: raise --max-bpp or lower --points (candidates: {seen})"
        )
    logs = np.log([c.bpp for c in distinct])
    targets = np.linspace(logs[0], logs[-1], n)
    chosen: list[int] = []
    for t in targets:
        free = [i for i in range(len(distinct)) if i not in chosen]
        chosen.append(min(free, key=lambda i: (abs(logs[i] - t), i)))
    picked = sorted(chosen)
    log.info("points: %s", ", ".join(f"{distinct[i].quality} ({distinct[i].bpp:.3f} bpp)" for i in picked))
    return [distinct[i].quality for i in picked]


def calibration_size(n_images: int, cap: int = 256) -> int:
    """How many images (from the front of the shuffled list) the point selection looks at."""
    return min(n_images, cap)


def spread_ok(bpps: list[float]) -> bool:
    """True when the rates are strictly increasing (a usable curve)."""
    return all(b > a for a, b in zip(bpps, bpps[1:])) and all(math.isfinite(b) for b in bpps)
