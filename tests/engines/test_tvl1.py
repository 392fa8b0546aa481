"""TV-L1 on cases whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from edgepipe.engines.tvl1 import TVL1Engine, total_variation, tvl1, tvl1_rgb


def _disc(radius: float, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size // 2) ** 2 + (xx - size // 2) ** 2) <= radius ** 2).astype(np.float32)


def test_constant_image_is_a_fixed_point():
    f = np.full((3, 20, 30), 0.37, np.float32)
    np.testing.assert_array_equal(tvl1(f, 1.0, 50), f)


@pytest.mark.parametrize("radius,lam,kept", [(6, 0.6, True), (6, 0.2, False), (3, 1.0, True), (3, 0.4, False)])
def test_disc_is_kept_or_erased_by_its_scale(radius, lam, kept):
    # TV-L1 theory: a disc of radius r survives intact when r > 2/lam and vanishes when r < 2/lam,
    # whatever its contrast.
    f = 0.8 * _disc(radius)
    u = tvl1(f, lam, 300)
    inside = _disc(radius) > 0
    core = _disc(radius - 1.5) > 0  # a digital disc's single-pixel tips are corners TV-L1 may cut
    if kept:
        assert np.abs(u[core] - 0.8).max() < 0.02
        assert u[inside].mean() > 0.6
    else:
        assert u[inside].mean() < 0.1
    far = _disc(radius + 2) == 0
    assert np.abs(u[far]).max() < 1e-3  # the background away from the disc never moves


def test_denoising_lowers_tv_keeps_mean_and_range():
    rng = np.random.default_rng(0)
    clean = np.repeat(np.linspace(0.2, 0.8, 48, dtype=np.float32)[None, :], 48, axis=0)
    noisy = np.clip(clean + rng.normal(0, 0.08, clean.shape).astype(np.float32), 0, 1)
    u = tvl1(noisy, 1.0, 200)
    assert total_variation(u) < 0.5 * total_variation(noisy)
    assert abs(u.mean() - noisy.mean()) < 0.01
    assert u.min() >= noisy.min() - 1e-4 and u.max() <= noisy.max() + 1e-4
    assert np.abs(u - clean).mean() < np.abs(noisy - clean).mean()  # it actually denoises


def test_large_weight_changes_little():
    rng = np.random.default_rng(1)
    f = rng.random((16, 16)).astype(np.float32)
    assert np.abs(tvl1(f, 50.0, 100) - f).max() < 1e-3  # fidelity dominates: u == f


def test_uint8_wrapper_keeps_shape_and_handles_odd_sizes():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    out = TVL1Engine(1.0, 20).run(frames)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert total_variation(out.astype(np.float64)) < total_variation(frames.astype(np.float64))
    with pytest.raises(ValueError):
        tvl1_rgb(frames[..., 0])
    with pytest.raises(ValueError):
        tvl1(frames[0, ..., 0].astype(np.float32), lam=0)
