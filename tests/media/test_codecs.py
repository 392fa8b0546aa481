import cv2
import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs import (
    HevcDecoder,
    HevcEncoder,
    bits_per_pixel,
    check_hevc_support,
    decode_image,
    encode_image,
    resolve_encoder,
)


@pytest.fixture(scope="module")
def image(small_val_folder):
    return read_rgb(list_labelled_images(small_val_folder)[0].path)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("codec,quality", [("jpeg", 75), ("jpeg2000", 100), ("jpeg2000-db", 35), ("hevc", 30)])
def test_still_roundtrip_is_faithful(image, codec, quality):
    data = encode_image(codec, image, quality)
    out = decode_image(codec, data, image.shape[1], image.shape[0])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert 28 < psnr(image, out) < 60


@pytest.mark.parametrize("codec,better,worse", [("jpeg", 90, 30), ("jpeg2000", 200, 20), ("jpeg2000-db", 36, 24),
                                                ("hevc", 22, 42)])
def test_quality_setting_orders_the_rate(image, codec, better, worse):
    assert len(encode_image(codec, image, better)) > 1.5 * len(encode_image(codec, image, worse))


def test_hevc_odd_size_is_padded_then_cropped(image):
    odd = np.ascontiguousarray(image[:223, :221])
    out = decode_image("hevc", encode_image("hevc", odd, 30), 221, 223)
    assert out.shape == (223, 221, 3)
    assert psnr(odd, out) > 28


def test_stream_gop_forced_keyframe_and_exact_sizes(image):
    enc = HevcEncoder(224, 224, qp=32, gop=8)
    dec = HevcDecoder()
    packets = []
    for i in range(20):
        out = enc.encode(image, force_keyframe=(i == 11))
        assert len(out) == 1, "low-latency encoder: one packet per frame"
        packets += out
    packets += enc.flush()
    keys = [i for i, p in enumerate(packets) if p.keyframe]
    assert keys == [0, 8, 11, 19]  # forced IDR at 11 restarts the GOP
    for p in packets:
        assert p.size == len(p.data) > 0
        assert dec.decode(p.data, 224, 224)[0].shape == (224, 224, 3)


def test_decoder_can_join_at_a_later_keyframe(image):
    enc = HevcEncoder(224, 224, qp=32, gop=5)
    packets = [enc.encode(image)[0] for _ in range(12)]
    dec = HevcDecoder()  # joins at frame 5 (a keyframe): headers are repeated there
    frames = [f for p in packets[5:] for f in dec.decode(p.data, 224, 224)]
    assert len(frames) == 7


def test_intra_only_makes_every_frame_a_keyframe(image):
    enc = HevcEncoder(224, 224, qp=32, gop=0)
    assert all(enc.encode(image)[0].keyframe for _ in range(4))


def test_bits_per_pixel_arithmetic():
    assert bits_per_pixel(6272, 224, 224) == pytest.approx(1.0)
    assert bits_per_pixel(0, 10, 10) == 0.0


def test_bad_settings_and_codecs_are_clear_errors(image):
    with pytest.raises(EdgepipeError, match="hevc QP must be 0..51, got 60"):
        HevcEncoder(64, 64, qp=60)
    with pytest.raises(EdgepipeError, match="unknown libx265 preset 'fastest'; choose one of ultrafast"):
        HevcEncoder(64, 64, preset="fastest")
    with pytest.raises(EdgepipeError, match="hevc CRF must be 0..51"):
        HevcEncoder(64, 64, qp=None, crf=70)
    with pytest.raises(EdgepipeError, match="jpeg quality must be 1..100, got 101"):
        encode_image("jpeg", image, 101)
    with pytest.raises(EdgepipeError, match="jpeg2000 compression x1000 must be 1..1000, got 5000"):
        encode_image("jpeg2000", image, 5000)
    with pytest.raises(EdgepipeError, match="exactly one"):
        HevcEncoder(64, 64, qp=None, crf=None)
    with pytest.raises(EdgepipeError, match="unknown codec"):
        encode_image("webp2", image, 50)
    with pytest.raises(EdgepipeError, match="no not_an_encoder encoder"):
        check_hevc_support("not_an_encoder")
    with pytest.raises(ValueError):
        decode_image("jpeg", b"garbage")


