"""The label-free camera-frame term (--frames, --lambda-frames): which frames train, deterministic crops, the
divergence it adds, and its bad input in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgepipe.core.datasets import read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.media.sources import FrameShaper
from edgepipe.models.ed import EDConfig, EncoderDecoder, read_checkpoint
from edgepipe.train.frames import TAIL, FramePool, frames_divergence, read_clip
from edgepipe.train.loop import TrainConfig, train


def _write_clip(path: Path, images: list[np.ndarray]) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        stream.options = {"qscale": "2"}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture
def clip(tmp_path, small_val_folder) -> Path:
    """10 real photos as a 160x96 clip: frame i is photo i, so which frames train can be told apart."""
    images = [FrameShaper((160, 96))(read_rgb(p)) for p in sorted(small_val_folder.glob("*/*"))[:10]]
    return _write_clip(tmp_path / "camera.mp4", images)


def test_only_the_head_of_each_clip_trains_and_crops_repeat(clip):
    every_frame = read_clip(str(clip), 1)
    assert every_frame.shape == (10, 96, 160, 3)
    pool = FramePool((str(clip),), crop=48, batch_size=6, seed=3, every=1)
    assert len(pool.frames) == int(10 * (1 - TAIL)) == 7
    for kept, frame in zip(pool.frames, every_frame):
        np.testing.assert_array_equal(kept, frame)
    a, b = pool.batch(5), FramePool((str(clip),), crop=48, batch_size=6, seed=3, every=1).batch(5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 48, 48, 3) and not np.array_equal(a, pool.batch(6))
    # every crop comes from a training frame (or its mirror), never from the tail
    heads = [f for f in pool.frames] + [f[:, ::-1] for f in pool.frames]
    for crop in a:
        assert any(_contains(frame, crop) for frame in heads)


def _contains(frame: np.ndarray, crop: np.ndarray) -> bool:
    h, w = crop.shape[:2]
    for top in range(frame.shape[0] - h + 1):
        rows = frame[top:top + h]
        for left in range(frame.shape[1] - w + 1):
            if np.array_equal(rows[:, left:left + w], crop):
                return True
    return False


def test_the_divergence_is_zero_for_the_identity_and_trains_toward_it(clip, recognizer):
    """An ED whose output is its input gives the recognizer's own answer: KL 0. A fresh plain encoder-decoder (no
    bypass: its output starts far from its input) does not, and steps on the term alone bring it down."""
    pool = FramePool((str(clip),), crop=64, batch_size=4, seed=0, every=1)
    torch.manual_seed(0)
    model = EncoderDecoder(EDConfig(bypass=False))
    identity = lambda x: x  # noqa: E731
    assert float(frames_divergence(identity, recognizer, pool, None, 0, "cpu")) == pytest.approx(0.0, abs=1e-6)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    before = float(frames_divergence(model, recognizer, pool, None, 0, "cpu").detach())
    for _ in range(15):
        loss = frames_divergence(model, recognizer, pool, None, 0, "cpu")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(frames_divergence(model, recognizer, pool, None, 0, "cpu").detach()) < 0.92 * before  # 3.96 -> 3.42 when written


def test_training_with_frames_logs_the_term_and_resumes_exactly(small_val_folder, clip, tmp_path):
    def cfg(out, **kw):
        return TrainConfig(data=str(small_val_folder), out=str(out), crop=48, batch_size=4, progress=False,
                           checkpoint_every=1, threads=2, frames=str(clip), lambda_frames=2.0, epochs=3, **kw)

    train(cfg(tmp_path / "a.pt", max_steps=3, codec="jpeg:20-40"))
    train(cfg(tmp_path / "b.pt", max_steps=2, codec="jpeg:20-40"))
    train(cfg(tmp_path / "b.pt", max_steps=3, codec="jpeg:20-40", resume=True))
    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert any(row.get("train_frames", 0) > 0 for row in a["history"])
    assert "train_frames" in (tmp_path / "a.csv").read_text().splitlines()[0]


def test_frames_and_validation_data_together(small_val_folder, clip, tmp_path):
    """The validation set's frames and the camera pool are two things (they once shared a name in the loop)."""
    cfg = TrainConfig(data=str(small_val_folder), out=str(tmp_path / "v.pt"), crop=48, batch_size=4, progress=False,
                      threads=2, frames=str(clip), lambda_frames=1.0, max_steps=2, val_data=str(small_val_folder),
                      val_limit=4, bpp_limit=1)
    result = train(cfg)
    assert result["stopped"] == "max-steps" and result["train_frames"] > 0 and 0 <= result["top1_ed"] <= 1


