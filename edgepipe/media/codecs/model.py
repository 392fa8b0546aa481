"""A differentiable model of the codecs, for gradients through a real round trip.

A real codec has no gradient. Training (edgepipe/train) and the recognizer-guided pre-transform
(edgepipe/guidance) take the forward pass through the real codec and the backward pass through this model:
each codec's quantiser step at a setting, and an 8x8 DCT soft quantisation with 4:2:0 chroma that drops what
the codec would drop (`codec_proxy`), joined by `straight_through`. Needs torch (imported by name only)."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from edgepipe.media.codecs.dct import blocks, jpeg_tables, to_rgb, to_ycbcr, unblocks


def hevc_qstep(qp: float) -> float:
    """HEVC's quantiser step for a QP, on the 0..255 pixel scale: 2^((QP - 4) / 6)."""
    return 2.0 ** ((qp - 4) / 6.0)


def jpeg_qstep(quality: float) -> float:
    """The mean luma quantiser step libjpeg uses at `quality` (its clamped IJG table, see dct.jpeg_tables)."""
    return float(jpeg_tables(int(quality))[0].mean())


# The dead-zone of codec_proxy drops only the coefficients under the step, far less error than uniform rounding
# at that step; 2.5x the uniform-rounding step puts its PSNR within 0.2-1.7 dB of OpenJPEG's at 25-33 dB
# (40 crops of 128^2 from Imagenette val; tests/train/test_codec_loop.py checks it on other crops).
_JPEG2000_STEP_SCALE = 2.5


def jpeg2000_qstep(psnr_db: float) -> float:
    """The step codec_proxy models jpeg2000-db with at a target PSNR: JPEG 2000 has no step of its own there (it
    truncates code-blocks where its distortion estimate reaches the PSNR), so this is the step of a uniform
    quantiser at that distortion (step^2 / 12 = the target's MSE), scaled to the proxy's dead-zone."""
    return _JPEG2000_STEP_SCALE * float(np.sqrt(12.0 * 255.0**2 * 10.0 ** (-psnr_db / 10.0)))


def qstep(codec: str, setting: float) -> float:
    if codec == "hevc":
        return hevc_qstep(setting)
    return jpeg2000_qstep(setting) if codec == "jpeg2000-db" else jpeg_qstep(setting)


def _soft_quantise_plane(plane: torch.Tensor, step) -> torch.Tensor:
    """Block DCT, each coefficient scaled by r^2 / (r^2 + 0.36), r = |c| / step, inverse DCT. A smooth
    dead-zone: coefficients well under the step vanish (as the codec rounds them to zero), large ones
    pass; its derivative is near zero below the step, so the ED gets no credit for detail the codec drops."""
    c, size = blocks(plane)
    r2 = (c / (step if isinstance(step, float) else step.to(c))) ** 2
    gain = r2 / (r2 + 0.36)
    flat = gain.flatten(-2)
    gain = torch.cat([torch.ones_like(flat[..., :1]), flat[..., 1:]], -1).reshape(gain.shape)  # keep the DC
    return unblocks(c * gain, size)


def codec_proxy(y: torch.Tensor, codec: str, setting: int) -> torch.Tensor:
    """A differentiable stand-in for the codec at `setting` (8x8 DCT soft quantisation, 4:2:0 chroma),
    used only for the backward pass of `straight_through`. JPEG 2000 is a wavelet codec without chroma
    subsampling; its stand-in is the same soft dead-zone at a flat step on all three full-resolution planes,
    a model of what it drops (detail under its distortion target), not of how."""
    ycc = to_ycbcr(y)
    if codec == "jpeg2000-db":
        step = jpeg2000_qstep(setting)
        return to_rgb(torch.stack([_soft_quantise_plane(ycc[:, i], step) for i in range(3)], 1))
    if codec == "hevc":
        luma = chroma = hevc_qstep(setting)  # x265's default: flat scaling lists
    else:
        luma, chroma = jpeg_tables(setting)
    out_y = _soft_quantise_plane(ycc[:, 0], luma)
    sub = F.avg_pool2d(ycc[:, 1:], 2, ceil_mode=True)
    out_c = torch.stack([_soft_quantise_plane(sub[:, i], chroma) for i in range(2)], 1)
    out_c = F.interpolate(out_c, scale_factor=2, mode="bilinear", align_corners=False)[..., : y.shape[-2], : y.shape[-1]]
    return to_rgb(torch.cat([out_y[:, None], out_c], 1))


def straight_through(y: torch.Tensor, decoded: torch.Tensor, proxy: torch.Tensor | None = None) -> torch.Tensor:
    """Forward: the decoded picture. Backward: through `proxy` (a differentiable model of the codec) or,
    without one, the identity to y. The identity credits the ED for every change, also for detail the codec
    then removes, and training drifted that way (bits doubled at every QP); the DCT proxy does not."""
    base = y if proxy is None else proxy
    return base + (decoded - base).detach()
