"""Outputs of `edgepipe eval`: the curve CSV, the BD table CSV, the markdown tables and the RD plot."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from edgepipe.core.bdrate import compare
from edgepipe.evaluation.runner import RAW, Evaluation
from edgepipe.media.codecs import CODECS

log = logging.getLogger(__name__)


def codec_title(codec: str) -> str:
    """A codec's name in tables and plots, as its module registers it ("JPEG 2000 (rate)")."""
    return CODECS[codec].title


# Suzuki et al., ICIP 2019, BD-Rate(accuracy) in % against the codec alone (cubic fit, VCEG-M33).
PAPER_BD = {
    "ours": {"jpeg": -11.9, "jpeg2000": -17.8, "hevc": -21.5},
    "palacio": {"jpeg": 3.7, "jpeg2000": 15.9, "hevc": 9.5},
    "tvl1": {"jpeg": 0.4, "jpeg2000": 1.3, "hevc": -3.9},
}
# The paper has one JPEG 2000 column; both of our modes are compared with it.
PAPER_CODEC = {"jpeg2000-db": "jpeg2000"}


def paper_bd(pre: str, codec: str) -> float:
    """The paper's BD-rate for this method and codec (NaN when it has none)."""
    return PAPER_BD.get(pre, {}).get(PAPER_CODEC.get(codec, codec), math.nan)


# HEVC ablation: (bypass, TV loss) -> shipped model name, paper BD-rate %. The ED with neither is
# the Palacio+ baseline (same +9.5 % as its HEVC entry above).
ABLATION = {
    (False, False): ("palacio", 9.5),
    (False, True): ("tv_only", -14.7),
    (True, False): ("bypass_only", 4.2),
    (True, True): ("ours", -21.5),
}
CSV_FIELDS = ["pre", "codec", "quality", "bpp", "top1", "psnr_db", "n_images", "n_skipped"]


def curve_rows(ev: Evaluation) -> list[dict]:
    rows = []
    for pre in ev.pres:
        for codec in ev.codecs:
            for q in ev.points[codec]:
                r = ev.results[(pre.label, codec, q)]
                ok = r.correct >= 0
                rows.append({
                    "pre": pre.label, "codec": codec, "quality": q,
                    "bpp": float(np.mean(r.bpp[ok])), "top1": float(np.mean(r.correct[ok])),
                    "psnr_db": float(np.mean(r.psnr[ok])), "n_images": int(ok.sum()),
                    "n_skipped": int((~ok).sum()),
                })
    return rows


def uncompressed_rows(ev: Evaluation) -> list[dict]:
    out = []
    for pre in ev.pres:
        r = ev.results[(pre.label,) + RAW]
        ok = r.correct >= 0
        out.append({"pre": pre.label, "top1": float(np.mean(r.correct[ok])), "psnr_db": float(np.mean(r.psnr[ok]))})
    return out


def bd_rows(rows: list[dict], anchor_pre: str = "none") -> list[dict]:
    """BD-Rate(accuracy) and BD-accuracy of every other pre-transform against `anchor_pre` (the codec alone
    unless asked otherwise), per codec."""
    out = []
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    pres = [p for p in dict.fromkeys(r["pre"] for r in rows) if p != anchor_pre]
    for codec in codecs:
        anchor = sorted((r for r in rows if r["pre"] == anchor_pre and r["codec"] == codec), key=lambda r: r["bpp"])
        for pre in pres:
            test = sorted((r for r in rows if r["pre"] == pre and r["codec"] == codec), key=lambda r: r["bpp"])
            # accuracy in percent: BD-accuracy comes out in percentage points
            c = compare([r["bpp"] for r in anchor], [100 * r["top1"] for r in anchor],
                        [r["bpp"] for r in test], [100 * r["top1"] for r in test])
            out.append({
                "pre": pre, "codec": codec,
                "bd_rate_cubic_pct": c.rate_cubic, "bd_rate_pchip_pct": c.rate_pchip,
                "bd_top1_cubic_pts": c.quality_cubic, "bd_top1_pchip_pts": c.quality_pchip,
                "overlap_lo_pct": c.overlap_lo, "overlap_hi_pct": c.overlap_hi, "overlap_iou": c.overlap_iou,
                "small_overlap": c.small_overlap, "paper_bd_rate_pct": paper_bd(pre, codec),
                "notes": "; ".join(c.notes),
            })
    return out


def _views_note(ev: Evaluation) -> str:
    photos = len(set(ev.sources or ()))
    return f" ({photos} photos, several views each; intervals draw photos)" if ev.sources and photos < len(ev.sources) else ""