def test_frames_codec_codes_the_camera_frames_only(small_val_folder, clip, tmp_path, monkeypatch):
    """With --frames-codec the photos keep --codec's turns and the camera frames go through the other ranges; each
    step codes the photos first, then the frames. Without it both take --codec's turn."""
    from edgepipe.train.codec_loop import CodecRoundTrip

    calls: list[str] = []
    real = CodecRoundTrip.__call__

    def recording(self, frames, codec, setting):
        calls.append(f"{codec}:{setting}")
        return real(self, frames, codec, setting)

    monkeypatch.setattr(CodecRoundTrip, "__call__", recording)

    def cfg(out, **kw):
        return TrainConfig(data=str(small_val_folder), out=str(tmp_path / out), crop=48, batch_size=4, progress=False,
                           threads=2, codec_workers=2, frames=str(clip), lambda_frames=1.0, max_steps=3,
                           codec="jpeg:20-40,jpeg2000-db:25-25", **kw)

    train(cfg("split.pt", frames_codec="hevc:40-40"))
    assert [c.split(":")[0] for c in calls[0::2]] == ["jpeg", "jpeg2000-db", "jpeg"]
    assert calls[1::2] == ["hevc:40"] * 3
    calls.clear()
    train(cfg("same.pt"))
    assert calls[0::2] == calls[1::2] and len(calls) == 6
    with pytest.raises(EdgepipeError, match=r"other settings \(frames_codec: hevc:40-40 -> None\)"):
        train(cfg("split.pt", resume=True))


@pytest.mark.parametrize("kw, phrase", [
    (dict(frames="x.mp4", lambda_frames=1.0, frames_codec="hevc:31-47"), "--frames-codec needs --codec"),
    (dict(codec="jpeg:5-40", frames_codec="hevc:31-47"), "--frames-codec needs --frames"),
    (dict(frames="x.mp4", lambda_frames=1.0, codec="jpeg:5-40", frames_codec="h264:3"), "codec in the loop must be"),
    (dict(frames="x.mp4", lambda_frames=1.0, codec="jpeg:5-40", frames_codec=" "), "--frames-codec is empty"),
    (dict(frames="x.mp4"), "--frames and --lambda-frames go together"),
    (dict(lambda_frames=1.0), "--frames and --lambda-frames go together"),
    (dict(frames="x.mp4", lambda_frames=-1.0), "--lambda-frames must be >= 0"),
    (dict(frames_view="monitor"), "--frames-view needs --frames"),
    (dict(frames="x.mp4", lambda_frames=1.0, frames_view="zoom"), "--frames-view must be one of native, monitor"),
    (dict(frames_rescale_min=0.5), "--frames-rescale-min needs --frames"),
])
def test_bad_frame_settings_are_one_line(kw, phrase):
    with pytest.raises(EdgepipeError, match=phrase):
        TrainConfig(data="d", out="o", **kw)


def test_a_file_that_is_not_a_video_is_one_line(tmp_path, small_val_folder):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    with pytest.raises(EdgepipeError, match="--frames: .*notes.mp4 is not a video"):
        FramePool((str(notes),))
    clip = _write_clip(tmp_path / "small.mp4", [np.zeros((32, 48, 3), np.uint8)] * 4)
    with pytest.raises(EdgepipeError, match="nothing to crop 128x128"):
        FramePool((str(clip),), crop=128, every=1)
    with pytest.raises(EdgepipeError, match="--frames nope.mp4: no such video file"):
        FramePool(("nope.mp4",))
    for zoom in (0.05, 1.5):
        with pytest.raises(EdgepipeError, match=r"--frames-rescale-min must be in 0.1..1"):
            FramePool((str(clip),), rescale_min=zoom)


@pytest.fixture
def wide_clip(tmp_path, small_val_folder) -> Path:
    """10 real photos as a 400x240 clip: the monitor's centre-crop view shrinks it by 224/240."""
    images = [FrameShaper((400, 240))(read_rgb(p)) for p in sorted(small_val_folder.glob("*/*"))[:10]]
    return _write_clip(tmp_path / "wide.mp4", images)


def test_the_monitor_view_cuts_larger_crops_and_shrinks_them_as_the_monitor_does(wide_clip):
    """The ED and the codec get native crops of 64 * 240 / 224 -> 72 pixels; the recognizer reads both sides at 64,
    shrunk the way the monitor's centre-crop view shrinks a frame."""
    import cv2

    from edgepipe.train.frames import native_side, shrink

    pool = FramePool((str(wide_clip),), crop=64, batch_size=3, seed=1, every=1, view="monitor")
    assert pool.side == native_side(64, (240, 400), "monitor") == 72
    assert FramePool((str(wide_clip),), crop=64, every=1).side == 64
    batch = pool.batch(0)
    assert batch.shape == (3, 72, 72, 3)
    seen: list[tuple[int, ...]] = []

    def recognizer(x):
        seen.append(tuple(x.shape))
        return x.mean(dim=(2, 3)) * 10

    class Recording(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x * 0.5

    divergence = frames_divergence(Recording(), recognizer, pool, None, 0, "cpu")
    assert seen == [(3, 3, 72, 72), (3, 3, 64, 64), (3, 3, 64, 64)] and float(divergence) > 0
    shrunk = shrink(torch.from_numpy(batch).permute(0, 3, 1, 2).float(), 64).permute(0, 2, 3, 1).numpy()
    monitor = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in batch]).astype(np.float32)
    assert np.abs(shrunk - monitor).max() <= 1.0  # cv2 rounds to whole grey levels


