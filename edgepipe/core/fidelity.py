"""PSNR between two 8-bit images: the fidelity figure of evaluation, preview and training validation."""
from __future__ import annotations

import math

import numpy as np

PSNR_CAP_DB = 100.0  # identical images (mse 0) count as 100 dB instead of infinity


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10.0 * math.log10(255.0 ** 2 / mse))
