"""The recognizer-guided pre-transform on real photos through the real codecs: it keeps its fidelity budget, never
codes a picture whose answer is further from the original's than the original's own, and moves the answers."""
from __future__ import annotations

import os

import numpy as np
import pytest

from edgepipe.core.datasets import read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.guidance.guided import GuidanceSettings, GuidedPreTransform, is_guided


def _photos(folder, n: int, side: int) -> np.ndarray:
    import cv2

    paths = []
    for synset in sorted(os.listdir(folder)):
        paths += [folder / synset / name for name in sorted(os.listdir(folder / synset))[:2]]
    return np.stack([cv2.resize(read_rgb(p), (side, side), interpolation=cv2.INTER_AREA) for p in paths[:n]])


def _coded_kl(frames: np.ndarray, originals: np.ndarray, codec: str, setting: int) -> np.ndarray:
    """Per picture: KL from the recognizer's answer on the original to its answer on the coded picture."""
    import torch

    from edgepipe.media.codecs.round_trip import CodecRoundTrip
    from edgepipe.recognition.registry import build_recognizer

    model = build_recognizer("efficientnet-lite0").eval()
    rt = CodecRoundTrip(workers=1)
    decoded, _ = rt(frames, codec, setting)
    rt.close()
    with torch.no_grad():
        def log_p(a):
            return model(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0).log_softmax(1)
        target, coded = log_p(originals), log_p(decoded)
    return (target.exp() * (target - coded)).sum(1).numpy()


def test_spec_parsing_and_its_errors():
    assert GuidanceSettings.parse("guided") == GuidanceSettings()
    assert GuidanceSettings.parse("guided:4") == GuidanceSettings(steps=4)
    assert GuidanceSettings.parse("guided:4@35") == GuidanceSettings(steps=4, psnr_floor_db=35.0)
    assert GuidanceSettings.parse("guided:4@35").model_id != GuidanceSettings.parse("guided:4").model_id
    assert is_guided("guided") and is_guided("guided:2") and not is_guided("guidedx") and not is_guided("ours")
    for bad in ("guided:x", "guided:0", "guided:4@5", "guided:4@abc"):
        with pytest.raises(EdgepipeError, match="guided"):
            GuidanceSettings.parse(bad)


@pytest.mark.parametrize("codec,setting", [("hevc", 47), ("jpeg", 10)])
def test_guided_pictures_keep_the_budget_and_bring_the_coded_answer_back(imagenette_val, codec, setting):
    x = _photos(imagenette_val, 8, 96)
    guide = GuidedPreTransform(GuidanceSettings(steps=3, psnr_floor_db=30.0), threads=1)
    y = guide.run(x, codec, setting)
    guide.close()
    assert y.shape == x.shape and y.dtype == np.uint8
    mse = ((y.astype(np.float64) - x) ** 2).mean(axis=(1, 2, 3))
    assert np.all(mse <= 255.0**2 * 10 ** (-30.0 / 10) * 1.05)  # the PSNR floor (rounding to uint8 aside)
    assert (mse > 0).any()  # it changed some picture
    before, after = _coded_kl(x, x, codec, setting), _coded_kl(y, x, codec, setting)
    assert np.all(after <= before + 1e-4)  # the original is an iterate: no picture is coded further off
    assert after.mean() < 0.8 * before.mean()  # and the answers move back towards the original's


def test_bad_frames_and_codecs_are_one_line():
    guide = GuidedPreTransform(GuidanceSettings(steps=1), threads=1)
    try:
        with pytest.raises(EdgepipeError, match="no model of 'jpeg2000'"):
            guide.run(np.zeros((1, 32, 32, 3), np.uint8), "jpeg2000", 20)
        with pytest.raises(EdgepipeError, match="uint8 RGB"):
            guide.run(np.zeros((1, 32, 32), np.uint8), "hevc", 40)
    finally:
        guide.close()
