"""How different two pictures *look*: CIEDE2000 colour differences, a visibility class chosen on
a ladder of known differences, and a JPEG-quality yardstick measured on the photo itself.

Why not count 8-bit levels: a quality-95 JPEG — visually lossless by common agreement — has most
of its pixels more than 2 levels off, and a network that re-grades a photo by ~25 levels makes
every small shift look large in level counts. CIEDE2000 (ΔE00, CIE 2001) measures a colour
difference as people judge it; a ΔE00 of about 2.3 is one just-noticeable difference. Viewing
condition: pixel for pixel, the picture at its processing size (the app's slider and the enlarged
crops show it at 1:1 or larger); a smaller display only hides differences.

* `difference` → per-pixel ΔE00 and its summary (mean, share of pixels over one JND);
* `visibility` → a class (0 indistinguishable … 3 visibly different) from `CLASSES`, whose
  boundaries `tests/test_perceptual.py` checks against a ladder of graded differences
  (noise, brightness shifts, colour casts, JPEG qualities, the paper set's INT8 models);
* `jpeg_ladder` / `jpeg_equivalent`: the same measure for JPEG copies of the reference at a
  range of qualities, so a difference reads "about as different as saving it as a JPEG at
  quality 90" — computed for the photo shown, not canned.

numpy + scikit-image only (no torch): the app's compare path uses it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

#: ΔE00 of one just-noticeable difference (the threshold the share of visible pixels counts).
JND_DE00 = 2.3
#: Pixels at most this many are measured; larger pictures are measured on a box-reduced copy
#: (a 2-MP picture's ΔE00 takes ~1 s on 2 cores; a copy reduced 2× in each direction ~0.25 s).
MAX_MEASURE_PIXELS = 600_000
#: Qualities of the JPEG yardstick (Pillow; 4:4:4 chroma from 90 up, 4:2:0 below, as cameras
#: and sites do).
JPEG_QUALITIES = (98, 95, 90, 80, 70, 50)
#: Pixels the JPEG ladder's ΔE00 is averaged over (a fixed random sample of the measuring grid).
LADDER_SAMPLE = 40_000


@dataclass(frozen=True)
class VisibilityClass:
    rank: int
    name: str  # short, for the headline and table
    sentence: str  # for the verdict
    max_share_visible: float  # share of pixels over one JND (upper bound, exclusive)
    max_mean_de00: float  # mean ΔE00 (upper bound, exclusive)


#: Classes from least to most visible; a difference is in the first class whose bounds it is
#: under on both counts. Boundaries chosen on the ladder in tests/test_perceptual.py (the
#: closing numbers are in docs/perceptual.md).
CLASSES = (
    VisibilityClass(0, "indistinguishable", "no one would see a difference", 0.01, 1.2),
    VisibilityClass(1, "looks the same", "a viewer would take it for full precision", 0.20, 1.6),
    VisibilityClass(2, "close", "differences show when you flip between the pictures or zoom in", 0.30, 2.2),
    VisibilityClass(3, "visibly different", "a viewer would see the difference side by side", float("inf"),
                    float("inf")),
)


def grid_factor(h: int, w: int) -> int:
    """The measuring grid: every k×k block of pixels averaged, k the smallest integer that brings
    the picture to at most `MAX_MEASURE_PIXELS` (a 1-MP photo is measured at half size)."""
    k = 1
    while (h // k) * (w // k) > MAX_MEASURE_PIXELS:
        k += 1
    return k


def _reduced(u8: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
    """The picture on the measuring grid: each k×k block's mean, float32 in [0, 1] (uint8 as is
    when k = 1). `cells`: only these grid cells (flat indices), as an N×3 array. Block sums are
    exact integers, so this is the same as a float64 mean of each block, without the full-size
    float copy (a tenth of the time)."""
    h, w = u8.shape[:2]
    k = grid_factor(h, w)
    if k == 1:
        return u8 if cells is None else u8.reshape(-1, 3)[cells]
    gh, gw = h // k, w // k
    if cells is None:
        total = np.zeros((gh, gw, 3), np.uint32)
        for dy in range(k):
            for dx in range(k):
                total += u8[dy:gh * k:k, dx:gw * k:k]
    else:
        rows, cols = np.divmod(cells, gw)
        total = np.zeros((len(cells), 3), np.uint32)
        for dy in range(k):
            for dx in range(k):
                total += u8[rows * k + dy, cols * k + dx]
    return (total / (k * k)).astype(np.float32) / 255.0


def lab(u8: np.ndarray) -> np.ndarray:
    """CIELAB of an H×W×3 uint8 picture on the measuring grid (`grid_factor`)."""
    from skimage.color import rgb2lab

    x = _reduced(u8)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
    return rgb2lab(x).astype(np.float32)


def delta_e00_lab(lab_a: np.ndarray, lab_b: np.ndarray) -> np.ndarray:
    from skimage.color import deltaE_ciede2000

    return deltaE_ciede2000(lab_a, lab_b).astype(np.float32)


def delta_e00(a_u8: np.ndarray, b_u8: np.ndarray) -> np.ndarray:
    """Per-pixel ΔE00 between two H×W×3 uint8 RGB pictures (sRGB, D65), on the measuring grid
    (`MAX_MEASURE_PIXELS`)."""
    if a_u8.shape != b_u8.shape:
        raise ValueError(f"pictures differ in shape: {a_u8.shape} vs {b_u8.shape}")
    return delta_e00_lab(lab(a_u8), lab(b_u8))


def summarise(de: np.ndarray) -> dict:
    return {"mean_de00": float(de.mean()), "share_visible": float((de > JND_DE00).mean()),
            "p99_de00": float(np.percentile(de, 99))}


def visibility(summary: dict) -> VisibilityClass:
    for c in CLASSES:
        if summary["share_visible"] < c.max_share_visible and summary["mean_de00"] < c.max_mean_de00:
            return c
    return CLASSES[-1]


def jpeg_copy(u8: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def jpeg_ladder(reference_u8: np.ndarray, qualities=JPEG_QUALITIES, reference_lab: np.ndarray | None = None,
                sample: int = LADDER_SAMPLE) -> list[dict]:
    """The measure of JPEG copies of `reference_u8` at each quality: [{quality, mean_de00, …}].
    ΔE00 on a fixed random `sample` of the measuring grid's pixels (the mean to well under 1 %;
    the JPEG itself is made and decoded at full size, as a viewer would get it)."""
    from skimage.color import rgb2lab

    ref_lab = lab(reference_u8) if reference_lab is None else reference_lab
    flat = ref_lab.reshape(-1, 3)
    pick = np.random.default_rng(0).choice(len(flat), size=min(sample, len(flat)), replace=False)
    def rung(q: int) -> dict:
        copy = _reduced(jpeg_copy(reference_u8, q), cells=pick)
        copy = copy.astype(np.float32) / 255.0 if copy.dtype == np.uint8 else copy
        return {"quality": int(q), **summarise(delta_e00_lab(flat[pick], rgb2lab(copy[:, None, :])[:, 0, :]
                                                             .astype(np.float32)))}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:  # JPEG coding and numpy release the GIL: both cores
        return list(pool.map(rung, qualities))


def jpeg_equivalent(summary: dict, ladder: list[dict]) -> dict:
    """Where a difference sits on the photo's JPEG ladder, by mean ΔE00: the nearest quality,
    or beyond either end. {"quality": int, "relation": "about" | "better than" | "worse than"}."""
    rungs = sorted(ladder, key=lambda r: r["mean_de00"])  # most faithful first
    m = summary["mean_de00"]
    if m < rungs[0]["mean_de00"] * 0.85:
        return {"quality": rungs[0]["quality"], "relation": "better than"}
    if m > rungs[-1]["mean_de00"] * 1.15:
        return {"quality": rungs[-1]["quality"], "relation": "worse than"}
    nearest = min(rungs, key=lambda r: abs(np.log(max(r["mean_de00"], 1e-6) / max(m, 1e-6))))
    return {"quality": nearest["quality"], "relation": "about"}


def jpeg_phrase(eq: dict) -> str:
    q = eq["quality"]
    if eq["relation"] == "better than":
        return f"closer than a JPEG at quality {q}"
    if eq["relation"] == "worse than":
        return f"further off than a JPEG at quality {q}"
    return f"about as different as a JPEG at quality {q}"
