"""JPEG through OpenCV (libjpeg): the setting is libjpeg's quality, 1..100."""
from __future__ import annotations

import cv2
import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs.base import Codec, QualitySetting, register_codec

SETTING = QualitySetting("quality", 1, 100, report_name="quality")


def encode(image: np.ndarray, quality: float, threads: int | None = None) -> bytes:
    SETTING.check("jpeg", quality)
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise EdgepipeError("OpenCV could not encode jpeg (is it in this OpenCV build?)")
    return buf.tobytes()


def decode_opencv(codec: str, data: bytes) -> np.ndarray:
    """An image OpenCV reads (JPEG, JPEG 2000) -> RGB; ValueError naming `codec` when it cannot."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"undecodable {codec} payload ({len(data)} bytes)")
    return np.ascontiguousarray(bgr[..., ::-1])


def decode(data: bytes, width: int | None = None, height: int | None = None) -> np.ndarray:
    return decode_opencv("jpeg", data)


JPEG = register_codec(Codec(
    name="jpeg", title="JPEG", setting=SETTING, caption="JPEG q{}", default_setting=20,
    encode=encode, decode=decode, wire_id=2,
    # libjpeg quality; 1 and 2 give identical (clamped) tables, so the grid starts at 2 (~0.28 bpp at 224x224).
    candidates=(2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 35, 40, 50),
))
