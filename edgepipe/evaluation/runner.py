"""Computes the evaluation: pre-transform -> encode -> decode -> classify, per image, cached.

Work is split into tasks of (pre-transform, chunk of CHUNK images, codec settings). A worker
reads the chunk's images once, runs the pre-transform once per image (its output does not depend
on the codec), then encodes/decodes at every requested setting and classifies each decoded batch.
Workers own their classifier and engine with one thread each, so `--jobs 2` keeps both cores busy
without oversubscription, and only small per-image arrays travel back to the main process.

Cache: one .npz per (pre-transform, setting, chunk) under OUT/cache, keyed by a hash of everything
that determines its numbers (image paths and sizes, recognizer and its weights, the pre-transform's
file content or parameters, codec and setting, and CACHE_VERSION). A re-run with the same arguments
recomputes nothing; `--points 6` reuses every setting it shares with a 4-point run; an interrupted
run resumes. Images are visited in a fixed shuffled order and tasks run chunk by chunk, so a run
stopped early has finished a random subset of the data for *every* configuration.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe.core.datasets import LabelledImage, list_labelled_images, read_rgb, source_of
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.fidelity import psnr
from edgepipe.core.files import atomic_path, sha256_file
from edgepipe.engines import EngineThreads, load_engine, parse_spec
from edgepipe.evaluation.config import SCORES
from edgepipe.guidance.guided import GUIDED_CODECS, GuidanceSettings, GuidedPreTransform, is_guided
from edgepipe.media.codecs import CODECS, STILL_CODECS, bits_per_pixel, decode_image, encode_image

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CHUNK = 128
SHUFFLE_SEED = 0
RAW = ("raw", 0)  # pseudo-setting: the pre-transform's output, uncompressed

Setting = tuple[str, int]


# --- pre-transforms ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PreSpec:
    label: str      # name in tables: none, tvl1, ours, ...
    spec: str       # what a worker loads
    identity: str   # what makes its outputs what they are (for the cache key)


def _probe(spec: str, engine) -> None:
    """A pre-transform must run on a small RGB frame and give one of the same shape back, before any work."""
    try:
        probe = np.full((1, 64, 64, 3), 128, np.uint8)
        y = engine.run(probe)
    except EdgepipeError:
        raise
    except Exception as exc:
        raise EdgepipeError(f"{spec} loads but does not run on a 64x64 RGB frame: {str(exc).splitlines()[0][:200]}") from None
    finally:
        engine.close()
    if not isinstance(y, np.ndarray) or y.shape != probe.shape or y.dtype != np.uint8:
        raise EdgepipeError(f"{spec}: a pre-transform must return frames of the input's shape, "
                            f"got {getattr(y, 'shape', None)} for {probe.shape}")


def resolve_pres(specs: Iterable[str]) -> list[PreSpec]:
    """Validate every --pre entry (an engine spec, as `capture --engine` takes) up front: a model that does not
    load or run fails here, in one line.

    The cache identity of a model file is its suffix and content hash; a kind chosen by name (none, tvl1:1.5)
    has no file, and its engine's model_id names its parameters (`tvl1-lam1.5-it100`)."""
    out: list[PreSpec] = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if is_guided(spec):  # no file and no engine: its settings are what make its pictures (and the recognizer)
            out.append(PreSpec(spec, spec, GuidanceSettings.parse(spec).model_id))
            continue
        kind, argument = parse_spec(spec)
        if not kind.suffixes:
            engine = kind.load(argument, EngineThreads.of(None))
            identity = engine.model_id
            _probe(spec, engine)
            out.append(PreSpec(spec, spec, identity))
            continue
        path = Path(argument)
        _probe(str(path), kind.load(str(path), EngineThreads.of(None)))  # EdgepipeError for files that do not load
        out.append(PreSpec(path.stem, str(path.resolve()), f"{path.suffix}:{sha256_file(path)}"))
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise EdgepipeError(f"two pre-transforms share a name: {labels}; rename a model file")
    if "none" not in labels:
        log.info("adding the anchor 'none' (codec alone) that BD-rates are measured against")
        out.insert(0, PreSpec("none", "none", "none"))
    return out


def check_codecs(codecs: Iterable[str]) -> list[str]:
    """The still codecs named, each checked usable in this build by coding a small probe image."""
    out = []
    for c in codecs:
        c = c.strip().lower()
        if not c:
            continue
        codec = CODECS[c]  # an unknown name: one line listing the codecs
        if not codec.still:
            raise EdgepipeError(f"codec {c} does not code single images; choose from {', '.join(STILL_CODECS)}")
        codec.check_available()
        probe = np.zeros((64, 64, 3), np.uint8)
        try:
            codec.decode(codec.encode(probe, codec.default_setting, None), 64, 64)
        except EdgepipeError:
            raise
        except Exception as exc:
            raise EdgepipeError(f"codec {c} is not usable in this build: {exc}") from None
        out.append(c)
    if not out:
        raise EdgepipeError("no codec given")
    return list(dict.fromkeys(out))


