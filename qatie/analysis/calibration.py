"""Calibration choice: PTQ with minmax / percentile / entropy ranges, built once per checkpoint
content and settings (cached), scored on images against the FP32 output in ONNX Runtime.
Builds PTQ models, so it imports torch, lazily, inside the calls that build."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from qatie.config import DEFAULT_PERCENTILE, PTQConfig
from qatie.errors import QatieError
from qatie.paths import cache_dir
from qatie.export.sidecar import read_sidecar
from qatie.util import atomic_write, file_sha
from qatie.analysis.probe import _as_float_image
from qatie.analysis.sqnr import _fmt_db

#: Part of every cache key: exports made under another QuantSpec version (or export form) are stale.
EXPORT_FORM = "spec2-delta2x2"  # v2 QuantSpec; delta as a 2×2 conv on up1's phases


def cached_fp32_onnx(fp32_checkpoint, cache=None) -> Path:
    """The FP32 ONNX export of a checkpoint, cached by the checkpoint's content."""
    out = cache_dir(cache) / f"fp32-{file_sha(fp32_checkpoint)}-{EXPORT_FORM}.onnx"
    if not out.is_file():
        from qatie.model.checkpoint import load_model
        from qatie.export.to_onnx import export_fp32

        model = load_model(fp32_checkpoint)
        atomic_write(out, lambda tmp: export_fp32(model, tmp))
    return out


def cached_ptq(fp32_checkpoint, method: str = "minmax", calib: str = "samples", num_calib: int = 32,
               percentile: float = DEFAULT_PERCENTILE, seed: int = 0, keep_float=None, cache=None) -> Path:
    """`run_ptq` for these settings, cached in `cache_dir` by checkpoint content + recipe."""
    kf = keep_float if isinstance(keep_float, str) or keep_float is None else ",".join(sorted(keep_float))
    cfg = PTQConfig(method=method, calib=calib, num_calib=num_calib, percentile=percentile, seed=seed, keep_float=kf)
    out = cache_dir(cache) / f"ptq-{file_sha(fp32_checkpoint)}-{method}-{EXPORT_FORM}-{cfg.key(10)}.onnx"
    if not (out.is_file() and out.with_suffix(".json").is_file()):
        from qatie.quantize.ptq import run_ptq

        run_ptq(fp32_checkpoint, out, cfg)
    return out


