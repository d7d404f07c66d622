"""Where to look first: the region of a photo where the INT8 error is most *visible*.

The largest raw error often sits where nobody can see it — in near-black shadows (a few levels
of a dark value are invisible on a screen) or in blurred, featureless areas. The first view's
crop instead weighs each block's mean error by how visible it is there: mid-tones count fully,
near-black and near-white not at all, and textured blocks more than flat ones.
"""
from __future__ import annotations

import numpy as np


def _blocks(a: np.ndarray, b: int) -> np.ndarray:
    h, w = a.shape
    hh, ww = h // b * b, w // b * b
    return a[:hh, :ww].reshape(hh // b, b, ww // b, b).mean(axis=(1, 3))


def visibility(fp32_u8: np.ndarray, block: int) -> np.ndarray:
    """Per-block weight in [0, 1]: mid-tone (luma) weight × texture weight of the FP32 output."""
    y = (fp32_u8[..., 0] * 0.299 + fp32_u8[..., 1] * 0.587 + fp32_u8[..., 2] * 0.114).astype(np.float32) / 255.0
    gy, gx = np.gradient(y)
    tex = _blocks(np.hypot(gx, gy), block)
    luma = _blocks(y, block)
    w_luma = np.clip((luma - 0.06) / 0.14, 0, 1) * np.clip((0.97 - luma) / 0.10, 0, 1)
    top = float(np.percentile(tex, 90)) if tex.size else 0.0
    w_tex = 0.25 + 0.75 * np.clip(tex / top, 0, 1) if top > 0 else np.ones_like(tex)
    return w_luma * w_tex


def visible_worst_point(err: np.ndarray, fp32_u8: np.ndarray, block: int = 32) -> tuple[int, int]:
    """(x, y) centre of the block with the largest visibility-weighted mean error; the block with
    the largest plain mean error when no block is both visible and wrong (e.g. an all-black photo)."""
    h, w = err.shape
    b = max(1, min(block, h, w))
    if h // b == 0 or w // b == 0:
        return w // 2, h // 2
    mean_err = _blocks(err.astype(np.float32), b)
    score = mean_err * visibility(fp32_u8, b)
    if score.max() <= 0:
        score = mean_err
    if score.max() <= 0:
        return w // 2, h // 2
    by, bx = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(bx * b + b // 2), int(by * b + b // 2)