# --- data ---------------------------------------------------------------------------------------

def ordered_images(data: str | Path, limit: int | None = None) -> list[LabelledImage]:
    """All labelled images in a fixed shuffled order (seeded), the first `limit` of them when given."""
    items = list_labelled_images(data)
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(items))
    items = [items[i] for i in order]
    if limit is not None:
        if limit < 1:
            raise EdgepipeError(f"--limit must be positive, got {limit}")
        items = items[:limit]
    return items


def chunks_of(items: list[LabelledImage], size: int | None = None) -> list[list[LabelledImage]]:
    size = size or CHUNK
    return [items[i:i + size] for i in range(0, len(items), size)]


def _chunk_id(chunk: list[LabelledImage]) -> str:
    h = hashlib.sha256()
    for it in chunk:
        try:
            size = it.path.stat().st_size
        except OSError:
            size = -1
        h.update(f"{it.path.parent.name}/{it.path.name}:{size}:{it.label}\n".encode())
    return h.hexdigest()[:20]


# --- per-image results ----------------------------------------------------------------------------

@dataclass
class Result:
    """Per-image numbers for one (pre-transform, setting, chunk); NaN / -1 where the image was skipped."""
    bpp: np.ndarray
    psnr: np.ndarray
    correct: np.ndarray  # int8: 1 right, 0 wrong, -1 skipped (unreadable)
    # the same, top-1 taken among `among_classes` only; None in caches written before --score existed
    correct_among: np.ndarray | None = None
    among_classes: np.ndarray | None = None

    def save(self, path: Path) -> None:
        extra = {} if self.correct_among is None else {"correct_among": self.correct_among,
                                                       "among_classes": self.among_classes}
        with atomic_path(path, suffix=".tmp.npz") as tmp:  # an interrupted run never leaves half a file
            np.savez(tmp, bpp=self.bpp, psnr=self.psnr, correct=self.correct, **extra)

    @classmethod
    def load(cls, path: Path) -> Result:
        with np.load(path) as z:
            if "correct_among" in z:
                return cls(z["bpp"], z["psnr"], z["correct"], z["correct_among"], z["among_classes"])
            return cls(z["bpp"], z["psnr"], z["correct"])

    def scored(self, score: str) -> Result:
        """This result with `correct` holding the answers `score` counts (SCORES)."""
        if score == "top1":
            return self
        if self.correct_among is None:
            raise EdgepipeError("internal: a cached result without top-1 among labels was not recomputed")
        return Result(self.bpp, self.psnr, self.correct_among)


