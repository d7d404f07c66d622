"""Pictures the app shows: fast lossless PNGs, error heatmaps (matplotlib, Agg) and the zoom.

Every image the app returns is a PNG written here: Gradio's default WebP is lossy and would add
artifacts of its own to a tool whose whole point is to show small ones. PNGs are written with
zlib level 1 — lossless like every level, 2–3× faster to write than the default and only ~10%
bigger, which matters for the "outputs on screen in 2.5 s" goal.

Heatmaps use matplotlib's object API (`Figure` + Agg canvas, no pyplot state), so concurrent
requests never share a figure.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PNG_LEVEL = 1
#: Colour map of every error display (heatmap and zoomed error crops alike).
CMAP = "inferno"
#: Heatmaps use a square-root colour scale: small errors (1–3 levels) stay visible next to large
#: ones. The colour bar is labelled in levels, so the scale is still read directly.
GAMMA = 0.5
#: The colour scale never tops out below this many levels (identical outputs stay black, not a
#: saturated wash of 1-level noise).
MIN_VMAX = 4.0


def save_png(image_u8: np.ndarray, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image_u8)).save(path, format="PNG", compress_level=PNG_LEVEL)
    return str(path)


def save_pngs(images_u8: dict[str, np.ndarray], folder: str | Path) -> dict[str, str]:
    """{name: image} → {name: path of folder/name.png}, encoded on both cores (Pillow's encoder
    releases the GIL): three 1-MP PNGs in 0.17 s instead of 0.24 s (2-core AMD EPYC)."""
    from concurrent.futures import ThreadPoolExecutor

    folder = Path(folder)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="qatie-png") as pool:
        paths = pool.map(lambda item: save_png(item[1], folder / f"{item[0]}.png"), images_u8.items())
        return dict(zip(images_u8, paths))


def resize_u8(image_u8: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """High-quality downscale of an 8-bit RGB image (Lanczos, with a fast integer pre-reduction)."""
    w, h = size_wh
    if (image_u8.shape[1], image_u8.shape[0]) == (w, h):
        return image_u8
    img = Image.fromarray(np.ascontiguousarray(image_u8))
    return np.asarray(img.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0))


def fit_size(w: int, h: int, max_pixels: float) -> tuple[int, int]:
    """The largest (w, h) with the same aspect ratio and at most `max_pixels` pixels."""
    if w * h <= max_pixels:
        return w, h
    s = math.sqrt(max_pixels / (w * h))
    return max(1, int(w * s)), max(1, int(h * s))


def block_max(levels: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink an error map by taking the max of each block, so isolated bad pixels survive."""
    h, w = levels.shape
    k = max(1, math.ceil(max(h, w) / max_side))
    if k == 1:
        return levels
    hp, wp = math.ceil(h / k) * k, math.ceil(w / k) * k
    pad = np.zeros((hp, wp), levels.dtype)
    pad[:h, :w] = levels
    return pad.reshape(hp // k, k, wp // k, k).max(axis=(1, 3))


#: The shared colour scale tops out at this percentile of all maps' pixels (brighter outliers
#: saturate, shown by the colour bar's arrow): one flare 100 levels off must not turn every
#: 5-level quantization error black.
SCALE_PERCENTILE = 99.9


def shared_vmax(maps: list[np.ndarray]) -> float:
    tops = [float(np.percentile(m, SCALE_PERCENTILE)) for m in maps if m.size]
    return float(max([MIN_VMAX] + [math.ceil(t) for t in tops]))


def _norm(vmax: float):
    from matplotlib.colors import PowerNorm

    return PowerNorm(gamma=GAMMA, vmin=0.0, vmax=vmax)


def colorize(levels: np.ndarray, vmax: float) -> np.ndarray:
    """An error map in levels → RGB uint8 on the heatmaps' colour scale."""
    from matplotlib import colormaps

    rgba = colormaps[CMAP](_norm(vmax)(np.clip(levels, 0, vmax)))
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def heatmap_png(maps: list[tuple[str, np.ndarray] | None], path: str | Path, vmax: float | None = None,
                panel_px: int = 520, cols: int | None = None, title: str | None = None, bar_label: str | None = None,
                ticks: tuple[float, ...] | None = None) -> str:
    """One figure: each (title, H×W levels) map in a grid (None leaves a slot empty) on one shared
    colour scale, with one colour bar in 8-bit levels. Maps larger than `panel_px` are block-max
    reduced for display, so a single bad pixel still shows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    real = [m for m in maps if m is not None]
    capped = vmax is None  # a scale from the maps' percentile (else a fixed scale given by the caller)
    vmax = shared_vmax([m for _, m in real]) if vmax is None else vmax
    n = len(maps)
    cols = cols or (n if n <= 3 else math.ceil(n / 2))
    rows = math.ceil(n / cols)
    h, w = real[0][1].shape
    dpi = 100
    # Each panel fits a panel_px × panel_px box whatever the map's shape, so the figure is at
    # most about (cols·panel_px) × (rows·panel_px) pixels (a tall strip must not make it huge).
    box = panel_px / dpi
    panel_w, panel_h = (box, box * h / w) if w >= h else (max(box * w / h, 1.6), box)
    narrow = panel_w < 3.6  # a portrait panel: its title on two lines, the figure's title wrapped
    extra = (0.6 if narrow else 0.35) if title else 0.0  # inches for the figure title
    title_h = 0.65 if narrow else 0.45  # inches above each row for the panels' titles
    fig_h = rows * (panel_h + title_h) + 0.2 + extra
    fig = Figure(figsize=(cols * panel_w + 1.2, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [0.045], wspace=0.06,
                            hspace=title_h / panel_h, left=0.01, right=0.93,
                            top=1 - (title_h - 0.15 + extra) / fig_h, bottom=0.03)
    norm = _norm(vmax)
    image = None
    for i, entry in enumerate(maps):
        if entry is None:
            continue
        levels = entry[1]
        ax = fig.add_subplot(grid[i // cols, i % cols])
        shown = block_max(levels, panel_px)
        image = ax.imshow(shown, cmap=CMAP, norm=norm, interpolation="nearest")
        ax.set_title(entry[0].replace("  (", "\n(") if narrow else entry[0], fontsize=12 if not narrow else 11)
        ax.set_xticks([])
        ax.set_yticks([])
    cax = fig.add_subplot(grid[:, cols])
    over = any(float(m.max()) > vmax for _, m in real)
    bar = fig.colorbar(image, cax=cax, extend="max" if over else "neither")
    # short enough for the bar of a wide, shallow figure (a longer label is cut at both ends)
    bar.set_label((bar_label or "difference, 8-bit levels (max of R,G,B)")
                  + (f"; capped at p{SCALE_PERCENTILE:g}" if over and capped else "")
                  + (f"; ≥ {vmax:g} shown as {vmax:g}" if over and not capped else ""), fontsize=9)
    if title:
        fig.suptitle(title.replace(": ", ":\n", 1) if narrow and len(title) > 45 else title, fontsize=13 if not narrow else 12)
    if ticks is None:
        ticks = [t for t in (0, 1, 2, 4, 8, 16, 32, 64, 128, 255) if t <= vmax]
        if vmax - ticks[-1] > 0.15 * vmax:
            ticks.append(round(vmax))
    bar.set_ticks(list(ticks))
    bar.ax.tick_params(labelsize=8)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return save_png(rgba[..., :3].copy(), path)


#: Colour scale of the perceptual map (ΔE00): 0 to twice one just-noticeable difference.
DE00_SCALE = 6.0


def perceptual_map_png(maps: dict[str, np.ndarray], path: str | Path) -> str:
    """'Where a viewer would notice': each INT8 model's ΔE00 map against FP32 (CIEDE2000; 2.3 is
    one just-noticeable difference), on a fixed 0–6 scale."""
    from qatie.analysis.perceptual import JND_DE00

    panels = [(f"{label}  ({100 * (maps[f'{role}_de00'] > JND_DE00).mean():.1f}% noticeable)", maps[f"{role}_de00"])
              for role, label in (("ptq", "PTQ-INT8 vs FP32"), ("qat", "QAT-INT8 vs FP32"))]
    return heatmap_png(panels, path, vmax=DE00_SCALE, cols=2, panel_px=420,
                       title=f"Where a viewer would notice: colour difference ΔE00 (over {JND_DE00:g} = noticeable)",
                       bar_label="colour difference ΔE00", ticks=(0, 1, 2, JND_DE00, 4, 6))


def stack_pngs(paths: list[str], path: str | Path) -> str:
    """Figures one above the other (left-aligned on white) in one PNG."""
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    width = max(im.shape[1] for im in images)
    rows = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
    return save_png(np.concatenate(rows, axis=0), path)


def _font(size: int):
    """DejaVu Sans (bundled with matplotlib: has −, ×, |) at `size` px; Pillow's font otherwise."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except Exception:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            return ImageFont.load_default()