def test_auto_encoder_uses_nvenc_only_where_it_opens(image):
    """PyAV's wheels carry hevc_nvenc everywhere; only a test open says whether a GPU is behind it."""
    chosen = resolve_encoder("auto")
    try:
        check_hevc_support("hevc_nvenc")
    except EdgepipeError as exc:
        assert chosen == "libx265"
        assert "no usable NVIDIA encoder" in str(exc) or "has no hevc_nvenc encoder" in str(exc)
    else:
        assert chosen == "hevc_nvenc"
    packets = HevcEncoder(64, 64, encoder="auto").encode(image[:64, :64])
    assert packets and packets[0].keyframe


# --- JPEG 2000 at a target PSNR (Pillow / OpenJPEG) ---------------------------------------------

@pytest.fixture(scope="module")
def images(small_val_folder):
    return [read_rgb(i.path) for i in list_labelled_images(small_val_folder)]


def test_jpeg2000_db_lands_near_its_psnr_target(images):
    for target in (22, 28, 35):
        got = []
        for im in images:
            out = decode_image("jpeg2000-db", encode_image("jpeg2000-db", im, target))
            assert out.shape == im.shape and out.dtype == np.uint8 and out.flags.c_contiguous
            got.append(psnr(im, out))
        # OpenJPEG stops on its own distortion estimate: decoded RGB lands a few tenths of a dB under
        assert all(target - 1.5 < g < target + 0.5 for g in got), (target, got)
        assert target - 0.8 < np.mean(got) < target


def test_jpeg2000_db_bytes_fall_with_the_setting(images):
    for im in images[::3]:
        sizes = [len(encode_image("jpeg2000-db", im, db)) for db in range(21, 36)]
        assert sizes == sorted(sizes), sizes  # never more bytes for a lower target
        assert sizes[-1] > 4 * sizes[0]


def test_jpeg2000_db_odd_size(image):
    odd = np.ascontiguousarray(image[:223, :221])
    out = decode_image("jpeg2000-db", encode_image("jpeg2000-db", odd, 30), 221, 223)
    assert out.shape == (223, 221, 3) and psnr(odd, out) > 28


def test_smoothing_saves_bits_only_in_the_quality_driven_mode(images):
    """The point of jpeg2000-db: a smoother input costs fewer bits at the same setting. OpenCV's
    writer targets a rate, so there the same blur leaves the size where it was."""
    for im in images:
        blurred = cv2.GaussianBlur(im, (0, 0), 1.5)
        db = len(encode_image("jpeg2000-db", blurred, 30)) / len(encode_image("jpeg2000-db", im, 30))
        rate = len(encode_image("jpeg2000", blurred, 24)) / len(encode_image("jpeg2000", im, 24))
        assert db < 0.5, db
        assert 0.95 < rate < 1.05, rate


def test_jpeg2000_db_errors_are_clear(image, monkeypatch):
    import PIL.features

    from edgepipe.media.codecs import jpeg2000

    with pytest.raises(EdgepipeError, match="target PSNR in dB"):
        encode_image("jpeg2000-db", image, 0)
    with pytest.raises(ValueError, match="undecodable jpeg2000-db"):
        decode_image("jpeg2000-db", b"garbage")
    jpeg2000._pillow_jpeg2000.cache_clear()
    monkeypatch.setattr(PIL.features, "check", lambda name: False)
    try:
        with pytest.raises(EdgepipeError, match="without JPEG 2000 \\(OpenJPEG\\) support") as err:
            encode_image("jpeg2000-db", image, 30)
        assert "\n" not in str(err.value)
    finally:
        jpeg2000._pillow_jpeg2000.cache_clear()
