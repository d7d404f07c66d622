"""The compare pipeline: read the upload, run FP32 / PTQ-INT8 / QAT-INT8, measure, explain.

Torch-free (ONNX Runtime only) and Gradio-free: every user-facing problem is raised as a
`qatie.errors.QatieError` whose message says what is wrong and what to do; the UI turns it
into a `gr.Error`. Images flow as 8-bit RGB (what the PNGs hold and the user sees), and the
metrics are computed on exactly those pixels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from qatie.runtime import enhancer as rt
from qatie.data.datasets import EVAL_DEGRADATION
from qatie.data.degrade import degrade
from qatie.imageio import to_uint8
from qatie.metrics import error_levels, psnr, ssim

from app import config
from app.models import ROLE_LABELS, ROLES
from app.render import fit_size, resize_u8
from app.boundary.uploads import AppInputError, full_size_refusal, mp_text as _mp, read_upload


# --------------------------------------------------------------------------------------------
# Preparing the model input
# --------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    image: np.ndarray  # uint8 H×W×3: exactly what the models get
    reference: np.ndarray | None  # uint8, same size, or None
    reference_kind: str | None  # "reference" (uploaded) | "simulated" (the clean upload) | None
    notices: list[str]
    original_size: tuple[int, int]  # (w, h) of the upload, upright
    tiled: bool
    seed: int | None = None
    name: str = "photo"
    keys: dict = field(default_factory=dict)  # content hashes (for the examples cache)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    @property
    def megapixels(self) -> float:
        return self.image.shape[0] * self.image.shape[1] / 1e6


def prepare(image_payload, reference_payload=None, simulate: bool = False, seed: int | float | None = 0,
            full_size: bool = False) -> Prepared:
    """Validate and size the inputs; degrade the upload when `simulate` (the clean upload then
    becomes the ground truth)."""
    from app.boundary.box import Box

    max_pixels = None if full_size else config.MAX_INPUT_MP * 1e6
    with Box("Reading the photo") as box:  # one worker for both uploads; gone with its memory after
        photo = read_upload(image_payload, "photo", max_pixels, box=box,
                            full_size_max_mp=config.FULL_SIZE_MAX_MP if full_size else None)
        if photo is None:
            raise AppInputError("no photo: upload an image (or click one of the examples) first")
        ref = read_upload(reference_payload, "reference", max_pixels, box=box)
    w, h = photo.original_size
    if min(h, w) < config.MIN_SIDE:
        raise AppInputError(f"photo {photo.name!r} is {w}×{h} pixels — too small: the app needs at least "
                            f"{config.MIN_SIDE}×{config.MIN_SIDE} pixels")
    notices = [f"Photo {photo.name!r}: " + ", ".join(photo.notes) + "."] if photo.notes else []
    mp = w * h / 1e6
    tiled = False
    target = (w, h)
    if full_size:
        if mp > config.FULL_SIZE_MAX_MP:
            raise full_size_refusal(photo.name, w, h)
        tiled = mp > config.MAX_INPUT_MP
        if tiled:
            notices.append(f"Full size: {_mp(w, h)} processed in {config.TILE}-pixel tiles with blended seams "
                           f"(the images shown are downscaled copies; the full-size PNGs are under 'Full-size outputs').")
    elif mp > config.MAX_INPUT_MP:
        target = fit_size(w, h, config.MAX_INPUT_MP * 1e6)
        notices.append(f"**Downscaled:** the photo is {_mp(w, h)}; it was processed at {_mp(*target)} "
                       f"to keep this demo fast. Tick 'Full size (tiled)' to process every pixel "
                       f"(up to {config.FULL_SIZE_MAX_MP:g} MP).")
    image = resize_u8(to_uint8(photo.image), target)
    keys = {"photo": photo.sha256}

    reference = None
    reference_kind = None
    used_seed = None
    if simulate:
        used_seed = int(seed or 0)
        if not 0 <= used_seed < 2 ** 32:
            raise AppInputError(f"seed must be between 0 and {2 ** 32 - 1}, got {used_seed}")
        clean = image
        degraded = degrade(clean.astype(np.float32) / 255.0, used_seed, EVAL_DEGRADATION)
        image = to_uint8(degraded)
        reference, reference_kind = clean, "simulated"
        notices.append(f"Simulated phone photo: your upload was degraded by the project's phone-camera model "
                       f"at seed {used_seed}; the upload itself is the ground truth.")
        if np.array_equal(image, clean):
            notices.append(f"**Seed {used_seed} left this photo untouched** (each effect of the phone-camera model is "
                           "drawn at random, and here none was): pick another seed to see the enhancer at work.")
        if ref is not None:
            notices.append("The uploaded reference is not used: with 'simulate' on, the clean upload is the ground truth.")
        keys["simulate"] = used_seed
    elif ref is not None:
        rw, rh = ref.original_size
        if (rw, rh) != (w, h):
            if abs(rw / rh - w / h) > 0.01 * (w / h):
                raise AppInputError(
                    f"reference {ref.name!r} is {rw}×{rh} but the photo is {w}×{h}: the reference must be the "
                    "same picture at the same size (or the same aspect ratio)")
            notices.append(f"Reference {ref.name!r} resized from {rw}×{rh} to match the photo.")
        reference = resize_u8(to_uint8(ref.image), target)
        reference_kind = "reference"
        if ref.notes:
            notices.append(f"Reference {ref.name!r}: " + ", ".join(ref.notes) + ".")
        keys["reference"] = ref.sha256
    keys["full_size"] = bool(full_size)
    return Prepared(image, reference, reference_kind, notices, (w, h), tiled, used_seed, photo.name, keys)


# --------------------------------------------------------------------------------------------
# Running the models
# --------------------------------------------------------------------------------------------

def run_model(enhancer: rt.OnnxEnhancer, image_u8: np.ndarray, tiled: bool) -> tuple[np.ndarray, float]:
    """One timed pass (pad, run, crop, clip — what `qatie bench` times) → (uint8 output, ms)."""
    x = image_u8.astype(np.float32) / np.float32(255.0)
    t0 = time.perf_counter()
    if tiled:
        y = enhancer.enhance_tiled(x, tile=config.TILE, overlap=config.TILE_OVERLAP)
    else:
        y = enhancer.enhance(x)
    ms = (time.perf_counter() - t0) * 1000.0
    boxed_ms = getattr(enhancer, "last_ms", None)  # an uploaded model's pass, timed inside its worker
    return to_uint8(y), (boxed_ms if boxed_ms is not None else ms)


def time_model(enhancer: rt.OnnxEnhancer, image_u8: np.ndarray, tiled: bool) -> float:
    return run_model(enhancer, image_u8, tiled)[1]


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------

def _f(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) / np.float32(255.0)


def _luma(u8: np.ndarray) -> np.ndarray:
    return (u8[..., 0] * 0.299 + u8[..., 1] * 0.587 + u8[..., 2] * 0.114).astype(np.float32) / 255.0


def region_masks(fp32_u8: np.ndarray) -> dict[str, np.ndarray]:
    """Smooth / textured and shadow / highlight masks of the FP32 output (for the verdict)."""
    from scipy.ndimage import gaussian_filter, sobel

    y = _luma(fp32_u8)
    g = gaussian_filter(np.hypot(sobel(y, axis=0), sobel(y, axis=1)), 3.0)
    # Relative, so it works on noisy and clean photos alike: the smoothest 40% of the picture
    # (sky, skin, walls) against the rest (edges, fine texture).
    smooth = g <= np.percentile(g, 40)
    return {"smooth": smooth, "textured": ~smooth, "shadows": y < 0.2, "highlights": y > 0.85}


def where(err: np.ndarray, masks: dict[str, np.ndarray], threshold: float = 2) -> dict:
    """Where pixels more than `threshold` levels off concentrate: for each region, its share of
    the image and its share of the bad pixels."""
    bad = err > threshold
    n_bad = int(bad.sum())
    out = {}
    for name, m in masks.items():
        area = float(m.mean())
        out[name] = {"area": area, "share_of_bad": float(bad[m].sum() / n_bad) if n_bad else 0.0}
    return out


def worst_point(err: np.ndarray, block: int = 32) -> tuple[int, int]:
    """(x, y) centre of the block with the largest mean error (the zoom starts there)."""
    h, w = err.shape
    b = max(1, min(block, h, w))
    hh, ww = h // b * b, w // b * b
    if hh == 0 or ww == 0:
        return w // 2, h // 2
    blocks = err[:hh, :ww].reshape(hh // b, b, ww // b, b).mean(axis=(1, 3))
    by, bx = np.unravel_index(int(np.argmax(blocks)), blocks.shape)
    if blocks[by, bx] <= 0:
        return w // 2, h // 2
    return int(bx * b + b // 2), int(by * b + b // 2)


def analyse(prep: Prepared, outputs: dict[str, np.ndarray]) -> dict:
    """Every number the table, verdict and heatmaps use (JSON-friendly except `maps`)."""
    fp = _f(outputs["fp32"])
    maps: dict[str, np.ndarray] = {}
    models: dict[str, dict] = {role: {} for role in ROLES}
    masks = region_masks(outputs["fp32"])
    for role in ("ptq", "qat"):
        out = _f(outputs[role])
        err = error_levels(outputs[role], outputs["fp32"])
        maps[f"{role}_vs_fp32"] = err
        models[role].update({
            "agreement_psnr_db": psnr(out, fp),
            "agreement_ssim": ssim(out, fp),
            "max_levels": float(err.max()),
            "mean_levels": float(err.mean()),
            "share_over_2_levels": float((err > 2).mean()),
            "share_within_1_level": float((err <= 1).mean()),
            "where": where(err, masks),
        })
    result = {"reference": prep.reference_kind, "models": models, "input": None,
              "size": list(prep.size), "tiled": prep.tiled}
    if prep.reference is not None:
        ref = _f(prep.reference)
        inp = _f(prep.image)
        result["input"] = {"psnr_db": psnr(inp, ref), "ssim": ssim(inp, ref)}
        for role in ROLES:
            out = _f(outputs[role])
            err = error_levels(outputs[role], prep.reference)
            maps[f"{role}_vs_ref"] = err
            models[role].update({"psnr_db": psnr(out, ref), "ssim": ssim(out, ref),
                                 "max_levels_vs_ref": float(err.max())})
    _perceptual(outputs, models, maps, masks, result)
    result["maps"] = maps
    return result


def rate(fp_lab: np.ndarray, out_u8: np.ndarray, ladder: list[dict], masks: dict | None = None) -> tuple[dict, np.ndarray]:
    """One picture's perceptual rating against the FP32 output (its CIELAB on the measuring grid):
    ({mean_de00, share_visible, p99_de00, class, class_name, jpeg, where}, ΔE00 map)."""
    from qatie.analysis import perceptual as pc

    de = pc.delta_e00_lab(fp_lab, pc.lab(out_u8))
    summary = pc.summarise(de)
    cls = pc.visibility(summary)
    rating = {**summary, "class": cls.rank, "class_name": cls.name, "jpeg": pc.jpeg_equivalent(summary, ladder)}
    if masks is not None:
        rating["where"] = where(de, masks, threshold=pc.JND_DE00)
    return rating, de


def _perceptual(outputs: dict[str, np.ndarray], models: dict, maps: dict, masks: dict, result: dict) -> None:
    """What a viewer would notice (`qatie.analysis.perceptual`): per INT8 model the ΔE00 summary,
    its visibility class, where its visible pixels are, its place on this photo's JPEG ladder; the
    ΔE00 maps (on the measuring grid) and the worst visible region."""
    from qatie.analysis import perceptual as pc

    h, w = outputs["fp32"].shape[:2]
    k = pc.grid_factor(h, w)
    fp_lab = pc.lab(outputs["fp32"])
    ladder = pc.jpeg_ladder(outputs["fp32"], pc.JPEG_QUALITIES, fp_lab)
    small = {name: m[:fp_lab.shape[0] * k:k, :fp_lab.shape[1] * k:k] for name, m in masks.items()}
    for role in ("ptq", "qat"):
        models[role]["perceptual"], maps[f"{role}_de00"] = rate(fp_lab, outputs[role], ladder, small)
    result["jpeg_ladder"] = ladder
    result["fp32_lab"] = fp_lab  # for rating another picture of the same photo (the authors' model)
    result["perceptual_grid"] = {"factor": k, "jnd_de00": pc.JND_DE00}
    worst_role = max(("ptq", "qat"), key=lambda r: models[r]["perceptual"]["mean_de00"])
    x, y = worst_point(maps[f"{worst_role}_de00"], block=max(4, 32 // k))
    result["worst"] = {"role": worst_role, "x": min(w - 1, x * k), "y": min(h - 1, y * k)}


def public(result: dict) -> dict:
    """The analysis without the arrays (for JSON output)."""
    return {k: v for k, v in result.items() if k not in ("maps", "fp32_lab")}


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------

def _num(v: float | None, spec: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞ (identical)"
    return format(v, spec)


def latency_summary(samples: list[float]) -> dict:
    s = rt.summarize_ms(samples)
    return {"median_ms": s["median_ms"], "min_ms": s["min_ms"], "max_ms": s["max_ms"], "runs": s["runs"]}


def _latency_cell(samples: list[float]) -> str:
    if not samples:
        return "—"
    s = latency_summary(samples)
    what = "1 run" if s["runs"] == 1 else f"median of {s['runs']}"
    return f"{s['median_ms']:.0f} ({what})"


PERCEPTUAL_HEADERS = ["Looks (vs FP32)", "Noticeable pixels (ΔE00 > 2.3)", "Mean ΔE00", "Like a JPEG at"]


def perceptual_cells(m: dict | None) -> list[str]:
    """The table's perceptual cells of one INT8 picture (dashes for FP32 itself)."""
    p = (m or {}).get("perceptual")
    if not p:
        return ["—"] * len(PERCEPTUAL_HEADERS)
    jpeg = p["jpeg"]
    like = {"about": f"≈ quality {jpeg['quality']}", "better than": f"better than quality {jpeg['quality']}",
            "worse than": f"worse than quality {jpeg['quality']}"}[jpeg["relation"]]
    return [p["class_name"], _num(100 * p["share_visible"], ".1f") + " %", _num(p["mean_de00"], ".2f"), like]


