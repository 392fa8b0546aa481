"""Bjøntegaard delta rate and delta quality, by the classic cubic fit (VCEG-M33) and by PCHIP (JCT-VC CTC).

The quality axis is whatever the caller gives: PSNR in dB for the classic metric, top-1 accuracy for
BD-Rate(accuracy). Rates are any positive unit (bpp, kbit/s); only their ratio matters.

- cubic: log rate fitted as a 3rd-order polynomial of quality (least squares; exact through 4 points),
  integrated over the overlap of the two quality ranges (Bjøntegaard, VCEG-M33, 2001).
- pchip: log rate interpolated by piecewise cubic Hermite polynomials through the sorted points and
  integrated exactly (JCTVC-L1100 Excel sheet; the slopes of MATLAB's and SciPy's pchip, written here in numpy).

numpy only, in core: the evaluation's tables and the monitor's live BD-rate (server/live_rd.py) use the same
code, and a monitor installs without SciPy.

Negative BD-rate = the test curve needs fewer bits for the same quality. BD-quality is the mean
quality gain at equal rate over the overlap of the two log-rate ranges.

With accuracy as the quality axis the two fits can disagree even in sign: a pre-transform shifts the
range of accuracies a curve covers and accuracy saturates at high rates, so the integration interval
can be a thin sliver of either curve. `compare` therefore also returns the overlap of the two quality
ranges (as intersection over union) and flags a small one.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("cubic", "pchip")
# Overlap (IoU of the two quality ranges) below which a BD number is flagged as resting on a thin
# slice of the curves. FAU's bd_pchip warns below 0.75; with accuracy curves that fires on almost
# every pre-transform, so the flag here marks the cases where less than half the union is shared.
SMALL_OVERLAP_IOU = 0.5


def _curve(rate, quality) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError(f"rate and quality must be 1-D of equal length, got {r.shape} and {q.shape}")
    if len(r) < 2:
        raise ValueError("a curve needs at least 2 points")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError("rates and qualities must be finite")
    if np.any(r <= 0):
        raise ValueError("rates must be positive (they are compared on a log scale)")
    return r, q


def _mean_over(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Mean of the fitted y(x) over [lo, hi]."""
    if method == "cubic":
        # 4 points: the cubic is the interpolant; more points: least squares, as VCEG-M33's sheet does.
        # Tied qualities leave fewer distinct abscissae: lower the degree rather than fit noise.
        deg = min(3, len(np.unique(x)) - 1)
        # Fit in centred, scaled coordinates: the raw Vandermonde matrix of accuracies ~50..80 is
        # ill-conditioned. The mean over an interval does not change under this affine map.
        c, s = float(np.mean(x)), float(np.std(x)) or 1.0
        prim = np.polyint(np.polyfit((x - c) / s, y, deg))
        a, b = (lo - c) / s, (hi - c) / s
        return float((np.polyval(prim, b) - np.polyval(prim, a)) / (b - a))
    if method == "pchip":
        order = np.argsort(x, kind="stable")
        xs, ys = x[order], y[order]
        if np.any(np.diff(xs) <= 0):
            # PCHIP needs strictly increasing abscissae; tied qualities have no defined interpolant.
            return math.nan
        return _pchip_integral(xs, ys, lo, hi) / (hi - lo)
    raise ValueError(f"unknown BD method {method!r}; choose one of {', '.join(METHODS)}")


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The derivatives at the points of the shape-preserving piecewise cubic Hermite interpolant (Fritsch and
    Butland's weighted harmonic mean inside, the three-point end rule), as SciPy's PchipInterpolator sets them."""
    h = np.diff(x)
    m = np.diff(y) / h
    if len(x) == 2:
        return np.array([m[0], m[0]])
    d = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    flat = (np.sign(m[1:]) != np.sign(m[:-1])) | (m[1:] == 0) | (m[:-1] == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d[1:-1] = np.where(flat, 0.0, (w1 + w2) / (w1 / m[:-1] + w2 / m[1:]))

    def end(h0, h1, m0, m1) -> float:
        e = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(e) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(e) > 3 * abs(m0):
            return 3 * m0
        return e

    d[0] = end(h[0], h[1], m[0], m[1])
    d[-1] = end(h[-1], h[-2], m[-1], m[-2])
    return d


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """The integral over [lo, hi] (inside [x[0], x[-1]]) of the PCHIP interpolant through sorted points."""
    d = _pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        m = (y[k + 1] - y[k]) / h
        c2 = (3 * m - 2 * d[k] - d[k + 1]) / h
        c3 = (d[k] + d[k + 1] - 2 * m) / (h * h)

        def prim(t: float) -> float:  # the antiderivative of y[k] + d t + c2 t^2 + c3 t^3, t = x - x[k]
            return t * (y[k] + t * (d[k] / 2 + t * (c2 / 3 + t * c3 / 4)))

        total += prim(b - x[k]) - prim(a - x[k])
    return float(total)


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return max(a.min(), b.min()), min(a.max(), b.max())


# Above this mean log-rate difference the percentage leaves the float range: a cubic fit through four points on a
# saturating curve can run far off between them (seen on camera clips), which is no rate difference at all.
_MAX_LOG_RATE_DIFF = 700.0


def _runs_away(diff: float) -> bool:
    return not math.isnan(diff) and not abs(diff) < _MAX_LOG_RATE_DIFF


def _log_rate_diff(ra, qa, rt, qt, method: str) -> float:
    lo, hi = _overlap(qa, qt)
    if not hi > lo:
        return math.nan
    return _mean_over(qt, np.log(rt), lo, hi, method) - _mean_over(qa, np.log(ra), lo, hi, method)


def _percent(diff: float) -> float:
    if math.isnan(diff) or _runs_away(diff):
        return math.nan
    return float((math.exp(diff) - 1.0) * 100.0)


def bd_rate(rate_anchor, q_anchor, rate_test, q_test, method: str = "cubic") -> float:
    """Average rate difference in percent at equal quality; NaN when the quality ranges do not overlap or the
    fit runs away (a mean log-rate difference beyond any float percentage)."""
    ra, qa = _curve(rate_anchor, q_anchor)
    rt, qt = _curve(rate_test, q_test)
    return _percent(_log_rate_diff(ra, qa, rt, qt, method))


def bd_quality(rate_anchor, q_anchor, rate_test, q_test, method: str = "cubic") -> float:
    """Average quality difference (test - anchor) at equal rate (BD-PSNR, or BD-accuracy); NaN without overlap."""
    ra, qa = _curve(rate_anchor, q_anchor)
    rt, qt = _curve(rate_test, q_test)
    la, lt = np.log(ra), np.log(rt)
    lo, hi = _overlap(la, lt)
    if not hi > lo:
        return math.nan
    return _mean_over(lt, qt, lo, hi, method) - _mean_over(la, qa, lo, hi, method)


def _monotone(rate: np.ndarray, quality: np.ndarray) -> bool:
    order = np.argsort(rate)
    return bool(np.all(np.diff(quality[order]) > 0))


@dataclass(frozen=True)
class BDComparison:
    rate_cubic: float      # % (negative = bits saved at equal quality)
    rate_pchip: float
    quality_cubic: float   # quality units (accuracy points) gained at equal rate
    quality_pchip: float
    overlap_lo: float      # the quality interval both curves cover
    overlap_hi: float
    overlap_iou: float     # that interval over the union of both ranges; 0 when disjoint
    small_overlap: bool
    notes: tuple[str, ...]


def compare(rate_anchor, q_anchor, rate_test, q_test) -> BDComparison:
    """Both BD methods, both directions, the overlap and why a number may be unreliable."""
    ra, qa = _curve(rate_anchor, q_anchor)
    rt, qt = _curve(rate_test, q_test)
    lo, hi = _overlap(qa, qt)
    union = max(qa.max(), qt.max()) - min(qa.min(), qt.min())
    iou = max(0.0, hi - lo) / union if union > 0 else 0.0
    notes = []
    if not hi > lo:
        notes.append("quality ranges do not overlap: BD-rate undefined")
    elif iou < SMALL_OVERLAP_IOU:
        notes.append(f"small overlap (IoU {iou:.2f})")
    for name, r, q in (("anchor", ra, qa), ("test", rt, qt)):
        if not _monotone(r, q):
            notes.append(f"{name} quality not strictly increasing with rate")
    diffs = {m: _log_rate_diff(ra, qa, rt, qt, m) for m in METHODS}  # NaN without overlap
    values = {}
    for m in METHODS:
        values[f"rate_{m}"] = _percent(diffs[m])
        values[f"quality_{m}"] = bd_quality(ra, qa, rt, qt, m)
    runaway = [m for m in METHODS if _runs_away(diffs[m])]
    if runaway:
        notes.append(f"the {' and '.join(runaway)} fit runs away between the points: BD-rate undefined")
    undefined_by_runaway = {f"rate_{m}" for m in runaway}
    if hi > lo and any(math.isnan(v) for k, v in values.items() if k not in undefined_by_runaway):
        notes.append("tied values: PCHIP undefined")
    return BDComparison(overlap_lo=float(lo), overlap_hi=float(hi), overlap_iou=float(iou),
                        small_overlap=bool(iou < SMALL_OVERLAP_IOU), notes=tuple(notes), **values)


def paired_bootstrap(anchor, test, n: int, n_boot: int = 200, seed: int = 0) -> dict[str, list[float] | None]:
    """95 % intervals of the BD-rate (cubic, pchip) under resampling of n paired samples (images).

    `anchor` and `test` map an index array (or None: all samples) to that curve's (rates, qualities) over the
    drawn samples; one draw serves both curves. An interval resting on fewer than 90 % valid resamples would be
    biased toward the resamples where the fit held: it is None instead."""
    import warnings

    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {m: [] for m in METHODS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            b = compare(*anchor(idx), *test(idx))
            for m in METHODS:
                boots[m].append(getattr(b, f"rate_{m}"))
    out: dict[str, list[float] | None] = {}
    for m, v in boots.items():
        a = np.asarray(v, float)
        a = a[np.isfinite(a)]
        out[m] = [float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))] if len(a) >= 0.9 * n_boot else None
    return out
