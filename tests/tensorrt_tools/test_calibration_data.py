"""Calibration batches from real images: shape, dtype, and the same pixels the capture loop would feed."""
from __future__ import annotations

import numpy as np
import pytest

from edgepipe.core.datasets import read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.base import to_model_input
from edgepipe.tensorrt.calibration.data import CalibrationBatches, list_images, spread


def test_batches_have_the_calibration_shape(small_val_folder):
    batches = CalibrationBatches(small_val_folder, size=(320, 240), batch_size=4, max_images=None)
    out = list(batches)
    assert batches.shape == (4, 3, 240, 320)
    assert len(out) == batches.max_batches == 3  # 12 images
    for b in out:
        assert b.dtype == np.float32 and b.shape == (4, 3, 240, 320) and b.flags.c_contiguous
        assert 0.0 <= b.min() and b.max() <= 1.0 and b.std() > 0.05  # real pictures, not blank
    assert list(batches)[0].tobytes() == out[0].tobytes()  # iterating again starts over


def test_batches_equal_the_capture_loops_frames(small_val_folder):
    """The capture loop replays this folder through its FrameShaper and the engine's to_model_input."""
    from edgepipe.media.frames import ReadStatus
    from edgepipe.media.sources import open_source

    size = (256, 192)
    source = open_source(f"folder:{small_val_folder}", size=size, crop=True)
    frames = []
    while True:
        status, frame = source.read()
        if status is ReadStatus.EOS:
            break
        frames.append(frame.image)
    source.close()
    capture = to_model_input(np.stack(frames))
    calib = np.concatenate(list(CalibrationBatches(small_val_folder, size, batch_size=3, max_images=None)))
    assert calib.shape == capture.shape == (12, 3, 192, 256)
    np.testing.assert_array_equal(calib, capture)


def test_centre_crop_keeps_the_middle(small_val_folder):
    path = list_images(small_val_folder)[0]
    image = read_rgb(path)
    h, w = image.shape[:2]
    side = min(h, w)
    # a square calibration size at the image's own short side: the crop is the centre square, unscaled
    side -= side % 2
    batch = CalibrationBatches(small_val_folder, (side, side), batch_size=1, max_images=1)
    x = next(iter(batch))
    y0, x0 = (h - side) // 2, (w - side) // 2
    expected = to_model_input(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])[None])
    np.testing.assert_allclose(x, expected, atol=1 / 255 + 1e-6)  # rounding of the crop window only


def test_flat_folder_with_a_broken_file(tmp_path, small_val_folder, caplog):
    for i, src in enumerate(list_images(small_val_folder)[:5]):
        (tmp_path / f"img{i}.jpg").symlink_to(src)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    batches = CalibrationBatches(tmp_path, (224, 224), batch_size=2, max_images=None)
    assert len(batches.paths) == 6
    out = list(batches)
    assert len(out) == 2  # 5 readable images -> two full batches, the fifth dropped
    assert batches.skipped == 1 and "broken.jpg" in caplog.text


def test_spread_takes_every_class(small_val_folder):
    paths = list_images(small_val_folder)
    picked = spread(paths, 4)
    assert len(picked) == 4 and picked[0] == paths[0] and picked[-1] == paths[-1]
    assert len({p.parent.name for p in picked}) == 3
    assert spread(paths, None) == paths and spread(paths, 100) == paths


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=(223, 224)), "even"),
    (dict(batch_size=0), "at least 1"),
    (dict(batch_size=64), "fewer than one calibration batch"),
])
def test_bad_settings_are_one_line(small_val_folder, kwargs, match):
    with pytest.raises(EdgepipeError, match=match):
        CalibrationBatches(small_val_folder, **{"size": (224, 224), "batch_size": 4, **kwargs})


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(EdgepipeError, match="not found"):
        CalibrationBatches(tmp_path / "nope")
    with pytest.raises(EdgepipeError, match="no images"):
        CalibrationBatches(tmp_path)