def table_headers(reference: bool) -> list[str]:
    """The metrics table's 9 column names, with a reference (scores against it first) or without."""
    if reference:
        return (["Model", "PSNR vs reference (dB)", "SSIM vs reference"] + PERCEPTUAL_HEADERS[:2]
                + ["Agreement with FP32 (dB)", "Max error vs FP32 (levels)", "Latency (ms)", "File (MB)"])
    return (["Model"] + PERCEPTUAL_HEADERS + ["Agreement with full precision: PSNR (dB)",
                                              "Max error vs FP32 (levels)", "Latency (ms)", "File (MB)"])


def table(result: dict, latencies: dict[str, list[float]], sizes_mb: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the metrics table, always 9 columns: the perceptual columns (what a
    viewer would notice, `qatie.analysis.perceptual`) first, then PSNR/SSIM vs the reference when
    there is one (else agreement with full precision), the level error, latency and file size."""
    models = result["models"]
    headers = table_headers(bool(result["reference"]))
    if result["reference"]:
        inp = result["input"]
        rows = [["Input (unprocessed)", _num(inp["psnr_db"], ".2f"), _num(inp["ssim"], ".4f")] + ["—"] * 6]
        for role in ROLES:
            m = models[role]
            rows.append([
                ROLE_LABELS[role], _num(m["psnr_db"], ".2f"), _num(m["ssim"], ".4f"),
                *perceptual_cells(m)[:2],
                _num(m.get("agreement_psnr_db"), ".2f") if role != "fp32" else "(full precision)",
                _num(m.get("max_levels"), ".0f"),
                _latency_cell(latencies.get(role, [])), f"{sizes_mb[role]:.2f}",
            ])
    else:
        rows = []
        for role in ROLES:
            m = models[role]
            if role == "fp32":
                rows.append([ROLE_LABELS[role], "(full precision)", "—", "—", "—", "—", "—",
                             _latency_cell(latencies.get(role, [])), f"{sizes_mb[role]:.2f}"])
            else:
                rows.append([ROLE_LABELS[role], *perceptual_cells(m), _num(m["agreement_psnr_db"], ".2f"),
                             _num(m["max_levels"], ".0f"), _latency_cell(latencies.get(role, [])),
                             f"{sizes_mb[role]:.2f}"])
    return headers, rows


# --------------------------------------------------------------------------------------------
# Another INT8 picture of the same photo (the paper set's LiteRT pictures)
# --------------------------------------------------------------------------------------------

def measure_picture(out_u8: np.ndarray, fp32_u8: np.ndarray, reference_u8: np.ndarray | None,
                    result: dict | None = None) -> dict:
    """Agreement with the FP32 output (the same numbers the INT8 rows show, the perceptual rating
    on the same scale when the comparison's `result` is given), and the score against the
    reference when there is one."""
    from concurrent.futures import ThreadPoolExecutor

    out, fp = _f(out_u8), _f(fp32_u8)
    with ThreadPoolExecutor(max_workers=1) as pool:  # SSIM (scipy, GIL released) on the other core
        agreement_ssim = pool.submit(ssim, out, fp)
        err = error_levels(out_u8, fp32_u8)
        m = {"agreement_psnr_db": psnr(out, fp), "max_levels": float(err.max()),
             "mean_levels": float(err.mean()), "share_over_2_levels": float((err > 2).mean())}
        if result is not None and "fp32_lab" in result:
            m["perceptual"] = rate(result["fp32_lab"], out_u8, result["jpeg_ladder"])[0]
        m["agreement_ssim"] = agreement_ssim.result()
    if reference_u8 is not None:
        ref = _f(reference_u8)
        m.update(psnr_db=psnr(out, ref), ssim=ssim(out, ref))
    return m


def picture_row(headers: list[str], label: str, metrics: dict, ms: float, file_mb: float) -> list[str]:
    """The metrics table's row of such a picture (`measure_picture`), cell by cell from the column
    names (the table has different columns with and without a reference); its latency is the
    picture's own (`LATENCY_IS` of its module)."""
    def cell(h: str) -> str:
        if h == "Model":
            return label
        if h.startswith("Agreement") and "SSIM" in h:
            return _num(metrics.get("agreement_ssim"), ".4f")
        if h.startswith("Agreement"):
            return _num(metrics["agreement_psnr_db"], ".2f")
        if h.startswith("Mean error vs FP32"):
            return _num(metrics["mean_levels"], ".2f")
        if h.startswith("Max error vs FP32"):
            return _num(metrics["max_levels"], ".0f")
        if h in PERCEPTUAL_HEADERS:
            return perceptual_cells(metrics)[PERCEPTUAL_HEADERS.index(h)]
        if h.startswith("PSNR vs reference"):
            return _num(metrics.get("psnr_db"), ".2f")
        if h.startswith("SSIM vs reference"):
            return _num(metrics.get("ssim"), ".4f")
        if h.startswith("Latency"):
            return f"{ms:.0f} (1 core)"
        if h.startswith("File"):
            return f"{file_mb:.2f}"
        return "—"

    return [cell(h) for h in headers]
