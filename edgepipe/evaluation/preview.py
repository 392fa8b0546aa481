"""What a pre-transform does to one picture: four panels side by side, with their numbers.

    original | ED output | ED output after the codec | original after the codec alone

Every number comes from the code the evaluation uses: the engine from `runner.resolve_pres` /
`engines.load_engine`, the codec round trip from `media.codecs.encode_image` / `decode_image` (intra,
single-threaded as in `edgepipe eval`, so the bytes are the ones the evaluation counts), PSNR against
the original from `runner.psnr`, top-5 from `recognition.Classifier` with the names in `labels`.
Metrics are computed on the frames at their own size; only the picture scales them for display.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.options import flag
from edgepipe.engines import describe_specs
from edgepipe.media.codecs import CODECS, STILL_CODECS
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS

log = logging.getLogger(__name__)

MIN_SIDE = 16
RAW_BPP = 24.0  # an uncoded RGB panel, as the evaluation's "raw" rows count it

# Picture layout: panels at least MIN_PANEL_WIDTH wide (small frames enlarged by an integer factor with
# nearest neighbours, so codec blocks stay sharp), at most MAX_PANEL_WIDTH (large ones shrunk).
MIN_PANEL_WIDTH = 320
MAX_PANEL_WIDTH = 960
GAP = 8
CAPTION_LINES = 8  # title, rate, PSNR, 5 classes
TOP_K = 5


def setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


def _setting_help() -> str:
    """What --qp means for each still codec, and its default, as the codecs register them."""
    settings = ((name, CODECS[name].setting, CODECS[name].default_setting) for name in STILL_CODECS)
    return ", ".join(f"{name} {s.meaning} {s.low}-{s.high} ({default})" for name, s, default in settings)


@dataclass(kw_only=True)
class PreviewSettings:
    """What `edgepipe preview` is asked to do: one field per setting, each carrying its flag and help (the
    command's options are made from them; its IMAGE|VIDEO argument arrives as `source`). `write_preview` runs
    them; every check is `make_preview`'s and `check_output`'s, one line each, before any work."""
    source: str  # the command's IMAGE|VIDEO argument
    engine: str = setting("none", help=f"Pre-transform: {describe_specs()}; or guided[:STEPS[@PSNR_DB]], the "
                                       "picture optimised for --codec at --qp by the recognizer seeing it whole "
                                       "(docs/guided.md).")
    out: str = field(metadata=flag(short="-o", path=True, help="The PNG to write (its folder must exist)."))
    codec: str = setting("hevc", choices=STILL_CODECS, help="The still codec, coded as `edgepipe eval` codes it.")
    quality: int | None = setting(None, "--qp", help=f"Codec setting (default in brackets): {_setting_help()}.")
    frame: int | None = setting(None, help="For a video: the frame to take, from 0 (default 0).")
    recognizer: str = setting(DEFAULT_RECOGNIZER, choices=RECOGNIZERS,
                              help="The recognizer whose top-5 is shown under each panel (on the frame's centre "
                                   "square).")
    weights: str | None = setting(None, path="file", help="Recognizer weights (vgg16).")


@dataclass
class Panel:
    key: str                       # original | ed | ed_codec | codec
    title: str
    image: np.ndarray              # uint8 RGB at the frame's own size
    nbytes: int | None             # coded size; None for uncoded panels
    bpp: float
    psnr_db: float                 # against the original; inf when identical
    top5: list[tuple[int, str, float]] = field(default_factory=list)  # (class index, name, probability)

    @property
    def identical(self) -> bool:
        return math.isinf(self.psnr_db)


@dataclass
class Preview:
    source: str
    frame: int | None              # frame index for a video, None for an image
    engine: str                    # label: none, ours, a model file's stem
    codec: str
    quality: int
    width: int
    height: int
    label: int | None              # ImageNet index when the file sits in a <synset> folder
    recognizer: str
    panels: list[Panel]
    seconds: float = 0.0


# --- checks, all before any work ------------------------------------------------------------------

def check_codec_setting(codec: str, quality: int | None) -> int:
    """The codec's setting, defaulted (each codec registers a useful mid-range one), or a one-line error when
    the codec is unknown or the setting is out of its range."""
    described = CODECS[codec]
    if quality is None:
        return described.default_setting
    described.setting.check(codec, quality)
    return int(quality)


def check_output(path: str | Path) -> Path:
    """A .png path in an existing folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise EdgepipeError(f"output must be a .png file, got {str(path)!r}")
    if path.is_dir():
        raise EdgepipeError(f"output {path} is a folder; give a file name such as {path / 'preview.png'}")
    if not path.parent.is_dir():
        raise EdgepipeError(f"output folder {path.parent} does not exist")
    return path


def read_frame(source: str | Path, frame: int | None = None) -> tuple[np.ndarray, int | None]:
    """(uint8 RGB, None) for an image file; (RGB of frame `frame`, 0-based, default 0; its index) for a video."""
    from edgepipe.core.datasets import IMAGE_SUFFIXES, read_rgb
    from edgepipe.media.frames import ReadStatus
    from edgepipe.media.sources import FrameShaper, VideoFileSource

    path = Path(source)
    if not path.exists():
        raise EdgepipeError(f"input not found: {path}")
    if not path.is_file():
        raise EdgepipeError(f"input {path} is not a file (give one image or one video)")
    if frame is not None and frame < 0:
        raise EdgepipeError(f"--frame must be 0 or more, got {frame}")
    image = read_rgb(path)
    if image is not None:
        if frame:
            raise EdgepipeError(f"--frame {frame} asks for a video frame, but {path} is an image")
        return image, None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise EdgepipeError(f"unreadable image: {path}")
    index = frame or 0
    try:
        video = VideoFileSource(path, FrameShaper(None))
    except EdgepipeError:
        raise EdgepipeError(f"{path} is neither a readable image nor a readable video") from None
    try:
        for i in range(index + 1):
            status, got = video.read()
            if status is not ReadStatus.OK or got is None:
                if i == 0:
                    raise EdgepipeError(f"{path} has no decodable video frame")
                raise EdgepipeError(f"--frame {index} is past the end of {path} ({i} frames)")
    finally:
        video.close()
    return np.ascontiguousarray(got.image), index


def _label_of(source: Path) -> int | None:
    from edgepipe.core.labels import synset_to_index

    return synset_to_index().get(source.parent.name)


# --- the measurement ------------------------------------------------------------------------------

def code(codec: str, image: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """One still through the codec exactly as `edgepipe eval` codes it: (bitstream, decoded RGB)."""
    from edgepipe.media.codecs import decode_image, encode_image

    h, w = image.shape[:2]
    data = encode_image(codec, image, quality, threads=1)
    decoded = decode_image(codec, data, w, h)
    if decoded.shape != image.shape:
        raise EdgepipeError(f"{codec} decoded a {image.shape} frame as {decoded.shape}")
    return data, decoded


def psnr_db(original: np.ndarray, other: np.ndarray) -> float:
    """The evaluation's RGB PSNR, except that identical frames are infinite (not its 100 dB cap)."""
    from edgepipe.core.fidelity import psnr

    return math.inf if np.array_equal(original, other) else psnr(original, other)


def top_k(logits: np.ndarray, k: int = TOP_K) -> list[tuple[int, str, float]]:
    from edgepipe.core.labels import class_name

    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), class_name(int(i)), float(p[i])) for i in order]


