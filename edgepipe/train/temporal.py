"""A temporal-stability term: the ED's output must change between two frames only as its input does.

Training sees still crops, but a camera sends a stream whose P-frames code the *difference* to the last
frame. An ED whose residual r(x) = ED(x) - x jumps when the input moves by a fraction of a pixel or gets
new sensor noise turns a static scene into a flickering one, and inter prediction then finds less to
reuse (measured: `ours` cost +12 % bits at QP 31 with GOP 20 on a fixed-camera clip, against +1-5 % intra).

The next frame is simulated from the crop itself: a random sub-pixel translation (bilinear) plus fresh
Gaussian noise. With x' = shift(x) + n and y = ED(x), y' = ED(x'):

    T = mean over the interior of ( (y' - x') - shift(y - x) )^2

zero when the residual moves with the content and ignores the noise, so P-frames cost what they cost
without the ED. A margin at the border is left out: the translation reflects there.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MAX_SHIFT = 1.5          # pixels per axis: the motion of a slow object or camera shake between frames
MAX_NOISE = 3.0 / 255    # sensor noise standard deviation, drawn per image in [0, MAX_NOISE]
MARGIN = 4               # border pixels left out of the mean (reflection padding there)


def translate(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move each image (N, C, H, W) by shift[i] = (dx, dy) pixels, bilinear, reflecting at the border.
    Content at (u, v) lands at (u + dx, v + dy)."""
    n, _, h, w = images.shape
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shift[:, 0].to(images) / w
    theta[:, 1, 2] = -2.0 * shift[:, 1].to(images) / h
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def next_frame(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in for the next camera frame of each crop: (x', shift). Random draws come from `generator`
    (on the CPU), so a resumed run draws the same frames."""
    n = x.shape[0]
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * MAX_SHIFT
    sigma = torch.rand(n, 1, 1, 1, generator=generator) * MAX_NOISE
    noise = torch.randn(x.shape, generator=generator) * sigma
    moved = translate(x, shift.to(x.device))
    return (moved + noise.to(x.device)).clamp(0.0, 1.0), shift.to(x.device)


def temporal_instability(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:
    """T above for a batch: x the crops, y = model(x) (already computed, gradients kept)."""
    x_next, shift = next_frame(x, generator)
    y_next = model(x_next)
    expected = translate(y - x, shift)
    error = (y_next - x_next) - expected
    m = MARGIN if min(x.shape[-2:]) > 4 * MARGIN else 0
    if m:
        error = error[..., m:-m, m:-m]
    return error.pow(2).mean()