class _Worker:
    """Everything a process needs to run tasks: its classifier and the pre-transform engines."""

    def __init__(self, recognizer: str, weights: str | None, threads: int | None, view: str = "native"):
        from edgepipe.recognition import Classifier

        self.threads = threads
        self.classifier = Classifier(recognizer, weights=weights, threads=threads, batch_size=32, view=view)
        self.recognizer, self.weights = recognizer, weights
        self.engines: dict[str, object] = {}

    def engine(self, spec: str):
        if spec not in self.engines:
            self.engines[spec] = load_engine(spec, self.threads)
        return self.engines[spec]

    @staticmethod
    def batch_size(spec: str) -> int:
        """Frames per run() call: what the engine's kind prefers (TV-L1: one, cache-sized; models: batches)."""
        return parse_spec(spec)[0].preferred_batch

    def _by_shape(self, images: list[np.ndarray | None]) -> dict[tuple, list[int]]:
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            if im is not None:
                groups.setdefault(im.shape, []).append(i)
        return groups

    def _guided(self, spec: str, images: list[np.ndarray | None], setting: Setting) -> list[np.ndarray | None]:
        """The guided pictures for one codec setting: the recognizer the evaluation scores with guides them."""
        if setting == RAW:  # nothing to guide towards: uncoded, the pictures are the originals
            return images
        if spec not in self.engines:
            self.engines[spec] = GuidedPreTransform(GuidanceSettings.parse(spec), self.recognizer, self.weights,
                                                    self.threads)
        guide = self.engines[spec]
        return self._apply(spec, images, lambda frames: guide.run(frames, *setting), guide.settings.batch)

    def _pretransform(self, spec: str, images: list[np.ndarray | None]) -> list[np.ndarray | None]:
        if spec == "none":
            return images
        return self._apply(spec, images, self.engine(spec).run, self.batch_size(spec))

    def _apply(self, spec: str, images: list[np.ndarray | None], run: Callable[[np.ndarray], np.ndarray],
               batch: int) -> list[np.ndarray | None]:
        """run() over the images, `batch` frames of one size at a time; each output checked against its input."""
        out: list[np.ndarray | None] = [None] * len(images)
        for shape, idx in self._by_shape(images).items():
            for s in range(0, len(idx), batch):
                part = idx[s:s + batch]
                y = run(np.stack([images[i] for i in part]))
                if y.shape != (len(part),) + shape or y.dtype != np.uint8:
                    raise EdgepipeError(f"pre-transform {spec} returned {y.dtype} {y.shape} for {shape} frames")
                for j, i in enumerate(part):
                    out[i] = y[j]
        return out

    def _classify(self, frames: list[np.ndarray | None], labels: list[int],
                  among: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per frame: is the top-1 right over all classes, and among the classes `among` only (-1: skipped)."""
        correct = np.full(len(frames), -1, np.int8)
        correct_among = np.full(len(frames), -1, np.int8)
        for idx in self._by_shape(frames).values():
            logits = self.classifier.logits(np.stack([frames[i] for i in idx]))
            truth = np.asarray([labels[i] for i in idx])
            correct[idx] = (logits.argmax(1) == truth).astype(np.int8)
            correct_among[idx] = (among[logits[:, among].argmax(1)] == truth).astype(np.int8)
        return correct, correct_among

    def run(self, spec: str, paths: list[str], labels: list[int], settings: list[Setting],
            among: np.ndarray) -> dict[Setting, Result]:
        originals = [read_rgb(p) for p in paths]
        for p, im in zip(paths, originals):
            if im is None:
                log.warning("unreadable image skipped: %s", p)
        guided = is_guided(spec)
        pre = originals if guided else self._pretransform(spec, originals)
        results: dict[Setting, Result] = {}
        n = len(paths)
        for codec, quality in settings:
            if guided:  # a picture of its own for each setting
                pre = self._guided(spec, originals, (codec, quality))
            bpp = np.full(n, np.nan)
            quality_db = np.full(n, np.nan)
            decoded: list[np.ndarray | None] = [None] * n
            for i, (orig, x) in enumerate(zip(originals, pre)):
                if x is None:
                    continue
                h, w = x.shape[:2]
                if (codec, quality) == RAW:
                    y = x
                    bpp[i] = 24.0
                else:
                    # threads=1: one encoder per worker; the same bitstream whatever --jobs is
                    data = encode_image(codec, x, quality, threads=1)
                    bpp[i] = bits_per_pixel(len(data), w, h)
                    y = decode_image(codec, data, w, h)
                    if y.shape != x.shape:
                        raise EdgepipeError(f"{codec} decoded {paths[i]} as {y.shape}, expected {x.shape}")
                quality_db[i] = psnr(orig, y)  # against the original, i.e. the pre-transform's input
                decoded[i] = y
            correct, correct_among = self._classify(decoded, labels, among)
            results[(codec, quality)] = Result(bpp, quality_db, correct, correct_among, among)
        return results


_WORKER: _Worker | None = None


def _init_worker(recognizer: str, weights: str | None, threads: int | None, view: str = "native") -> None:
    global _WORKER
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)
    import cv2

    cv2.setNumThreads(threads or 0)
    _WORKER = _Worker(recognizer, weights, threads, view)


def _run_task(task: tuple) -> tuple:
    key, spec, paths, labels, settings, among = task
    assert _WORKER is not None
    return key, len(paths), _WORKER.run(spec, paths, labels, settings, among)


# --- the run ------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """Everything the report needs; arrays are per image over the evaluated set."""
    pres: list[PreSpec]
    codecs: list[str]
    points: dict[str, list[int]]
    candidates: dict[str, list]          # codec -> list[points.Candidate] measured on the calibration set
    calibration_images: int
    max_bpp: float
    n_images: int                        # readable images in the evaluated set
    n_skipped: int                       # unreadable ones
    results: dict[tuple[str, str, int], Result] = field(default_factory=dict)  # (pre label, codec, q)
    seconds: float = 0.0
    computed_tasks: int = 0
    sources: list[str] | None = None     # per image, the photo it shows (core.datasets.source_of): views share one
    score: str = "top1"                  # what `correct` counts (SCORES)
    among_classes: int = 0               # how many classes top1-among-labels chose among


class Runner:
    def __init__(self, data: str | Path, recognizer: str, weights: str | None, pres: list[str],
                 codecs: list[str], points: int = 4, max_bpp: float = 1.0, limit: int | None = None,
                 jobs: int = 2, out: str | Path = "eval-out", cached_only: bool = False,
                 progress: bool = True, view: str = "native", score: str = "top1"):
        from edgepipe.recognition import RECOGNIZER_REGISTRY, VIEWS

        RECOGNIZER_REGISTRY[recognizer]  # an unknown name: one line listing the recognizers
        if weights is not None and not Path(weights).is_file():
            raise EdgepipeError(f"weight file not found: {weights}")
        if not max_bpp > 0:
            raise EdgepipeError(f"--max-bpp must be positive, got {max_bpp}")
        if jobs < 1:
            raise EdgepipeError(f"--jobs must be at least 1, got {jobs}")
        if view not in VIEWS:
            raise EdgepipeError(f"unknown recognizer view {view!r}; choose one of {', '.join(VIEWS)}")
        if score not in SCORES:
            raise EdgepipeError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        self.view, self.score = view, score
        self.codecs = check_codecs(codecs)
        self.pres = resolve_pres(pres)
        if any(is_guided(p.spec) for p in self.pres):
            unguided = [c for c in self.codecs if c not in GUIDED_CODECS]
            if unguided:
                raise EdgepipeError(f"the guided pre-transform has no model of {', '.join(unguided)}; "
                                    f"it guides {', '.join(GUIDED_CODECS)}")
            if view != "native":  # it optimises what the recognizer sees of the whole picture
                raise EdgepipeError("the guided pre-transform is guided by the recognizer seeing each picture "
                                    f"whole; use --recognizer-view native, not {view}")
        self.items = ordered_images(data, limit)
        # the label set of the whole folder, so --limit does not change what "among labels" means
        self.among = np.array(sorted({it.label for it in list_labelled_images(data)}), np.int64)
        self.chunks = chunks_of(self.items)
        self.recognizer, self.weights = recognizer, (str(Path(weights).resolve()) if weights else None)
        self.n_points, self.max_bpp, self.jobs = points, max_bpp, jobs
        self.out = Path(out)
        self.cache = self.out / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.cached_only, self.progress = cached_only, progress
        rec_id = f"{recognizer}:{sha256_file(Path(weights)) if weights else 'packaged'}"
        self._base = {"v": CACHE_VERSION, "recognizer": rec_id}
        if view != "native":  # native is what every cache before views holds: its keys stay valid
            self._base["view"] = view
        self._chunk_ids = [_chunk_id(c) for c in self.chunks]
        self._pool = None
        self.computed = 0

    # cache ---------------------------------------------------------------------------------------
    def _path(self, pre: PreSpec, setting: Setting, chunk: int) -> Path:
        key = json.dumps({**self._base, "pre": pre.identity, "codec": setting[0], "q": setting[1],
                          "chunk": self._chunk_ids[chunk], "n": len(self.chunks[chunk])}, sort_keys=True)
        name = f"{pre.label}-{setting[0]}-{setting[1]}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
        return self.cache / name

    def _missing(self, pre: PreSpec, settings: list[Setting], chunk: int) -> list[Setting]:
        return [s for s in settings if not self._cached(self._path(pre, s, chunk))]

    def _cached(self, path: Path) -> bool:
        """A file answers for top-1 over all classes; for top-1 among labels only if it holds that, for this
        folder's label set (caches written before --score lack it and are recomputed once)."""
        if not path.exists():
            return False
        if self.score == "top1":
            return True
        try:
            with np.load(path) as z:
                return "among_classes" in z and np.array_equal(z["among_classes"], self.among)
        except (OSError, ValueError):
            return False

    # execution -----------------------------------------------------------------------------------
    def _executor(self) -> Callable[[list[tuple]], Iterable[tuple]]:
        if self.jobs == 1:
            if _WORKER is None:
                _init_worker(self.recognizer, self.weights, None, self.view)
            return lambda tasks: map(_run_task, tasks)
        if self._pool is None:
            import multiprocessing as mp

            # spawn: the parent may have torch/ORT loaded; forked copies of their thread pools misbehave.
            ctx = mp.get_context("spawn")
            self._pool = ctx.Pool(self.jobs, initializer=_init_worker, initargs=(self.recognizer, self.weights, 1, self.view))
        return lambda tasks: self._pool.imap_unordered(_run_task, tasks, chunksize=1)

    def _compute(self, wanted: list[tuple[PreSpec, list[Setting], int]], desc: str) -> None:
        tasks = []
        for pre, settings, chunk in wanted:
            missing = self._missing(pre, settings, chunk)
            if missing:
                imgs = self.chunks[chunk]
                tasks.append(((pre.label, chunk), pre.spec, [str(i.path) for i in imgs],
                              [i.label for i in imgs], missing, self.among))
        if not tasks:
            return
        if self.cached_only:
            raise EdgepipeError("internal: _compute called in cached-only mode")
        by_label = {p.label: p for p in self.pres}
        total = sum(len(t[2]) for t in tasks)
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="img", disable=not self.progress, smoothing=0.05) as bar:
            for (label, chunk), n, results in self._executor()(tasks):
                for setting, res in results.items():
                    res.save(self._path(by_label[label], setting, chunk))
                self.computed += 1
                bar.update(n)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def _complete_prefix(self, wanted: list[tuple[PreSpec, list[Setting]]], upto: int) -> int:
        """How many of the first `upto` chunks have every (pre-transform, setting) cached."""
        for c in range(upto):
            if any(self._missing(pre, settings, c) for pre, settings in wanted):
                return c
        return upto

    def _gather(self, pre: PreSpec, setting: Setting, chunks: range, score: str = "top1") -> Result:
        parts = [Result.load(self._path(pre, setting, c)).scored(score) for c in chunks]
        return Result(np.concatenate([p.bpp for p in parts]), np.concatenate([p.psnr for p in parts]),
                      np.concatenate([p.correct for p in parts]))

    # the protocol --------------------------------------------------------------------------------
    def run(self) -> Evaluation:
        from edgepipe.evaluation.points import Candidate, calibration_size, candidate_settings, select_points

        t0 = time.time()
        anchor = next(p for p in self.pres if p.label == "none")
        try:
            # 1. operating points from the anchor on the first images of the shuffled list
            n_cal = calibration_size(len(self.items))
            cal_chunks = range(math.ceil(n_cal / CHUNK))
            cal_settings = [(c, q) for c in self.codecs for q in candidate_settings(c)] + [RAW]
            if self.cached_only:
                cal_chunks = range(self._complete_prefix([(anchor, cal_settings)], len(cal_chunks)))
                if not len(cal_chunks):
                    raise EdgepipeError(f"nothing cached in {self.cache} for these arguments")
            # one task per codec and at most 6 settings, so even a single chunk keeps both cores busy
            groups = [[s for s in cal_settings if s[0] == c] for c in self.codecs]
            groups = [g[i:i + 6] for g in groups for i in range(0, len(g), 6)] + [[RAW]]
            self._compute([(anchor, g, c) for c in cal_chunks for g in groups], "choosing operating points")
            raw = self._gather(anchor, RAW, cal_chunks)
            ok = raw.correct >= 0
            ref_top1 = float(raw.correct[ok].mean()) if ok.any() else 0.0
            candidates, points = {}, {}
            for codec in self.codecs:
                cands = []
                for q in candidate_settings(codec):
                    r = self._gather(anchor, (codec, q), cal_chunks)
                    cands.append(Candidate(q, float(np.nanmean(r.bpp[ok])), float(r.correct[ok].mean())))
                candidates[codec] = cands
                points[codec] = select_points(cands, self.n_points, self.max_bpp, ref_top1)
            # 2. every pre-transform at those points (plus uncompressed), chunk by chunk
            settings = [(c, q) for c in self.codecs for q in points[c]] + [RAW]
            chunks = range(len(self.chunks))
            if self.cached_only:
                chunks = range(self._complete_prefix([(p, settings) for p in self.pres], len(self.chunks)))
                if not len(chunks):
                    raise EdgepipeError(f"no chunk of {CHUNK} images is cached for every configuration in {self.cache}")
            wanted = [(pre, settings, c) for c in chunks for pre in self.pres]
            self._compute(wanted, "evaluating")
        finally:
            self.close()
        ev = Evaluation(self.pres, self.codecs, points, candidates, int(ok.sum()), self.max_bpp, 0, 0,
                        score=self.score, among_classes=len(self.among))
        for pre in self.pres:
            for s in settings:  # the operating points above were chosen on top-1 over all classes, whatever the score
                ev.results[(pre.label, s[0], s[1])] = self._gather(pre, s, chunks, self.score)
        ev.sources = [source_of(it.path) for c in chunks for it in self.chunks[c]]  # the results' order
        first = ev.results[("none",) + RAW]
        ev.n_skipped = int((first.correct < 0).sum())
        ev.n_images = int((first.correct >= 0).sum())
        if ev.n_images == 0:
            raise EdgepipeError("no readable image in the evaluated set")
        ev.seconds = time.time() - t0
        ev.computed_tasks = self.computed
        return ev