def make_preview(source: str | Path, engine: str = "none", codec: str = "hevc", quality: int | None = None,
                 frame: int | None = None, recognizer: str | None = None, weights: str | None = None) -> Preview:
    """Validate everything (one-line EdgepipeError), then measure the four panels."""
    from edgepipe.engines import load_engine
    from edgepipe.evaluation.runner import check_codecs, resolve_pres
    from edgepipe.guidance.guided import GUIDED_CODECS, GuidanceSettings, GuidedPreTransform, is_guided
    from edgepipe.media.codecs import bits_per_pixel
    from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZER_REGISTRY, Classifier

    t0 = time.time()
    recognizer = recognizer or DEFAULT_RECOGNIZER
    codec = codec.strip().lower()
    quality = check_codec_setting(codec, quality)
    RECOGNIZER_REGISTRY[recognizer]  # an unknown name: one line listing the recognizers
    if weights is not None and not Path(weights).is_file():
        raise EdgepipeError(f"weight file not found: {weights}")
    image, frame = read_frame(source, frame)
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise EdgepipeError(f"{source} is {w}x{h}; a preview needs at least {MIN_SIDE}x{MIN_SIDE} pixels")
    check_codecs([codec])                       # usable in this build (HEVC: a libx265 PyAV)
    pre = resolve_pres([engine or "none"])[-1]  # loads and probe-runs a model; 'none' comes first
    classifier = Classifier(recognizer, weights, batch_size=TOP_K, view="centre-crop")  # as the monitor sees it

    if is_guided(pre.spec):  # a picture for this codec setting, guided by the recognizer the panels are scored by
        if codec not in GUIDED_CODECS:
            raise EdgepipeError(f"the guided pre-transform has no model of {codec}; it guides {', '.join(GUIDED_CODECS)}")
        ed = GuidedPreTransform(GuidanceSettings.parse(pre.spec), recognizer, weights)
        run = lambda frames: ed.run(frames, codec, quality)  # noqa: E731
    else:
        ed = load_engine(pre.spec)
        run = ed.run
    try:
        out = run(image[None])
    finally:
        ed.close()
    if out.shape != (1,) + image.shape or out.dtype != np.uint8:
        raise EdgepipeError(f"pre-transform {pre.label} returned {out.dtype} {out.shape} for a {image.shape} frame")
    ed_image = out[0]
    ed_bytes, ed_decoded = code(codec, ed_image, quality)
    anchor_bytes, anchor_decoded = code(codec, image, quality)

    setting = CODECS[codec].caption.format(quality)
    pv = Preview(str(source), frame, pre.label, codec, quality, w, h, _label_of(Path(source)), recognizer, [])
    for key, title, img, nbytes in (
        ("original", f"original {w}x{h}", image, None),
        ("ed", f"ED output: {pre.label}", ed_image, None),
        ("ed_codec", f"{pre.label} + {setting}", ed_decoded, len(ed_bytes)),
        ("codec", f"{setting} alone", anchor_decoded, len(anchor_bytes)),
    ):
        bpp = RAW_BPP if nbytes is None else bits_per_pixel(nbytes, w, h)
        pv.panels.append(Panel(key, title, img, nbytes, bpp, psnr_db(image, img)))
    logits = classifier.logits(np.stack([p.image for p in pv.panels]))
    for panel, row in zip(pv.panels, logits):
        panel.top5 = top_k(row)
    pv.seconds = time.time() - t0
    return pv


