"""Codecs, one module each, registered by name in `CODECS` (base.py says what a codec registers).

    jpeg.py       JPEG (OpenCV)                     stream and still
    jpeg2000.py   JPEG 2000: jpeg2000 (OpenCV, a target rate) and jpeg2000-db (Pillow, a target PSNR, still only)
    hevc.py       HEVC (PyAV: libx265, hevc_nvenc)  stream (inter, GOP) and still (intra)

A new codec is one module that calls `register_codec`, and its import below (the order here is the order
choices are listed in). The names below are what the rest of edgepipe imports from `edgepipe.media.codecs`.
"""
from __future__ import annotations

from edgepipe.media.codecs import jpeg, jpeg2000  # noqa: F401  (registers jpeg, jpeg2000, jpeg2000-db)
from edgepipe.media.codecs.base import (
    CODECS,
    Codec,
    EncodedFrame,
    QualitySetting,
    StreamEncoder,
    bits_per_pixel,
    check_setting,
    decode_image,
    encode_image,
    register_codec,
    still_codecs,
    stream_codecs,
)
from edgepipe.media.codecs.hevc import (  # registers hevc
    CRF_RANGE,
    HEVC_ENCODERS,
    X265_PRESETS,
    HevcDecoder,
    HevcEncoder,
    check_hevc_support,
    resolve_encoder,
)

# Derived once all the modules above have registered: read-only views for the modules that want a plain value.
STILL_CODECS = still_codecs()  # what `eval` and `preview` code single images with
STREAM_CODECS = stream_codecs()  # what `capture` sends, in wire-id order
SETTING_RANGES = {c.name: (c.setting.meaning, c.setting.low, c.setting.high) for c in CODECS.values()}

__all__ = [
    "CODECS", "CRF_RANGE", "HEVC_ENCODERS", "SETTING_RANGES", "STILL_CODECS", "STREAM_CODECS", "X265_PRESETS",
    "Codec", "EncodedFrame", "HevcDecoder", "HevcEncoder", "QualitySetting", "StreamEncoder", "bits_per_pixel",
    "check_hevc_support", "check_setting", "decode_image", "encode_image", "register_codec", "resolve_encoder",
    "still_codecs", "stream_codecs",
]
