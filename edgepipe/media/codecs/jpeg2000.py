"""JPEG 2000 in two modes, both OpenJPEG writing a .jp2 file with one quality layer.

- "jpeg2000" is OpenCV's writer. It targets a *rate* (compression x1000), so the bits spent do not
  depend on the content: a pre-transform cannot lower them, only change the distortion. OpenCV leaves
  OpenJPEG's defaults: reversible 5/3 wavelet, no colour transform.
- "jpeg2000-db" (Pillow) targets a *quality*: the layer stops at a PSNR in dB, so a smoother input reaches
  it with fewer bits, as with a JPEG quality or an HEVC QP. Irreversible 9/7 wavelet and colour transform
  (the usual lossy JPEG 2000). A still codec only: evaluation and preview, not a stream codec.
"""
from __future__ import annotations

import functools
import io

import cv2
import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs.base import Codec, QualitySetting, register_codec
from edgepipe.media.codecs.jpeg import decode_opencv

# OpenCV's IMWRITE_JPEG2000_COMPRESSION_X1000 (OpenCV replaces anything outside 1..1000 by 1, with a warning
# each frame, hence the range check).
RATE_SETTING = QualitySetting("compression x1000", 1, 1000, report_name="rate x1000")
DB_SETTING = QualitySetting("target dB", 1, 100, report_name="target PSNR dB")


# --- rate mode (OpenCV) ---------------------------------------------------------------------------

def encode_rate(image: np.ndarray, quality: float, threads: int | None = None) -> bytes:
    RATE_SETTING.check("jpeg2000", quality)
    ok, buf = cv2.imencode(".jp2", image[..., ::-1], [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, int(quality)])
    if not ok:
        raise EdgepipeError("OpenCV could not encode jpeg2000 (is it in this OpenCV build?)")
    return buf.tobytes()


def decode_rate(data: bytes, width: int | None = None, height: int | None = None) -> np.ndarray:
    return decode_opencv("jpeg2000", data)


# --- dB mode (Pillow) -----------------------------------------------------------------------------

@functools.cache
def _pillow_jpeg2000():
    """Pillow's Image module, after checking it was built with OpenJPEG (one-line error otherwise)."""
    try:
        import PIL
        from PIL import Image, features
    except ImportError:
        raise EdgepipeError("codec jpeg2000-db needs Pillow with OpenJPEG: pip install 'pillow>=10'") from None
    if not features.check("jpg_2000"):
        raise EdgepipeError(f"this Pillow ({PIL.__version__}) was built without JPEG 2000 (OpenJPEG) support, "
                            "which codec jpeg2000-db needs: install a Pillow wheel from PyPI or rebuild with libopenjp2")
    return Image


def check_pillow_jpeg2000() -> None:
    _pillow_jpeg2000()


def encode_db(image: np.ndarray, psnr_db: float, threads: int | None = None) -> bytes:
    if not psnr_db > 0:
        raise EdgepipeError(f"jpeg2000-db setting is a target PSNR in dB and must be positive, got {psnr_db}")
    Image = _pillow_jpeg2000()
    buf = io.BytesIO()
    # quality_mode dB: OpenJPEG truncates the code-blocks where its distortion estimate reaches this
    # PSNR. mct=1: colour transform (Pillow's default is none, ~30 % more bytes for RGB).
    Image.fromarray(np.ascontiguousarray(image)).save(
        buf, "JPEG2000", quality_mode="dB", quality_layers=[float(psnr_db)], irreversible=True, mct=1)
    return buf.getvalue()


def decode_db(data: bytes, width: int | None = None, height: int | None = None) -> np.ndarray:
    Image = _pillow_jpeg2000()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(f"undecodable jpeg2000-db payload ({len(data)} bytes): {exc}") from None


JPEG2000 = register_codec(Codec(
    name="jpeg2000", title="JPEG 2000 (rate)", setting=RATE_SETTING, caption="JPEG 2000 rate {}", default_setting=20,
    encode=encode_rate, decode=decode_rate, wire_id=3,
    # a target rate: bpp ~= value / 42 at 224x224 (0.10..1.3)
    candidates=(4, 5, 6, 8, 10, 12, 14, 17, 20, 24, 28, 34, 40, 48, 56),
))

JPEG2000_DB = register_codec(Codec(
    name="jpeg2000-db", title="JPEG 2000 (dB)", setting=DB_SETTING, caption="JPEG 2000 {} dB", default_setting=30,
    encode=encode_db, decode=decode_db, wire_id=None, check_available=check_pillow_jpeg2000,
    # On the 256 calibration images of Imagenette val: 21 dB 0.110, 23 0.182, 25 0.289, 27 0.433, 29 0.610,
    # 31 0.814, 33 1.051, 35 1.313 bpp (decoded RGB PSNR ~0.3 dB under the target).
    candidates=tuple(range(21, 36)),
))
