"""How far a coded frame's recognition is from its reference's (issue 14 item 1): four measures per pair, and
their running means with 95 % confidence intervals.

Per pair (the recognizer's top-5 with probabilities of each half):
- `top1_equal`: 1 when the coded frame's top-1 class is the reference's, else 0;
- `top5_overlap`: classes the two top-5 share, / 5 (/ k for a recognizer that gives k < 5);
- `p_reference`: the probability the coded frame gives the reference's top-1 class;
- `kl`: KL(reference || coded) in nats over the union of the two top-5 sets plus one bin for the rest.
A class outside a frame's top-5 has an unknown probability: it is given that frame's leftover mass spread evenly
over the classes outside its top-5 (at most its 5th probability, usually far less). So `p_reference` is exact
when the class is in the coded frame's top-5, and `kl` is a coarse-grained KL, which never exceeds the KL of the
full distributions it estimates. A recognizer without probabilities gives the first two only.

Confidence intervals: the normal approximation over frames, mean +- 1.96 s / sqrt(n) (s the sample standard
deviation), clipped to the measure's range; none below 2 pairs. Frames of a video are correlated, so the
interval is narrower than the truth on a static scene; it is a running figure, cheap at any n.
"""
from __future__ import annotations

import math

import numpy as np

NUM_CLASSES = 1000  # ImageNet
MEASURES = ("top1_equal", "top5_overlap", "p_reference", "kl")
_RANGE = {"top1_equal": (0.0, 1.0), "top5_overlap": (0.0, 1.0), "p_reference": (0.0, 1.0), "kl": (0.0, math.inf)}
_EPS = 1e-9


def _spread(classes: np.ndarray, probs: np.ndarray) -> tuple[dict[int, float], float]:
    """The frame's known probabilities, and the one it gives each class outside its top-k."""
    known = {int(c): float(p) for c, p in zip(classes, probs)}
    rest = max(0.0, 1.0 - sum(known.values()))
    return known, rest / max(1, NUM_CLASSES - len(known))


def agreement(ref_classes, ref_probs, coded_classes, coded_probs) -> dict:
    """The four measures of one pair (p_reference and kl are None without probabilities)."""
    ref_classes, coded_classes = np.asarray(ref_classes), np.asarray(coded_classes)
    k = min(5, len(ref_classes), len(coded_classes))
    shared = len({int(c) for c in ref_classes[:k]} & {int(c) for c in coded_classes[:k]})
    out = {"top1_equal": bool(int(ref_classes[0]) == int(coded_classes[0])),
           "top5_overlap": round(shared / k, 6), "p_reference": None, "kl": None}
    if ref_probs is None or coded_probs is None:
        return out
    ref, ref_other = _spread(ref_classes[:k], ref_probs[:k])
    coded, coded_other = _spread(coded_classes[:k], coded_probs[:k])
    support = sorted(set(ref) | set(coded))
    p = np.array([ref.get(c, ref_other) for c in support] + [0.0])
    q = np.array([coded.get(c, coded_other) for c in support] + [0.0])
    p[-1], q[-1] = max(0.0, 1.0 - p[:-1].sum()), max(0.0, 1.0 - q[:-1].sum())  # the rest, as one bin
    p, q = np.maximum(p, _EPS), np.maximum(q, _EPS)
    p, q = p / p.sum(), q / q.sum()
    out["p_reference"] = round(coded.get(int(ref_classes[0]), coded_other), 6)
    out["kl"] = round(max(0.0, float(np.sum(p * np.log(p / q)))), 6)
    return out


class AgreementStats:
    """Running sums of each measure over pairs: means and 95 % intervals."""

    __slots__ = ("pairs", "_n", "_sum", "_sq")

    def __init__(self):
        self.pairs = 0
        self._n = dict.fromkeys(MEASURES, 0)
        self._sum = dict.fromkeys(MEASURES, 0.0)
        self._sq = dict.fromkeys(MEASURES, 0.0)

    def add(self, measures: dict) -> None:
        self.pairs += 1
        for name in MEASURES:
            value = measures.get(name)
            if value is None:
                continue
            value = float(value)
            self._n[name] += 1
            self._sum[name] += value
            self._sq[name] += value * value

    def mean(self, name: str) -> float | None:
        return self._sum[name] / self._n[name] if self._n[name] else None

    def ci95(self, name: str) -> list[float] | None:
        n = self._n[name]
        if n < 2:
            return None
        mean = self._sum[name] / n
        var = max(0.0, (self._sq[name] - n * mean * mean) / (n - 1))
        half = 1.96 * math.sqrt(var / n)
        lo, hi = _RANGE[name]
        return [round(max(lo, mean - half), 5), round(min(hi, mean + half), 5)]

    def summary(self) -> dict:
        out: dict = {"pairs": self.pairs}
        for name in MEASURES:
            mean = self.mean(name)
            out[name] = {"mean": None if mean is None else round(mean, 5), "ci95": self.ci95(name)}
        return out
