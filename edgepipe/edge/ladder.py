"""The operating-point ladder (issue 14 item 3): `capture --ladder hevc:27,32,37,42 --ab none,ours` cycles the
codec's setting and the pre-transform per GOP, so one camera draws the rate-accuracy curve of its own scene and a
monitor can compare the pre-transforms on it (server/live_rd.py).

The operating points are the cartesian product of the settings and the engines, settings outer, engines inner,
in the order given: (27, none), (27, ours), (32, none), ... Block k of the frames that reach the pre-transform
(a GOP: `--gop` frames; for the still codecs the same number of frames) takes point k mod the number of points,
so every point recurs, in a fixed order, and the stream's scene is spread evenly across them. Each block starts
with an IDR at its setting (capture.py opens a new stream encoder for it). Without `--ladder` and `--ab` there is
no ladder and the capture is what it was.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs import CODECS, STREAM_CODECS


@dataclass(frozen=True)
class OperatingPoint:
    quality: int  # the codec's setting: HEVC QP, JPEG quality, JPEG 2000 rate x1000
    engine: str   # the pre-transform's spec, as given to --ab (`none`, `ours`, a model file)


@dataclass(frozen=True)
class Ladder:
    codec: str
    qualities: tuple[int, ...]
    engines: tuple[str, ...]
    block: int  # frames per operating point in each turn: the GOP

    @property
    def points(self) -> tuple[OperatingPoint, ...]:
        return tuple(OperatingPoint(q, e) for q in self.qualities for e in self.engines)

    def index(self, n: int) -> int:
        """The point of the n-th frame (from 0) that reaches the pre-transform."""
        return (n // self.block) % (len(self.qualities) * len(self.engines))

    def describe(self) -> str:
        return (f"{self.codec} {CODECS[self.codec].setting.meaning} {','.join(map(str, self.qualities))} x engines "
                f"{','.join(self.engines)}: {len(self.points)} operating points, {self.block} frame(s) each in turn")


def parse_ladder(spec: str) -> tuple[str, tuple[int, ...]]:
    """`CODEC:Q1,Q2,...` -> (codec, settings), each setting in the codec's range; one line when it is not."""
    codec, sep, values = spec.partition(":")
    codec = codec.strip()
    if not sep or not codec or not values.strip():
        raise EdgepipeError(f"--ladder {spec!r}: give CODEC:Q1,Q2,..., e.g. hevc:27,32,37,42")
    if codec not in STREAM_CODECS:
        raise EdgepipeError(f"--ladder {spec!r}: unknown codec {codec!r}; a capture sends one of "
                            f"{', '.join(STREAM_CODECS)}")
    qualities = []
    for word in values.split(","):
        try:
            q = int(word.strip())
        except ValueError:
            raise EdgepipeError(f"--ladder {spec!r}: {word.strip()!r} is not a whole number") from None
        try:
            CODECS[codec].setting.check(codec, q)
        except EdgepipeError as exc:
            raise EdgepipeError(f"--ladder {spec!r}: {exc}") from None
        qualities.append(q)
    if len(set(qualities)) != len(qualities):
        raise EdgepipeError(f"--ladder {spec!r}: a setting is given twice")
    return codec, tuple(qualities)


def parse_ab(spec: str) -> tuple[str, ...]:
    """`ENGINE,ENGINE,...` -> the pre-transform specs (each loaded once at start: a wrong one fails there)."""
    engines = tuple(word.strip() for word in spec.split(","))
    if not spec.strip() or any(not e for e in engines):
        raise EdgepipeError(f"--ab {spec!r}: give pre-transforms separated by commas, e.g. none,ours")
    if len(set(engines)) != len(engines):
        raise EdgepipeError(f"--ab {spec!r}: a pre-transform is given twice")
    return engines


def make_ladder(ladder: str | None, ab: str | None, codec: str, qp: int | None, crf: float | None, engine: str,
                gop: int) -> Ladder | None:
    """The capture's ladder from its settings, or None without --ladder and --ab. --ladder's codec must be the
    capture's (the command sets --codec from it when --codec is not given); --ab alone cycles the engines at
    --qp."""
    if not ladder and not ab:
        return None
    if crf is not None:
        raise EdgepipeError("--crf and --ladder/--ab are exclusive: a ladder steps fixed settings (QP, quality)")
    if ladder:
        ladder_codec, qualities = parse_ladder(ladder)
        if ladder_codec != codec:
            raise EdgepipeError(f"--ladder {ladder!r} is for {ladder_codec}, but --codec is {codec}: give one codec")
    else:
        if qp is None:
            raise EdgepipeError("--ab without --ladder cycles the engines at --qp: give --qp")
        qualities = (int(qp),)
    engines = parse_ab(ab) if ab else (engine,)
    return Ladder(codec, qualities, engines, block=max(1, gop))


def load_engines(specs: tuple[str, ...], threads=None) -> dict:
    """Each engine of the ladder loaded once, by spec; the ones already loaded are closed when one fails."""
    from edgepipe.engines import load_engine

    engines: dict = {}
    try:
        for spec in specs:
            engines[spec] = load_engine(spec, threads)
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines
