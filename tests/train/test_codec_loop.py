"""The codec in the training loop: real bytes, real decoded pixels, a straight-through gradient."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.base import to_model_input
from edgepipe.media.codecs import decode_image, encode_image
from edgepipe.train.codec_loop import (
    CodecRange,
    CodecRoundTrip,
    codec_proxy,
    hevc_qstep,
    jpeg2000_qstep,
    jpeg_qstep,
    parse_ranges,
    straight_through,
)


def test_ranges_parse_and_refuse_nonsense() -> None:
    assert parse_ranges("hevc:31-47, jpeg:5-40") == [CodecRange("hevc", 31, 47), CodecRange("jpeg", 5, 40)]
    assert parse_ranges("hevc:37") == [CodecRange("hevc", 37, 37)]
    assert parse_ranges("jpeg2000-db:23-33") == [CodecRange("jpeg2000-db", 23, 33)]
    assert parse_ranges(None) == [] and parse_ranges("") == []
    for bad in ("vp9:1-2", "hevc:47-31", "hevc:0-60", "jpeg:x", "hevc", "jpeg2000-db:10-60", "jpeg2000:5-10"):
        with pytest.raises(EdgepipeError):
            parse_ranges(bad)
    rng = np.random.default_rng(0)
    draws = {CodecRange("hevc", 31, 33).draw(rng) for _ in range(200)}
    assert draws == {31, 32, 33}


def test_quantiser_steps_follow_the_codecs() -> None:
    assert hevc_qstep(4) == pytest.approx(1.0) and hevc_qstep(40) == pytest.approx(64.0)  # doubles every 6 QP
    assert jpeg_qstep(10) > jpeg_qstep(50) > jpeg_qstep(90) >= 1.0
    assert jpeg_qstep(2) <= 255  # libjpeg clamps every table entry at 255
    assert jpeg2000_qstep(25) > jpeg2000_qstep(29) > jpeg2000_qstep(33) > 0
    assert jpeg2000_qstep(23) / jpeg2000_qstep(29) == pytest.approx(2.0, rel=0.01)  # 6 dB less PSNR, twice the step


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.parametrize("codec,setting", [("jpeg2000-db", 25), ("jpeg2000-db", 31), ("hevc", 37), ("jpeg", 20)])
def test_proxy_distortion_is_near_the_real_codecs(real_frames, codec: str, setting: int) -> None:
    """The backward pass's model of each codec drops about as much as the codec does (PSNR within 2.5 dB)."""
    crops = np.ascontiguousarray(real_frames[0][:, 48:176, 48:176])
    rt = CodecRoundTrip(workers=2)
    try:
        decoded, _ = rt(crops, codec, setting)
    finally:
        rt.close()
    with torch.no_grad():
        proxy = codec_proxy(torch.from_numpy(to_model_input(crops)), codec, setting).clamp(0, 1)
    proxy8 = (proxy * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert abs(_psnr(proxy8, crops) - _psnr(decoded, crops)) < 2.5


@pytest.mark.parametrize("codec,setting", [("hevc", 37), ("jpeg", 20), ("jpeg2000-db", 29)])
def test_round_trip_equals_single_image_codec(real_frames, codec: str, setting: int) -> None:
    """Bytes and pixels equal one-image encodes: the kept-open HEVC encoder changes nothing."""
    crops = np.ascontiguousarray(real_frames[0][:5, 10:138, 20:148])
    rt = CodecRoundTrip(workers=2)
    try:
        for _ in range(2):  # a second batch reuses the same per-thread encoders
            decoded, sizes = rt(crops, codec, setting)
    finally:
        rt.close()
    assert decoded.shape == crops.shape and decoded.dtype == np.uint8
    for crop, dec, size in zip(crops, decoded, sizes):
        data = encode_image(codec, crop, setting)
        assert size == len(data)
        np.testing.assert_array_equal(dec, decode_image(codec, data, 128, 128))
    # a real lossy codec: close to the input, not equal to it
    err = np.abs(decoded.astype(int) - crops.astype(int)).mean()
    assert 0.5 < err < 20


def test_straight_through_forward_is_decoded_backward_is_identity() -> None:
    y = torch.rand(2, 3, 8, 8, requires_grad=True)
    decoded = torch.rand(2, 3, 8, 8)
    out = straight_through(y, decoded)
    torch.testing.assert_close(out, decoded)
    weights = torch.randn_like(y)
    (out * weights).sum().backward()
    torch.testing.assert_close(y.grad, weights)