def write_preview(settings: PreviewSettings) -> tuple[Preview, Path]:
    """`edgepipe preview`: the output checked, the four panels measured, the PNG written; (preview, its path)."""
    s = settings
    check_output(s.out)
    pv = make_preview(s.source, engine=s.engine, codec=s.codec, quality=s.quality, frame=s.frame,
                      recognizer=s.recognizer, weights=s.weights)
    return pv, write_png(pv, s.out)


# --- reporting ------------------------------------------------------------------------------------

def _psnr_text(panel: Panel) -> str:
    if panel.key == "original":
        return "reference"
    return "identical" if panel.identical else f"{panel.psnr_db:.2f} dB"


def _rate_text(panel: Panel) -> str:
    if panel.nbytes is None:
        return f"uncoded, {panel.bpp:.0f} bpp"
    return f"{panel.nbytes:,} B, {panel.bpp:.3f} bpp"


def format_table(pv: Preview) -> str:
    """The numbers under the panels, one row per panel."""
    where = f" frame {pv.frame}" if pv.frame is not None else ""
    truth = f"; label: {_class(pv.label)}" if pv.label is not None else ""
    head = f"{pv.source}{where} ({pv.width}x{pv.height}), recognizer {pv.recognizer}{truth}"
    rows = [("panel", "bytes", "bpp", "PSNR", "top-5")]
    for p in pv.panels:
        rows.append((p.title, "-" if p.nbytes is None else str(p.nbytes), f"{p.bpp:.3f}", _psnr_text(p),
                     ", ".join(f"{name} {prob:.1%}" for _, name, prob in p.top5)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head]
    for r in rows:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}")
    return "\n".join(lines)