def test_the_monitor_view_trains_and_a_resume_cannot_change_it(small_val_folder, wide_clip, tmp_path):
    def cfg(**kw):
        return TrainConfig(data=str(small_val_folder), out=str(tmp_path / "m.pt"), crop=48, batch_size=4,
                           progress=False, threads=2, codec_workers=2, frames=str(wide_clip), lambda_frames=1.0,
                           codec="hevc:40-40", **kw)

    result = train(cfg(max_steps=2, frames_view="monitor"))
    assert result["train_frames"] > 0
    assert read_checkpoint(tmp_path / "m.pt")["args"]["frames_view"] == "monitor"
    with pytest.raises(EdgepipeError, match=r"other settings \(frames_view: monitor -> native\)"):
        train(cfg(max_steps=3, resume=True))


def test_a_clip_smaller_than_the_view_is_enlarged_as_the_monitor_enlarges_it(clip):
    """A 160x96 clip: the centre-crop view enlarges it by 224/96, so 48-pixel views come from 24-pixel crops,
    enlarged bilinearly as cv2.INTER_LINEAR does."""
    import cv2

    from edgepipe.train.frames import shrink

    pool = FramePool((str(clip),), crop=48, batch_size=3, seed=2, every=1, view="monitor")
    assert pool.side == 24
    batch = pool.batch(0)
    enlarged = shrink(torch.from_numpy(batch).permute(0, 3, 1, 2).float(), 48).permute(0, 2, 3, 1).numpy()
    monitor = np.stack([cv2.resize(c, (48, 48), interpolation=cv2.INTER_LINEAR) for c in batch]).astype(np.float32)
    assert enlarged.shape == (3, 48, 48, 3) and np.abs(enlarged - monitor).max() <= 1.0


def test_clips_that_need_different_crops_are_one_line(wide_clip, clip):
    with pytest.raises(EdgepipeError, match="--frames-view monitor: the clips need crops of different sizes"):
        FramePool((str(wide_clip), str(clip)), crop=48, every=1, view="monitor")


def test_zoomed_crops_are_area_filtered_cuts_of_the_training_frames(wide_clip):
    """--frames-rescale-min: each crop is a larger square of a training frame, area-filtered down to the crop's
    side; the same for the same (seed, step); and without it the crops are exactly what they were before."""
    import cv2

    pool = FramePool((str(wide_clip),), crop=48, batch_size=8, seed=4, every=1, rescale_min=0.25)
    batch = pool.batch(3)
    assert batch.shape == (8, 48, 48, 3)
    np.testing.assert_array_equal(batch, FramePool((str(wide_clip),), crop=48, batch_size=8, seed=4, every=1,
                                                   rescale_min=0.25).batch(3))
    # Re-draw what batch() drew, and rebuild each crop from its frame.
    rng = np.random.default_rng([4, 3, 13])
    zoomed = 0
    for crop, i in zip(batch, rng.integers(0, len(pool.frames), 8)):
        image = pool.frames[int(i)]
        scale = float(rng.uniform(0.25, 1.0))
        cut = min(240, round(48 / scale))
        top, left = int(rng.integers(0, 240 - cut + 1)), int(rng.integers(0, 400 - cut + 1))
        want = cv2.resize(image[top:top + cut, left:left + cut], (48, 48), interpolation=cv2.INTER_AREA)
        want = want[:, ::-1] if rng.random() < 0.5 else want
        np.testing.assert_array_equal(crop, want)
        zoomed += cut > 60
    assert zoomed >= 4  # most crops come from squares well over the crop's side
    # rescale_min 1 draws nothing more: the crops of every run trained before the option are unchanged.
    plain = FramePool((str(wide_clip),), crop=48, batch_size=8, seed=4, every=1).batch(3)
    rng = np.random.default_rng([4, 3, 13])
    for crop, i in zip(plain, rng.integers(0, len(pool.frames), 8)):
        top, left = int(rng.integers(0, 240 - 48 + 1)), int(rng.integers(0, 400 - 48 + 1))
        want = pool.frames[int(i)][top:top + 48, left:left + 48]
        np.testing.assert_array_equal(crop, want[:, ::-1] if rng.random() < 0.5 else want)


def test_a_zoomed_run_trains_and_a_resume_cannot_change_the_zoom(small_val_folder, wide_clip, tmp_path):
    def cfg(**kw):
        return TrainConfig(data=str(small_val_folder), out=str(tmp_path / "m.pt"), crop=48, batch_size=4,
                           progress=False, threads=2, codec_workers=2, frames=str(wide_clip), lambda_frames=1.0,
                           codec="hevc:40-40", **kw)

    assert train(cfg(max_steps=2, frames_rescale_min=0.5))["train_frames"] > 0
    assert read_checkpoint(tmp_path / "m.pt")["args"]["frames_rescale_min"] == 0.5
    with pytest.raises(EdgepipeError, match=r"other settings \(frames_rescale_min: 0.5 -> 1.0\)"):
        train(cfg(max_steps=3, resume=True))
