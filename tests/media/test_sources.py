import os
import time
from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.datasets import read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.labels import synset_to_index
from edgepipe.media.frames import ReadStatus
from edgepipe.media.sources import (
    FolderSource,
    FrameShaper,
    LiveSource,
    VideoFileSource,
    bgr_to_rgb,
    open_source,
    parse_size,
    set_opencv_threads,
)


def drain(source, limit=10_000):
    frames = []
    for _ in range(limit):
        status, frame = source.read()
        if status is ReadStatus.EOS:
            return frames
        if status is ReadStatus.OK:
            frames.append(frame)
    raise AssertionError("source did not end")


def test_folder_source_replays_every_image_with_its_label(small_val_folder):
    source = open_source(f"folder:{small_val_folder}", size=(224, 224))
    frames = drain(source)
    assert len(frames) == 12
    expected = sorted(synset_to_index()[p.parent.name] for p in Path(small_val_folder).glob("*/*"))
    assert sorted(f.label for f in frames) == expected
    assert [f.index for f in frames] == list(range(12))
    assert all(f.image.shape == (224, 224, 3) and f.image.dtype == np.uint8 for f in frames)


def test_folder_source_skips_and_counts_unreadable_images(tmp_path, small_val_folder):
    synset = sorted(p.name for p in small_val_folder.iterdir())[0]
    (tmp_path / synset).mkdir()
    good = next((small_val_folder / synset).iterdir())
    (tmp_path / synset / "a.JPEG").write_bytes(good.read_bytes())
    (tmp_path / synset / "b.JPEG").write_bytes(b"not a jpeg at all")
    (tmp_path / synset / "c.JPEG").write_bytes(good.read_bytes()[:200])  # truncated
    source = FolderSource(tmp_path, FrameShaper(None))
    frames = drain(source)
    assert len(frames) >= 1 and source.skipped + len(frames) == 3
    assert source.skipped >= 1


def test_video_file_source_decodes_real_clip_and_ends(video_clip):
    source = open_source(str(video_clip), size=(384, 216))
    assert source.fps == pytest.approx(12.5, abs=0.1)
    assert not source.live
    frames = drain(source)
    assert len(frames) == 377
    assert frames[0].image.shape == (216, 384, 3)
    assert frames[0].label == -1


def test_crop_keeps_aspect_and_makes_even_sizes():
    image = np.zeros((432, 768, 3), np.uint8)
    image[:, 96:672] = 255  # a centred 576-wide bright square region
    out = FrameShaper((225, 225), crop=True)(image)
    assert out.shape == (224, 224, 3)
    assert out.min() == 255  # the crop took the centre square only


def test_live_source_reopens_with_backoff_after_failure(video_clip):
    # OpenCV reading a file as a "stream": at its end the read fails, exactly like an RTSP drop.
    source = LiveSource(str(video_clip), FrameShaper((128, 72)), backoff=(0.05, 0.2))
    assert source.live
    ok = timeouts = 0
    deadline = time.monotonic() + 60
    while source.reconnects < 1 and time.monotonic() < deadline:
        status, _ = source.read()
        ok += status is ReadStatus.OK
        timeouts += status is ReadStatus.TIMEOUT
    assert source.reconnects == 1
    assert ok >= 370 and timeouts >= 1
    status, frame = source.read()
    assert status is ReadStatus.OK and frame.image.shape == (72, 128, 3)
    source.close()


@pytest.mark.parametrize("spec", ["nonsense", "ftp:/x", "smb://nas/clip.mp4"])
def test_unknown_source_is_one_clear_error(spec):
    with pytest.raises(EdgepipeError, match="unknown source"):
        open_source(spec)


@pytest.mark.parametrize("spec", ["/no/such/file.mp4", "clip.mp4", "file:///no/such/file.mp4", "/dev/video63", "63"])
def test_missing_source_says_it_does_not_exist(spec):
    if os.path.exists("/dev/video63"):
        pytest.skip("/dev/video63 exists here")
    with pytest.raises(EdgepipeError, match="does not exist"):
        open_source(spec)


def test_file_that_is_no_video_says_so(tmp_path, small_val_folder):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(EdgepipeError, match="is not a video or image FFmpeg can read"):
        open_source(str(text))
    image = next(small_val_folder.glob("*/*"))  # a single image is a one-frame video to FFmpeg
    assert len(drain(open_source(str(image)))) == 1


