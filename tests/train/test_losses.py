"""TV loss on arrays whose total variation is known by hand."""
from __future__ import annotations

import math

import pytest
import torch

from edgepipe.train.losses import total_variation


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)[None, None]


def test_constant_image_has_zero_anisotropic_tv() -> None:
    assert total_variation(torch.full((2, 3, 7, 5), 0.3)).item() == 0.0


def test_two_by_two_checker() -> None:
    x = _t([[0, 1], [1, 0]])
    # horizontal |1-0| + |0-1| = 2, vertical 2; 4 values -> 4 / 4
    assert total_variation(x).item() == pytest.approx(1.0)
    # isotropic: one grid point with dx = 1, dy = 1 -> sqrt(2) / 4
    assert total_variation(x, "isotropic").item() == pytest.approx(math.sqrt(2 + 1e-6) / 4)


def test_horizontal_ramp() -> None:
    x = _t([[0, 0.25, 0.5, 0.75]] * 3)
    # 3 rows x 3 steps of 0.25, no vertical change, 12 values
    assert total_variation(x).item() == pytest.approx(2.25 / 12)
    # isotropic on the 2 x 3 grid: 6 points of |dx| = 0.25
    assert total_variation(x, "isotropic").item() == pytest.approx(6 * math.sqrt(0.0625 + 1e-6) / 12)


def test_checkerboard_is_normalised_per_pixel() -> None:
    """A 0/1 checkerboard of H x W has H(W-1) + (H-1)W unit steps; per value that tends to 2."""
    for h, w in ((4, 4), (16, 32), (64, 64)):
        i = torch.arange(h)[:, None] + torch.arange(w)[None, :]
        x = (i % 2).double()[None, None].repeat(2, 3, 1, 1)
        expected = (h * (w - 1) + (h - 1) * w) / (h * w)
        assert total_variation(x).item() == pytest.approx(expected)


def test_gradient_smooths() -> None:
    """A step down the TV gradient makes a noisy image smoother."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    tv = total_variation(x)
    tv.backward()
    with torch.no_grad():
        assert total_variation(x - 0.01 * x.grad / x.grad.abs().max()).item() < tv.item()


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        total_variation(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError):
        total_variation(torch.zeros(1, 3, 4, 4), "l2")
