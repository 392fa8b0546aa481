"""x265's thread budget: the parameters, that libx265 takes them (its own log says so), and that neither the
budget nor the copy-free frame hand-over changes a byte of the stream."""
from __future__ import annotations

from fractions import Fraction

import cv2
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.media.codecs import HevcEncoder
from edgepipe.media.codecs.hevc import _pad_even, x265_params


@pytest.fixture(scope="module")
def clip(small_val_folder):
    """Six real frames: three photos, each twice, so P-frames have something to predict."""
    images = [read_rgb(i.path) for i in list_labelled_images(small_val_folder)[:3]]
    return [cv2.resize(im, (240, 160), interpolation=cv2.INTER_AREA) for im in images for _ in range(2)]


def test_pool_threads_keep_wavefronts_and_one_frame_thread():
    assert x265_params(32, None, 30, pool_threads=2).endswith(":pools=2:frame-threads=1")
    assert "pools=none" in x265_params(32, None, 1, threads=1)  # evaluation's single-threaded stills
    assert "pools" not in x265_params(32, None, 30)  # no budget: x265's default pool
    with pytest.raises(ValueError):
        x265_params(32, None, 30, threads=1, pool_threads=1)
    with pytest.raises(ValueError):
        x265_params(32, None, 30, pool_threads=0)


def test_the_encoder_is_opened_with_the_budget():
    enc = HevcEncoder(64, 64, pool_threads=1)
    assert ":pools=1:frame-threads=1" in enc.options["x265-params"]
    assert enc.options["tune"] == "zerolatency"


@pytest.mark.parametrize("pool_threads", [1, 2])
def test_libx265_takes_the_pool_size(pool_threads, capfd, clip):
    """x265 reports its pool and frame threads on stderr at log level info (PyAV would not warn on a bad one)."""
    import av

    h, w = clip[0].shape[:2]
    capfd.readouterr()
    ctx = av.CodecContext.create("libx265", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = w, h, "yuv420p", Fraction(1, 1000)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency",
                   "x265-params": x265_params(32, None, 30, pool_threads=pool_threads) + ":log-level=info"}
    ctx.open()
    for i, image in enumerate(clip[:3]):
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        frame.pts = i
        ctx.encode(frame)
    ctx.encode(None)
    del ctx
    log = capfd.readouterr().err
    assert f"Thread pool created using {pool_threads} threads" in log, log
    assert "frame threads / pool features       : 1 / wpp" in log, log


def _stream(clip, **kwargs) -> list[bytes]:
    enc = HevcEncoder(clip[0].shape[1], clip[0].shape[0], **kwargs)
    return [p.data for image in clip for p in enc.encode(image)] + [p.data for p in enc.flush()]


def _stream_as_before(clip, **kwargs) -> list[bytes]:
    """The hand-over as it was: from_ndarray, which copies the I420 frame once more."""
    import av

    enc = HevcEncoder(clip[0].shape[1], clip[0].shape[0], **kwargs)
    out = []
    for pts, image in enumerate(clip):
        vf = av.VideoFrame.from_ndarray(cv2.cvtColor(_pad_even(image), cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        vf.pts = pts
        if enc.gop <= 0:
            vf.pict_type = av.video.frame.PictureType.I
        out += [bytes(p) for p in enc._ctx.encode(vf)]
    return out + [bytes(p) for p in enc._ctx.encode(None)]


@pytest.mark.parametrize("size", [(240, 160), (226, 226), (63, 37)])  # 226 and 37 -> 38: heights PyAV cannot wrap
@pytest.mark.parametrize("settings", [{}, {"gop": 0, "preset": "medium"}])
def test_same_bytes_as_before_whatever_the_pool(clip, size, settings):
    frames = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in clip]
    before = _stream_as_before(frames, **settings)
    assert len(before) == len(frames)
    assert _stream(frames, **settings) == before
    for pool_threads in (1, 2):
        assert _stream(frames, pool_threads=pool_threads, **settings) == before
    assert sum(map(len, before)) > 0