def _write_clip(path: Path, images: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def test_looping_video_file_replays_from_the_start(tmp_path, small_val_folder):
    images = [FrameShaper((96, 64))(read_rgb(p)) for p in sorted(small_val_folder.glob("*/*"))[:4]]
    clip = tmp_path / "four.mp4"
    _write_clip(clip, images)
    source = open_source(str(clip), loop=True)
    frames = [source.read() for _ in range(3 * len(images) + 1)]  # past the end three times
    source.close()
    assert all(status is ReadStatus.OK for status, _ in frames)
    assert [f.index for _, f in frames] == list(range(len(frames)))
    first_pass = [f.image for _, f in frames[:4]]
    for start in (4, 8):
        for a, b in zip(first_pass, [f.image for _, f in frames[start:start + 4]]):
            np.testing.assert_array_equal(a, b)  # the rewind decodes the same pictures again
    assert np.abs(first_pass[0].astype(int) - images[0]).mean() < 12  # and they are the clip's pictures


def test_folder_without_prefix_says_how(small_val_folder):
    with pytest.raises(EdgepipeError, match="folder:"):
        open_source(str(small_val_folder))


def test_empty_or_unlabelled_folder_is_an_error(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "x.jpg").write_bytes(b"")
    with pytest.raises(EdgepipeError, match="no labelled images"):
        open_source(f"folder:{tmp_path}")
    with pytest.raises(EdgepipeError, match="not found"):
        open_source(f"folder:{tmp_path / 'missing'}")


def test_parse_size():
    assert parse_size("224x160") == (224, 160)
    assert parse_size(None) is None
    assert parse_size("8192x16") == (8192, 16)
    with pytest.raises(EdgepipeError):
        parse_size("big")
    for text in ("99999x99999", "8193x720", "15x720"):
        with pytest.raises(EdgepipeError, match="each side must be 16..8192"):
            parse_size(text)


# --- thread budgets and copies (issue 13) -------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 3])
def test_video_file_decoder_takes_its_threads(video_clip, threads):
    source = open_source(str(video_clip), size=(128, 72), threads=threads)
    try:
        assert source._container.streams.video[0].codec_context.thread_count == threads
        assert source.read()[0] is ReadStatus.OK
    finally:
        source.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_stream_decoder_takes_its_threads(video_clip, threads):
    import cv2

    source = LiveSource(str(video_clip), FrameShaper((128, 72)), threads=threads)  # FFmpeg back end, as rtsp://
    try:
        assert source._cap.get(cv2.CAP_PROP_N_THREADS) == threads
        assert source.read()[0] is ReadStatus.OK
    finally:
        source.close()


def test_opencv_threads_are_set_and_put_back():
    import cv2

    before = set_opencv_threads(1)
    try:
        assert cv2.getNumThreads() == 1
        assert set_opencv_threads(None) == 1 and cv2.getNumThreads() == 1  # None leaves it
    finally:
        set_opencv_threads(before)
    assert cv2.getNumThreads() == before


@pytest.mark.parametrize("size, crop", [((224, 224), True), ((640, 360), False), ((300, 200), False), (None, False)])
def test_camera_frames_are_swapped_after_shaping_with_the_same_pixels(small_val_folder, size, crop):
    """A camera's BGR frame: shaped, then swapped once at its final size, equals swapping first (as before)."""
    rgb = read_rgb(next(p for p in sorted(Path(small_val_folder).rglob("*")) if p.is_file()))
    bgr = np.ascontiguousarray(rgb[:-1, :-3, ::-1])  # odd sizes: the shaper trims them
    shaper = FrameShaper(size, crop)
    out = bgr_to_rgb(shaper(bgr))
    assert out.flags.c_contiguous
    assert np.array_equal(out, shaper(np.ascontiguousarray(bgr[..., ::-1])))


def _first_frame_both_ways(video_clip, shaper):
    """The clip's first frame through VideoFileSource (4:2:0 planes shaped, then converted) and through
    FFmpeg's full-size RGB conversion and the shaper (the general path)."""
    import av

    source = VideoFileSource(video_clip, shaper)
    fast = source.read()[1].image
    source.close()
    with av.open(str(video_clip)) as container:
        frame = next(container.decode(video=0))
        assert (frame.format.name, frame.colorspace, frame.color_range) == ("yuv420p", 6, 1)  # BT.601, limited
        general = shaper(frame.to_ndarray(format="rgb24"))
    return fast, general


@pytest.mark.parametrize("size, crop", [((224, 224), True), ((226, 226), True), ((320, 180), False)])
def test_video_frames_are_shaped_in_their_planes_with_the_same_picture(video_clip, size, crop):
    fast, general = _first_frame_both_ways(video_clip, FrameShaper(size, crop))
    assert fast.shape == general.shape == (size[1], size[0], 3) and fast.dtype == np.uint8
    assert fast.flags.c_contiguous
    diff = np.abs(fast.astype(int) - general)
    # the two differ only in how chroma is interpolated: under a level on average, a few at colour edges
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_upscaled_video_frames_take_the_general_path(video_clip):
    fast, general = _first_frame_both_ways(video_clip, FrameShaper((1280, 720)))
    np.testing.assert_array_equal(fast, general)


def test_plane_shaping_declines_odd_geometry_and_upscaling():
    y, uv = np.zeros((432, 768), np.uint8), np.full((216, 384), 128, np.uint8)
    assert FrameShaper((224, 224), crop=True).from_i420(y, uv, uv) is not None
    assert FrameShaper(None).from_i420(y, uv, uv) is None
    assert FrameShaper((1280, 720)).from_i420(y, uv, uv) is None  # upscaling: convert first
    odd = np.zeros((431, 767), np.uint8)
    assert FrameShaper((224, 224)).from_i420(odd, uv, uv) is None


def test_plane_shaping_converts_a_known_colour():
    # BT.601 limited range: Y 81, U 90, V 240 is pure red (255, 0, 0) to within a level
    y = np.full((120, 160), 81, np.uint8)
    u, v = np.full((60, 80), 90, np.uint8), np.full((60, 80), 240, np.uint8)
    rgb = FrameShaper((64, 48)).from_i420(y, u, v)
    assert rgb.shape == (48, 64, 3)
    np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), [255, 0, 0], atol=2)
