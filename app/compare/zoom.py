"""The enlarged views of one region: the zoom grid (FP32 | PTQ | QAT over the input and the
INT8 error maps) and the labelled FP32 ↔ INT8 before/after pair of the worst region."""
from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np

from app.boundary import uploads
from app import models, render

ZOOM_WINDOWS = (16, 24, 32, 48, 64, 96, 128)
DEFAULT_WINDOW = 48
ZOOM_TILE_PX = 288  # each crop of the zoom view, enlarged to about this many pixels
SLIDER_PX = 480  # the worst-region before/after slider's images

# Output order of the compare event (the API returns them in this order, minus the State).
# The first view's outputs (headline, worst-region before/after slider, vs-reference heatmaps) come
# after the original ones, so API callers reading the first 15 by position are unaffected; the
# authors' TFLite picture (paper set only, `app.compare.authors`) comes after those, then QATIE's
# QAT-INT8 on LiteRT (paper set only, `app.compare.litert`).


def render_zoom(state: dict, x_pct: float, y_pct: float, window: int, out_dir: Path) -> str:
    imgs = state["images"]
    h, w = imgs["input"].shape[:2]
    try:  # API callers can send anything: the zoom stays a small crop at a finite point
        window = min(max(int(window or DEFAULT_WINDOW), min(ZOOM_WINDOWS)), max(ZOOM_WINDOWS))
        cx = min(max(float(x_pct), 0.0), 100.0) / 100.0 * w
        cy = min(max(float(y_pct), 0.0), 100.0) / 100.0 * h
    except (TypeError, ValueError, OverflowError):
        raise uploads.AppInputError("the zoom needs x and y between 0 and 100 and a window in pixels") from None
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise uploads.AppInputError("the zoom needs x and y between 0 and 100")
    x0, y0, x1, y1 = render.crop_box(w, h, cx, cy, window)
    vmax = state["vmax"]
    # Row 1: the three models; row 2: the input and where each INT8 model departs from FP32
    # (under its own picture). The reference has its own heatmaps.
    tiles = [(models.ROLE_LABELS[r], imgs[r][y0:y1, x0:x1]) for r in models.ROLES]
    tiles.append(("Input", imgs["input"][y0:y1, x0:x1]))
    tiles += [(f"|{models.ROLE_LABELS[r]} − FP32| (0–{vmax:g} levels)",
               render.colorize(state["errors"][r][y0:y1, x0:x1].astype(np.float32), vmax)) for r in ("ptq", "qat")]
    k = max(1, ZOOM_TILE_PX // max(x1 - x0, y1 - y0))
    caption = (f"{x1 - x0}×{y1 - y0} px at x = {x0}…{x1 - 1}, y = {y0}…{y1 - 1}, enlarged {k}× "
               "(every square is one pixel)")
    return render.zoom_png(tiles, out_dir / f"zoom_{uuid.uuid4().hex[:8]}.png", tile_px=ZOOM_TILE_PX, columns=3,
                           caption=caption)


def _labelled(tile: np.ndarray, label: str, right: bool) -> np.ndarray:
    """`tile` with `label` on a dark band in its bottom-left (or bottom-right) corner (the top
    corners are where Gradio puts the component's label and buttons)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(tile))
    draw = ImageDraw.Draw(img)
    font = render._font(16)
    x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
    tw, th = x1 - x0 + 12, y1 - y0 + 10
    left = img.width - tw if right else 0
    top = img.height - th
    draw.rectangle((left, top, left + tw, img.height), fill=(20, 20, 20))
    draw.text((left + 6 - x0, top + 5 - y0), label, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def crop_slider(state: dict, x_pct: float, y_pct: float, role: str, window: int, out_dir: Path) -> tuple[str, str]:
    """The before/after pair of the worst region: FP32 (left side, labelled) ↔ the INT8 model
    `role` (right side, labelled), enlarged nearest-neighbour like the zoom."""
    imgs = state["images"]
    h, w = imgs["input"].shape[:2]
    x0, y0, x1, y1 = render.crop_box(w, h, x_pct / 100.0 * w, y_pct / 100.0 * h, window)
    k = max(1, SLIDER_PX // max(x1 - x0, y1 - y0))
    big = {r: np.repeat(np.repeat(imgs[r][y0:y1, x0:x1], k, axis=0), k, axis=1) for r in ("fp32", role)}
    uid = uuid.uuid4().hex[:8]
    return (render.save_png(_labelled(big["fp32"], "FP32", right=False), out_dir / f"crop_fp32_{uid}.png"),
            render.save_png(_labelled(big[role], models.ROLE_LABELS[role], right=True), out_dir / f"crop_{role}_{uid}.png"))
