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


# --- rate proxy, calibration, distillation, the composed objective --------------------------------

import numpy as np  # noqa: E402

from edgepipe.train.losses import RateCalibration, RecognitionAwareLoss, dct_rate, distillation  # noqa: E402


def test_dct_rate_is_zero_on_flat_images_and_grows_with_detail() -> None:
    flat = torch.full((2, 3, 32, 32), 0.4)
    assert torch.all(dct_rate(flat, 8.0) < 1e-5)  # float rounding of the DCT only
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 3, 32, 32, generator=g)
    weak, strong = dct_rate(0.4 + 0.05 * noise, 8.0), dct_rate(0.4 + 0.3 * noise, 8.0)
    assert torch.all(strong > weak) and torch.all(weak > 0)
    # a coarser quantiser pays fewer bits for the same picture
    assert torch.all(dct_rate(noise, 32.0) < dct_rate(noise, 8.0))
    # differentiable: gradients reach the pixels
    x = noise.clone().requires_grad_(True)
    dct_rate(x, 8.0).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dct_rate_tracks_real_hevc_bytes(real_frames) -> None:
    """Across real images at one QP, the proxy ranks images as libx265 does (log-log correlation)."""
    from edgepipe.engines.base import to_model_input
    from edgepipe.media.codecs import encode_image
    from edgepipe.train.codec_loop import hevc_qstep

    frames = real_frames[0]
    real = np.log([len(encode_image("hevc", f, 37)) for f in frames])
    proxy = np.log(dct_rate(torch.from_numpy(to_model_input(frames)), hevc_qstep(37)).numpy())
    assert np.corrcoef(real, proxy)[0, 1] > 0.8


def test_rate_calibration_follows_measured_ratio() -> None:
    cal = RateCalibration(momentum=0.5)
    assert cal("hevc") == 1.0
    for _ in range(30):
        cal.update("hevc", proxy_bpp=2.0, real_bpp=1.0)
    assert cal("hevc") == pytest.approx(0.5) and cal("jpeg") == 1.0
    cal.update("hevc", proxy_bpp=0.0, real_bpp=1.0)  # nothing to learn from an empty proxy
    assert cal("hevc") == pytest.approx(0.5)


def test_distillation_is_zero_for_equal_outputs_and_positive_otherwise() -> None:
    a = torch.randn(4, 1000)
    assert distillation(a, a, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation(a, torch.randn(4, 1000), 2.0).item() > 0


class _Linear(torch.nn.Module):
    """A tiny frozen 'recognizer' so the objective's bookkeeping is tested without the real network."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def test_objective_sums_its_weighted_terms() -> None:
    torch.manual_seed(0)
    crit = RecognitionAwareLoss(_Linear(), lambda_tv=2.0, lambda_rate=0.5, lambda_mse=3.0, clean_weight=0.25)
    x = torch.rand(4, 3, 16, 16)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    coded = (y + 0.05).clamp(0, 1)
    labels = torch.tensor([0, 1, 2, 3])
    t = crit(y, labels, x=x, coded=coded, rate_step=8.0, rate_scale=0.7)
    expected = t["coded"] + 0.25 * t["ce"] + 2.0 * t["tv"] + 0.5 * t["rate"] + 3.0 * t["mse"]
    torch.testing.assert_close(t["loss"], expected)
    torch.testing.assert_close(t["rate"], dct_rate(y, 8.0).mean() * 0.7)
    t["loss"].backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in crit.recognizer.parameters())  # frozen
    with pytest.raises(ValueError, match="rate_step"):
        crit(y, labels, x=x)
    kd = RecognitionAwareLoss(_Linear(), lambda_tv=0.0, distill_temperature=2.0)
    same = kd(x.clone(), labels, x=x)
    assert same["ce"].item() == pytest.approx(0.0, abs=1e-6)  # ED output == input: nothing to distil


def test_label_scope_dataset_ignores_where_the_mass_outside_the_classes_goes() -> None:
    """CE over the data's classes only: the same as a CE on those columns, unmoved by logits outside them,
    where the CE over all classes is moved."""
    class Fixed(torch.nn.Module):  # a "recognizer" that returns the logits it is given as its input
        def forward(self, z):
            return z.flatten(1)

    classes = [7, 2, 11]
    logits = torch.randn(3, 1, 1, 16)
    labels = torch.tensor([2, 11, 7])
    scoped = RecognitionAwareLoss(Fixed(), lambda_tv=0.0, label_classes=classes)
    full = RecognitionAwareLoss(Fixed(), lambda_tv=0.0)
    want = torch.nn.functional.cross_entropy(logits.flatten(1)[:, [2, 7, 11]], torch.tensor([0, 2, 1]))
    torch.testing.assert_close(scoped(logits, labels)["ce"], want)
    outside = logits.clone()
    outside[..., [0, 1, 3]] += 5.0  # more belief on classes outside the set
    torch.testing.assert_close(scoped(outside, labels)["ce"], want)
    assert full(outside, labels)["ce"].item() > full(logits, labels)["ce"].item() + 1.0