def _image_list(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [_as_float_image(images)]
    out = []
    for im in images:
        if isinstance(im, tuple):  # (name, input[, target]) pairs, as evaluate uses
            im = im[1]
        out.append(_as_float_image(im))
    if not out:
        raise QatieError("no images to score")
    return out


def score_models(fp32_onnx, models: Mapping[str, Path], images, threads: int = 2, latency_runs: int = 3,
                 latency_image: np.ndarray | None = None) -> dict[str, dict]:
    """PSNR of each model's output vs the FP32 output (mean over images) and latency (median of
    `latency_runs` after one warm-up, on `latency_image` or the first image), all in ORT."""
    from qatie.metrics import psnr
    from qatie.runtime.enhancer import OnnxEnhancer, measure_latency

    imgs = _image_list(images)
    fp32 = OnnxEnhancer(fp32_onnx, threads=threads)
    refs = [fp32.enhance(im) for im in imgs]
    lat_img = imgs[0] if latency_image is None else _as_float_image(latency_image)
    out = {"fp32": {"model": str(fp32_onnx), "psnr_vs_fp32": math.inf,
                    "latency_ms": measure_latency(lambda: fp32.enhance(lat_img), 1, latency_runs)["median_ms"]}}
    for name, path in models.items():
        enh = OnnxEnhancer(path, threads=threads)
        per = [psnr(enh.enhance(im), r) for im, r in zip(imgs, refs)]
        fin = [p for p in per if math.isfinite(p)]
        out[name] = {"model": str(path), "psnr_vs_fp32": float(np.mean(fin)) if fin else math.inf,
                     "psnr_vs_fp32_per_image": per,
                     "latency_ms": measure_latency(lambda: enh.enhance(lat_img), 1, latency_runs)["median_ms"]}
    out["fp32"]["latency_image"] = list(lat_img.shape[:2])
    return out


def compare_calibration(fp32_checkpoint, images, calib_spec: str = "samples",
                        methods: Sequence[str] = ("minmax", "percentile", "entropy"), num_calib: int = 32,
                        percentile: float = DEFAULT_PERCENTILE, seed: int = 0, threads: int = 2, latency_runs: int = 3,
                        cache=None) -> list[dict]:
    """PTQ of `fp32_checkpoint` with each calibration method, scored on `images`.

    images: one H×W×3 array, a list of them, or (name, input, target) pairs (the input is used).
    Each PTQ model (and the FP32 ONNX reference) is built once and cached under `cache_dir(cache)`
    by checkpoint content + settings, so repeated calls only run inference.
    Returns one row per method, after an FP32 row: {method, model, psnr_vs_fp32 (dB, mean over
    images; inf = identical), psnr_vs_fp32_per_image, latency_ms (median, ORT, `threads`),
    latency_vs_fp32, clipped_tensors (how many tensors' ranges are narrower than minmax's),
    median_scale_vs_minmax}. Needs torch (imported only here, to build the models)."""
    imgs = _image_list(images)
    fp32_onnx = cached_fp32_onnx(fp32_checkpoint, cache)
    paths = {m: cached_ptq(fp32_checkpoint, m, calib_spec, num_calib, percentile, seed, cache=cache) for m in methods}
    scores = score_models(fp32_onnx, paths, imgs, threads=threads, latency_runs=latency_runs)
    base = None
    if "minmax" in paths:
        base = {t["name"]: t for t in read_sidecar(paths["minmax"])["tensors"]}
    fp = scores["fp32"]
    rows = [{"method": "fp32", "model": fp["model"], "psnr_vs_fp32": math.inf, "psnr_vs_fp32_per_image": None,
             "latency_ms": fp["latency_ms"], "latency_vs_fp32": 1.0, "clipped_tensors": None,
             "median_scale_vs_minmax": None}]
    for m in methods:
        s = scores[m]
        row = {"method": m, "model": s["model"], "psnr_vs_fp32": s["psnr_vs_fp32"],
               "psnr_vs_fp32_per_image": s["psnr_vs_fp32_per_image"], "latency_ms": s["latency_ms"],
               "latency_vs_fp32": s["latency_ms"] / fp["latency_ms"], "clipped_tensors": None,
               "median_scale_vs_minmax": None}
        if base is not None:
            tens = read_sidecar(paths[m])["tensors"]
            clipped = [t for t in tens if t["name"] in base and
                       (t["max"] - t["min"]) < (base[t["name"]]["max"] - base[t["name"]]["min"]) * (1 - 1e-6)]
            row["clipped_tensors"] = len(clipped)
            ratios = [t["scale"] / base[t["name"]]["scale"] for t in tens if t["name"] in base]
            row["median_scale_vs_minmax"] = float(np.median(ratios)) if ratios else None
        row["calibration"] = {"calib": calib_spec, "num_calib": num_calib, "seed": seed,
                              **({"percentile": percentile} if m == "percentile" else {})}
        rows.append(row)
    return rows


def format_calibration(rows: list[dict]) -> str:
    head = f"{'method':<11} {'PSNR vs FP32':>12} {'latency ms':>10} {'× FP32':>7} {'clipped':>8} {'scale/minmax':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<11} {_fmt_db(r['psnr_vs_fp32']):>12} {r['latency_ms']:>10.1f} "
                     f"{r['latency_vs_fp32']:>7.2f} {('' if r['clipped_tensors'] is None else r['clipped_tensors']):>8} "
                     f"{('' if r['median_scale_vs_minmax'] is None else format(r['median_scale_vs_minmax'], '.3f')):>12}")
    return "\n".join(lines)