def _photo_draw(ok: np.ndarray, sources: list[str] | None):
    """A function rng -> image indices of one bootstrap resample: readable images drawn with replacement,
    or, where several images are views of one photo, photos drawn with replacement, each with all its views."""
    idx_ok = np.flatnonzero(ok)
    if sources is None or len(set(sources[i] for i in idx_ok)) == len(idx_ok):  # one image per photo
        return lambda rng: rng.choice(idx_ok, size=len(idx_ok), replace=True)
    groups: dict[str, list[int]] = {}
    for i in idx_ok:
        groups.setdefault(sources[i], []).append(int(i))
    members = [np.asarray(v) for v in groups.values()]
    return lambda rng: np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])


def bootstrap_bd(ev: Evaluation, n_boot: int = 200, seed: int = 0,
                 anchor_pre: str = "none") -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """95 % intervals of the BD numbers under resampling of the images (paired: one resample of the
    image set serves every curve), i.e. how much of a BD-rate is just which images were drawn. Several views
    of one photo (`ev.sources`) are drawn together, as one sample. Keys of each entry: "cubic" and "pchip"
    (BD-rate), "top1_pchip" (BD-top-1 points)."""
    import warnings

    ok = ev.results[("none",) + RAW].correct >= 0
    draw = _photo_draw(ok, ev.sources)
    rng = np.random.default_rng(seed)
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    for _ in range(n_boot):
        idx = draw(rng)
        rows = []
        for pre in ev.pres:
            for codec in ev.codecs:
                for q in ev.points[codec]:
                    r = ev.results[(pre.label, codec, q)]
                    rows.append({"pre": pre.label, "codec": codec, "bpp": float(r.bpp[idx].mean()),
                                 "top1": float(r.correct[idx].mean())})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in bd_rows(rows, anchor_pre):
                d = samples.setdefault((b["pre"], b["codec"]), {"cubic": [], "pchip": [], "top1_pchip": []})
                d["cubic"].append(b["bd_rate_cubic_pct"])
                d["pchip"].append(b["bd_rate_pchip_pct"])
                d["top1_pchip"].append(b["bd_top1_pchip_pts"])
    out = {}
    for key, d in samples.items():
        out[key] = {}
        for m, v in d.items():
            v = np.asarray(v, float)
            v = v[np.isfinite(v)]
            # an interval from fewer than 90 % valid resamples would be silently biased: report none
            out[key][m] = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) >= 0.9 * n_boot else (math.nan, math.nan)
    return out


def write_csv(rows: list[dict], path: Path, fields: list[str] | None = None) -> None:
    fields = fields or list(rows[0].keys())
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in fields})


def _pct(v: float, signed: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.1f} %" if signed else f"{v:.1f} %"


def _cell(b: dict | None) -> str:
    if b is None:
        return "not run"
    flag = " ⚠" if b["small_overlap"] or math.isnan(b["bd_rate_cubic_pct"]) else ""
    return f"{_pct(b['bd_rate_cubic_pct'])} / {_pct(b['bd_rate_pchip_pct'])}{flag}"


def _interval(b: dict, column: str, decimals: int) -> str:
    """' [lo, hi]' of a BD row's bootstrap interval for `column`, or nothing when there is none."""
    lo, hi = b.get(f"{column}_ci95_lo", math.nan), b.get(f"{column}_ci95_hi", math.nan)
    return "" if math.isnan(lo) else f" [{lo:+.{decimals}f}, {hi:+.{decimals}f}]"


def _score_note(ev: Evaluation) -> list[str]:
    if ev.score == "top1":
        return []
    return [f"Score: **top-1 among the {ev.among_classes} classes of the data's labels** (`--score {ev.score}`): "
            "an answer outside them never counts, so moving the recognizer's belief onto them gains nothing. "
            "Every top-1 below is this one; the operating points were chosen on top-1 over all classes.", ""]


