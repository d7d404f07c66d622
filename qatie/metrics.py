"""Image-quality metrics: scikit-image's PSNR and SSIM (RGB, data range 1) and error maps.

Kept as thin wrappers so every number qatie prints is exactly what skimage would print.
"""
from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(output: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of an H×W×3 float image in [0,1] against a reference (inf when identical)."""
    if np.array_equal(output, reference):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, output, data_range=1.0))


def ssim(output: np.ndarray, reference: np.ndarray) -> float:
    """SSIM over RGB (channel_axis=2, data_range=1), skimage's default 7×7 window."""
    side = min(output.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float(np.array_equal(output, reference))
    return float(structural_similarity(reference, output, channel_axis=2, data_range=1.0, win_size=win))


def error_levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel absolute difference in 8-bit levels (max over the colour channels), H×W float32.
    8-bit images are compared as they are (in int16: five times faster than through float)."""
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        return np.abs(a.astype(np.int16) - b).max(axis=2).astype(np.float32)
    a8 = np.round(np.clip(a, 0, 1) * 255)
    b8 = np.round(np.clip(b, 0, 1) * 255)
    return np.abs(a8 - b8).max(axis=2).astype(np.float32)


def agreement(output: np.ndarray, fp32: np.ndarray) -> dict:
    """How closely an INT8 output matches the FP32 output: PSNR, max/mean level error, share > 2 levels."""
    err = error_levels(output, fp32)
    return {
        "psnr_vs_fp32": psnr(output, fp32),
        "max_levels": float(err.max()),
        "mean_levels": float(err.mean()),
        "share_over_2_levels": float((err > 2).mean()),
    }


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10·log10(Σ ref² / Σ (test − ref)²) in dB; +inf when identical, −inf for a zero reference."""
    ref = np.asarray(reference, dtype=np.float32)
    diff = np.asarray(test, dtype=np.float32) - ref
    noise = float(np.sum(np.square(diff, dtype=np.float64)))
    if noise == 0.0:
        return math.inf
    signal = float(np.sum(np.square(ref, dtype=np.float64)))
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
