"""The mixed-precision trade-off: for each K, PTQ with the K most sensitive convs kept float
(`qatie.quantize.keep_float`), its PSNR against the FP32 output and its latency in ONNX Runtime here."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from qatie.config import DEFAULT_PERCENTILE
from qatie.errors import QatieError
from qatie.export.sidecar import read_sidecar
from qatie.analysis.calibration import _image_list, cached_fp32_onnx, cached_ptq, score_models

DEFAULT_K = (0, 1, 2, 4, 8, 16, 35)


def trade_off_curve(fp32_checkpoint, K_values: Sequence[int] = DEFAULT_K, images=None, method: str = "minmax",
                    calib: str = "samples", num_calib: int = 32, percentile: float = DEFAULT_PERCENTILE, seed: int = 0,
                    threads: int = 2, latency_runs: int = 3, cache=None,
                    progress: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Quality/latency of PTQ with the K most sensitive convs float, for each K in `K_values`.

    images: H×W×3 array(s) to score on (PSNR vs the FP32 ONNX output, mean over images;
    latency = median ORT time on the first image, `threads` threads); default: 4 calibration-
    style crops at another seed. Models are built with `run_ptq(keep_float=f"auto:{K}")`
    and cached (`qatie.paths.cache_dir`). Returns [{K, layers, float_points, psnr_vs_fp32,
    latency_ms, latency_vs_fp32, model}] plus a first row K=None for FP32 itself."""
    if images is None:
        from qatie.quantize.ptq import calibration_images

        images = calibration_images(calib, 4, seed + 1)
    imgs = _image_list(images)
    ks = sorted({int(k) for k in K_values})
    if any(k < 0 for k in ks):
        raise QatieError(f"K values must be ≥ 0, got {ks}")
    paths = {}
    for k in ks:
        if progress:
            progress(f"building PTQ with {k} float conv(s)")
        paths[k] = cached_ptq(fp32_checkpoint, method, calib, num_calib, percentile, seed,
                              keep_float=f"auto:{k}" if k else None, cache=cache)
    if progress:
        progress("scoring")
    fp32_onnx = cached_fp32_onnx(fp32_checkpoint, cache)
    scores = score_models(fp32_onnx, {str(k): p for k, p in paths.items()}, imgs, threads=threads,
                          latency_runs=latency_runs)
    fp = scores["fp32"]
    rows = [{"K": None, "layers": [], "float_points": [], "psnr_vs_fp32": math.inf, "latency_ms": fp["latency_ms"],
             "latency_vs_fp32": 1.0, "model": fp["model"]}]
    for k in ks:
        side = read_sidecar(paths[k])
        s = scores[str(k)]
        rows.append({"K": k, "layers": side.get("keep_float", []), "float_points": side.get("float_points", []),
                     "psnr_vs_fp32": s["psnr_vs_fp32"], "latency_ms": s["latency_ms"],
                     "latency_vs_fp32": s["latency_ms"] / fp["latency_ms"], "model": s["model"]})
    return rows


def format_trade_off(rows: list[dict]) -> str:
    head = f"{'K':>4} {'PSNR vs FP32':>12} {'latency ms':>10} {'× FP32':>7}  float convs"
    lines = [head, "-" * len(head)]
    for r in rows:
        k = "fp32" if r["K"] is None else str(r["K"])
        p = "inf" if math.isinf(r["psnr_vs_fp32"]) else f"{r['psnr_vs_fp32']:.2f}"
        layers = ", ".join(r["layers"][:6]) + (" …" if len(r["layers"]) > 6 else "")
        lines.append(f"{k:>4} {p:>12} {r['latency_ms']:>10.1f} {r['latency_vs_fp32']:>7.2f}  {layers}")
    return "\n".join(lines)
