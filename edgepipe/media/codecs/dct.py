"""8x8 block DCT helpers shared by the training rate term and the codec model (model.py): colour transform,
4:2:0 chroma, block transforms and JPEG's quantiser tables (HEVC's step is flat, model.hevc_qstep)."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                             [-0.168736, -0.331264, 0.5],
                             [0.5, -0.418688, -0.081312]])
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)

# IJG (libjpeg) base tables, Annex K of the JPEG standard.
JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
JPEG_CHROMA = torch.tensor([
    [17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99], [24, 26, 56, 99, 99, 99, 99, 99],
    [47, 66, 99, 99, 99, 99, 99, 99]] + [[99] * 8] * 4, dtype=torch.float32)


def dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II basis (rows are frequencies)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


DCT8 = dct_matrix(8)


def jpeg_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 luma and chroma quantiser steps libjpeg uses at `quality` (IJG scaling, clamped 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return tuple(torch.clamp(torch.floor((t * scale + 50) / 100), 1, 255) for t in (JPEG_LUMA, JPEG_CHROMA))


def to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> YCbCr on the 0..255 scale (chroma centred on 0)."""
    return torch.einsum("oc,nchw->nohw", RGB_TO_YCBCR.to(x), x) * 255.0


def to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oc,nchw->nohw", YCBCR_TO_RGB.to(ycc), ycc / 255.0)


def blocks(plane: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, H, W) -> 8x8 DCT coefficients (N, H/8, W/8, 8, 8) of the plane, padded by edge replication."""
    n, h, w = plane.shape
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        plane = F.pad(plane[:, None], (0, pw, 0, ph), mode="replicate")[:, 0]
    hh, ww = plane.shape[-2:]
    b = plane.reshape(n, hh // 8, 8, ww // 8, 8).permute(0, 1, 3, 2, 4)
    d = DCT8.to(plane)
    return d @ b @ d.T, (h, w)


def unblocks(coeffs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    d = DCT8.to(coeffs)
    b = d.T @ coeffs @ d
    n, bh, bw = b.shape[:3]
    plane = b.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)
    return plane[:, : size[0], : size[1]]