def _class(index: int) -> str:
    from edgepipe.core.labels import class_name

    return class_name(index)


def as_dict(pv: Preview) -> dict:
    """JSON-ready: PSNR is null (and `identical` true) where a panel equals the original."""
    return {
        "source": pv.source, "frame": pv.frame, "width": pv.width, "height": pv.height,
        "label": None if pv.label is None else {"index": pv.label, "name": _class(pv.label)},
        "engine": pv.engine, "codec": pv.codec, "quality": pv.quality, "recognizer": pv.recognizer,
        "panels": [{
            "panel": p.key, "title": p.title, "bytes": p.nbytes, "bpp": round(p.bpp, 6),
            "psnr_db": None if p.identical else round(p.psnr_db, 4), "identical": p.identical,
            "top5": [{"index": i, "name": n, "p": round(q, 6)} for i, n, q in p.top5],
        } for p in pv.panels],
        "seconds": round(pv.seconds, 2),
    }


# --- the picture ----------------------------------------------------------------------------------

def display_size(width: int, height: int) -> tuple[int, int]:
    """Panel size on the picture for a frame of this size (integer enlargement or a shrink)."""
    if width < MIN_PANEL_WIDTH:
        k = math.ceil(MIN_PANEL_WIDTH / width)
        return width * k, height * k
    if width > MAX_PANEL_WIDTH:
        return MAX_PANEL_WIDTH, max(1, round(height * MAX_PANEL_WIDTH / width))
    return width, height


def _fit(text: str, width: int, font, scale: float, thickness: int) -> str:
    import cv2

    if cv2.getTextSize(text, font, scale, thickness)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", font, scale, thickness)[0][0] > width:
        text = text[:-1]
    return text + "..."


def render(pv: Preview) -> np.ndarray:
    """The picture as uint8 RGB: the four panels in a row, a caption band under each."""
    import cv2

    pw, ph = display_size(pv.width, pv.height)
    scale = min(1.0, max(0.5, pw / 700))
    line = int(round(34 * scale))
    pad = max(6, line // 3)
    band = pad * 2 + line * CAPTION_LINES
    canvas = np.full((ph + band, 4 * pw + 3 * GAP, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    black, grey, green = (0, 0, 0), (90, 90, 90), (0, 120, 0)
    for n, p in enumerate(pv.panels):
        x0 = n * (pw + GAP)
        shown = p.image
        if (pw, ph) != (pv.width, pv.height):  # enlarged: nearest keeps codec blocks sharp; shrunk: area
            shown = cv2.resize(shown, (pw, ph), interpolation=cv2.INTER_NEAREST if pw > pv.width else cv2.INTER_AREA)
        canvas[:ph, x0:x0 + pw] = shown
        text = [(p.title, black, 2), (_rate_text(p), black, 1), (f"PSNR {_psnr_text(p)}", black, 1)]
        for rank, (index, name, prob) in enumerate(p.top5, 1):
            colour = green if index == pv.label else grey if rank > 1 else black
            text.append((f"{rank}. {prob:5.1%} {name}", colour, 2 if index == pv.label else 1))
        for i, (t, colour, thick) in enumerate(text):
            y = ph + pad + line * (i + 1) - line // 4
            cv2.putText(canvas, _fit(t, pw - 2 * pad, font, scale, thick), (x0 + pad, y), font, scale, colour,
                        thick, cv2.LINE_AA)
    return canvas


def write_png(pv: Preview, path: str | Path) -> Path:
    import cv2

    path = check_output(path)
    if not cv2.imwrite(str(path), render(pv)[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise EdgepipeError(f"could not write {path}")
    return path