def markdown(ev: Evaluation, rows: list[dict], bds: list[dict], command: str, versus: list[dict] = (),
             compare_to: str | None = None) -> str:
    find = {(b["pre"], b["codec"]): b for b in bds}
    pres = [p.label for p in ev.pres if p.label != "none"]
    L = [
        "# edgepipe eval: accuracy vs bpp and BD-Rate(accuracy)", "",
        f"Command: `{command}`", "",
        f"Images: {ev.n_images} evaluated{_views_note(ev)}, {ev.n_skipped} skipped (unreadable). "
        f"Operating points chosen on the first {ev.calibration_images} images (anchor, codec alone).", "",
        *_score_note(ev),
        "BD numbers are `cubic / PCHIP`: cubic = VCEG-M33 polynomial fit (what the paper used), "
        "PCHIP = piecewise cubic Hermite (JCT-VC CTC). Negative BD-rate = fewer bits for the same top-1. "
        "⚠ = the two curves share less than half of their combined accuracy range (IoU < 0.5), "
        "so the number rests on a thin slice of the curves.", "",
    ]
    over = [r for r in rows if r["pre"] == "none" and r["bpp"] > ev.max_bpp]
    if over:
        L += ["**Note:** on the evaluated images these anchor points lie above the "
              f"{ev.max_bpp:g} bpp chosen on the calibration images: "
              + ", ".join(f"{codec_title(r['codec'])} {r['quality']} ({r['bpp']:.3f} bpp)" for r in over), ""]
    L += [
        "## BD-Rate(accuracy) against the codec alone", "",
        "| Method | " + " | ".join(codec_title(c) for c in ev.codecs) + " |",
        "|---|" + "---|" * len(ev.codecs),
    ]
    for p in pres:
        L.append(f"| {p} | " + " | ".join(_cell(find.get((p, c))) for c in ev.codecs) + " |")
        if p in PAPER_BD:
            L.append(f"| *{p}, paper* | " + " | ".join(_pct(paper_bd(p, c)) for c in ev.codecs) + " |")
    if "hevc" in ev.codecs:
        L += ["", "## HEVC ablation (BD-rate, cubic / PCHIP; paper in brackets)", "",
              "| | without TV loss | with TV loss |", "|---|---|---|"]
        for bypass in (False, True):
            cells = []
            for tv in (False, True):
                name, paper = ABLATION[(bypass, tv)]
                cells.append(f"{name}: {_cell(find.get((name, 'hevc')))} [{_pct(paper)}]")
            L.append(f"| {'with' if bypass else 'without'} bypass | " + " | ".join(cells) + " |")
    L += ["", "## Details per curve pair", "",
          "Brackets: 95 % interval over 200 paired bootstrap resamples of the images (n/a: too few images, "
          "or the fit was undefined in more than 10 % of resamples).", "",
          "| Method | Codec | BD-rate cubic | BD-rate PCHIP | BD-top-1 cubic | BD-top-1 PCHIP | shared top-1 range | IoU | paper | notes |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for b in bds:
        rng = "none" if not b["overlap_hi_pct"] > b["overlap_lo_pct"] else f"{b['overlap_lo_pct']:.1f}-{b['overlap_hi_pct']:.1f} %"
        def pts(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{v:+.2f} pt"
        def ci(m: str) -> str:
            lo, hi = b.get(f"bd_rate_{m}_ci95_lo", math.nan), b.get(f"bd_rate_{m}_ci95_hi", math.nan)
            return "" if math.isnan(lo) else f" [{lo:+.1f}, {hi:+.1f}]"
        L.append(f"| {b['pre']} | {codec_title(b['codec'])} | {_pct(b['bd_rate_cubic_pct'])}{ci('cubic')} | "
                 f"{_pct(b['bd_rate_pchip_pct'])}{ci('pchip')} | "
                 f"{pts(b['bd_top1_cubic_pts'])} | {pts(b['bd_top1_pchip_pts'])} | {rng} | {b['overlap_iou']:.2f} | "
                 f"{_pct(b['paper_bd_rate_pct'])} | {b['notes']} |")
    if compare_to is not None:
        L += ["", f"## Against {compare_to} (paired)", "",
              f"Each pre-transform's curve against {compare_to}'s at the same operating points, on the same images: "
              "negative BD-rate = fewer bits than it for the same top-1. One bootstrap resample serves both curves, "
              "so what the images have in common cancels and the intervals are narrower than the difference of "
              "two BD-rates against the codec alone would suggest.", "",
              "| Method | Codec | BD-rate cubic | BD-rate PCHIP | BD-top-1 PCHIP | IoU | notes |",
              "|---|---|---|---|---|---|---|"]
        for b in versus:
            top1 = "n/a" if math.isnan(b["bd_top1_pchip_pts"]) else f"{b['bd_top1_pchip_pts']:+.2f} pt"
            L.append(f"| {b['pre']} | {codec_title(b['codec'])} | "
                     f"{_pct(b['bd_rate_cubic_pct'])}{_interval(b, 'bd_rate_cubic', 1)} | "
                     f"{_pct(b['bd_rate_pchip_pct'])}{_interval(b, 'bd_rate_pchip', 1)} | "
                     f"{top1}{_interval(b, 'bd_top1_pchip', 2)} | {b['overlap_iou']:.2f} | {b['notes']} |")
    L += ["", "## Operating points (anchor on the calibration images)", ""]
    for c in ev.codecs:
        chosen = set(ev.points[c])
        cands = ", ".join(("**" if x.quality in chosen else "") + f"{x.quality}: {x.bpp:.3f} bpp / {100 * x.top1:.1f} %"
                          + ("**" if x.quality in chosen else "") for x in sorted(ev.candidates[c], key=lambda x: x.bpp))
        L.append(f"- {codec_title(c)} ({CODECS[c].setting.report_name}): {cands}")
    L += ["", "## Uncompressed (pre-transform output, no codec)", "", "| Method | top-1 | PSNR vs original |", "|---|---|---|"]
    for u in uncompressed_rows(ev):
        L.append(f"| {u['pre']} | {100 * u['top1']:.2f} % | {u['psnr_db']:.2f} dB |")
    L += ["", "## Curves", "", "| Method | Codec | setting | bpp | top-1 | PSNR | images | skipped |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['pre']} | {codec_title(r['codec'])} | {r['quality']} | {r['bpp']:.4f} | {100 * r['top1']:.2f} % | "
                 f"{r['psnr_db']:.2f} dB | {r['n_images']} | {r['n_skipped']} |")
    return "\n".join(L) + "\n"


def plot(ev: Evaluation, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = {u["pre"]: u["top1"] for u in uncompressed_rows(ev)}
    fig, axes = plt.subplots(1, len(ev.codecs), figsize=(5 * len(ev.codecs), 4.2), squeeze=False)
    for ax, codec in zip(axes[0], ev.codecs):
        for i, pre in enumerate(p.label for p in ev.pres):
            pts = sorted((r for r in rows if r["pre"] == pre and r["codec"] == codec), key=lambda r: r["bpp"])
            # the anchor on top and dashed, so a curve equal to it (e.g. an identity) cannot hide it
            style = dict(color="black", lw=1.5, ls="--", zorder=5) if pre == "none" else dict(color=f"C{i}", alpha=0.9)
            ax.plot([r["bpp"] for r in pts], [100 * r["top1"] for r in pts], marker="o", label=pre, **style)
        ax.axhline(100 * raw["none"], color="grey", ls=":", lw=1, label="uncompressed")
        ax.set_title(codec_title(codec))
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{ev.n_images} images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _with_intervals(ev: Evaluation, bds: list[dict], anchor_pre: str) -> list[dict]:
    """Attach the bootstrap's 95 % intervals to each BD row (NaN with too few images to mean anything)."""
    ci = bootstrap_bd(ev, anchor_pre=anchor_pre) if ev.n_images >= 50 else {}
    for b in bds:
        c = ci.get((b["pre"], b["codec"]), {})
        for m, column in (("cubic", "bd_rate_cubic"), ("pchip", "bd_rate_pchip"), ("top1_pchip", "bd_top1_pchip")):
            lo, hi = c.get(m, (math.nan, math.nan))
            b[f"{column}_ci95_lo"], b[f"{column}_ci95_hi"] = lo, hi
    return bds


def bd_table(ev: Evaluation, anchor_pre: str = "none") -> list[dict]:
    """Every pre-transform against `anchor_pre` (the codec alone leaves the table when it is not the anchor),
    each BD row with its bootstrap intervals: the rows of bdrate.csv and bdrate_vs_<anchor>.csv."""
    rows = [b for b in bd_rows(curve_rows(ev), anchor_pre) if anchor_pre == "none" or b["pre"] != "none"]
    return _with_intervals(ev, rows, anchor_pre)


def write_all(ev: Evaluation, out: Path, command: str, compare_to: str | None = None) -> dict[str, Path]:
    """The reports; with `compare_to` (a pre-transform's label) also every other one against it, paired."""
    out.mkdir(parents=True, exist_ok=True)
    rows = curve_rows(ev)
    bds = bd_table(ev)
    paths = {"csv": out / "results.csv", "bd": out / "bdrate.csv", "md": out / "results.md", "png": out / "rd.png"}
    versus: list[dict] = []
    if compare_to is not None:
        versus = bd_table(ev, compare_to)
        paths["versus"] = out / f"bdrate_vs_{compare_to}.csv"
        write_csv(versus, paths["versus"])
    write_csv(rows, paths["csv"], CSV_FIELDS)
    if bds:
        write_csv(bds, paths["bd"])
    paths["md"].write_text(markdown(ev, rows, bds, command, versus, compare_to))
    plot(ev, rows, paths["png"])
    return paths