def crop_box(w: int, h: int, cx: float, cy: float, window: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a window×window crop centred near (cx, cy), kept inside the image."""
    ww, wh = min(window, w), min(window, h)
    x0 = int(round(cx - ww / 2))
    y0 = int(round(cy - wh / 2))
    x0 = min(max(0, x0), w - ww)
    y0 = min(max(0, y0), h - wh)
    return x0, y0, x0 + ww, y0 + wh


def zoom_png(tiles: list[tuple[str, np.ndarray]], path: str | Path, tile_px: int = 256, columns: int = 4,
             caption: str = "") -> str:
    """Crops enlarged with nearest-neighbour (one source pixel = a k×k block, no smoothing) in a
    labelled grid."""
    h, w = tiles[0][1].shape[:2]
    k = max(1, tile_px // max(h, w))
    tw, th = w * k, h * k
    label_h, pad = 22, 6
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    cap_h = 22 if caption else 0
    canvas = Image.new("RGB", (cols * (tw + pad) + pad, rows * (th + label_h + pad) + pad + cap_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for i, (label, tile) in enumerate(tiles):
        r, c = divmod(i, cols)
        x = pad + c * (tw + pad)
        y = pad + r * (th + label_h + pad)
        draw.text((x, y + 3), label, fill=(20, 20, 20), font=font)
        big = np.repeat(np.repeat(tile, k, axis=0), k, axis=1)
        canvas.paste(Image.fromarray(np.ascontiguousarray(big)), (x, y + label_h))
    if caption:
        draw.text((pad, canvas.height - cap_h + 3), caption, fill=(60, 60, 60), font=_font(13))
    return save_png(np.asarray(canvas), path)
