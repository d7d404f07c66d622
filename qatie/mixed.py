"""Mixed precision: which convs to keep in float, and what that buys on this machine.

A conv kept float computes with float weights, and the QPoints of its *float island* (see
`qatie.export.float_islands`: the tensors after it up to the next QPoint that feeds a conv) are
removed, so the LeakyReLU / tanh / InstanceNorm / add / concat right after it run in float too;
the island's input and output stay quantized. Keeping only the weights float was measured first
and buys nothing (per-channel int8 weights are nearly exact here; the INT8 error is activation
rounding — docs/inspect.md has the numbers).

Sensitivity (`conv_sensitivity`): for each of the 35 convs, the torch fake-quant simulation of
the PTQ model with *only that conv's island* in float, scored by PSNR vs the FP32 output over
calibration images; the gain over the all-INT8 simulation ranks the convs. This is the direct
measure of what `--keep-float` will change, not a proxy; it costs 36 simulated forward passes
per image (≈1–2 min for 8 crops of 256² on one core), so it runs on the first
`SENSITIVITY_IMAGES` calibration crops and is cached by checkpoint content and settings. The
torch simulation equals ORT's integer kernels up to rounding flips (docs/parity.md), well below
the gains that matter for the ranking's top.

`trade_off_curve` then builds the INT8 model for each K (the K most sensitive convs float) and
measures PSNR vs FP32 and latency in ONNX Runtime on this machine.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import QatieError
from .inspect import _image_list, cache_dir, cached_fp32_onnx, cached_ptq, file_sha, read_sidecar, score_models, stage_of

SENSITIVITY_IMAGES = 8
SENSITIVITY_VERSION = 3  # bump when the islands or the score change (invalidates cached rankings)
DEFAULT_K = (0, 1, 2, 4, 8, 16, 35)


def parse_keep_float(spec) -> tuple[Optional[int], list[str]]:
    """'auto:K' → (K, []); 'a,b' or ['a', 'b'] → (None, ['a', 'b']); None / '' → (None, [])."""
    if spec is None or spec == "" or spec == []:
        return None, []
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower().startswith("auto"):
            _, _, k = text.partition(":")
            try:
                k = int(k)
            except ValueError:
                raise QatieError(f"--keep-float {spec!r}: write auto:K with K an integer ≥ 0 (e.g. auto:4)") from None
            if k < 0:
                raise QatieError(f"--keep-float {spec!r}: K must be ≥ 0")
            return k, []
        names = [n.strip() for n in text.split(",") if n.strip()]
    else:
        names = [str(n) for n in spec]
    return None, names


def _psnr_of_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def conv_sensitivity(model, ranges, images: Sequence[np.ndarray],
                     progress: Optional[Callable[[int, int, str], None]] = None) -> dict:
    """Rank the convs of an FP32 `model` by how much keeping each one float (with its island)
    improves the PTQ simulation with `ranges`, PSNR vs FP32 over `images` (H×W×3 float).

    Returns {"baseline_psnr_vs_fp32", "images", "method": "leave-one-float",
    "ranking": [{conv, stage, gain_db, psnr_vs_fp32, float_points}, ...]} — best gain first.
    PSNR over the set = 10·log10(1 / mean MSE) (images pooled)."""
    import torch

    from .export import conv_islands
    from .quant import fake_quant_weight, prepare_qat

    model = copy.deepcopy(model).eval()
    islands = conv_islands(model)
    xs = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None].float() for im in images]
    if not xs:
        raise QatieError("sensitivity needs at least one image")
    with torch.no_grad():
        refs = [model(x) for x in xs]
    prepare_qat(model, ranges)
    model.eval()
    qps = {qp.qname: qp for qp in model.qpoints()}
    mods = dict(model.named_modules())

    def score() -> float:
        with torch.no_grad():
            return _psnr_of_mse(float(np.mean([float(((model(x) - r) ** 2).mean()) for x, r in zip(xs, refs)])))

    base = score()
    ranking = []
    for i, (conv, points) in enumerate(islands.items()):
        if progress:
            progress(i, len(islands), conv)
        saved = [(qps[p], qps[p].hook) for p in points]
        mods[conv].weight_quant = None
        for qp, _ in saved:
            qp.hook = None
        try:
            s = score()
        finally:
            mods[conv].weight_quant = fake_quant_weight
            for qp, h in saved:
                qp.hook = h
        ranking.append({"conv": conv, "stage": stage_of(conv), "gain_db": s - base, "psnr_vs_fp32": s,
                        "float_points": points})
    if progress:
        progress(len(islands), len(islands), "")
    ranking.sort(key=lambda r: -r["gain_db"])
    return {"method": "leave-one-float", "baseline_psnr_vs_fp32": base, "images": len(xs), "ranking": ranking}


def cached_sensitivity(model, ranges, images, key: str, cache=None, progress=None) -> dict:
    """`conv_sensitivity`, stored as JSON in the cache folder under `key` (checkpoint content +
    calibration settings), so `ptq --keep-float auto:K` for several K ranks once."""
    path = cache_dir(cache) / f"sensitivity-{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    result = conv_sensitivity(model, ranges, images, progress=progress)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def sensitivity_key(checkpoint, method: str, calib: str, num_calib: int, percentile: float, seed: int,
                    n_images: int) -> str:
    import hashlib

    settings = json.dumps([SENSITIVITY_VERSION, file_sha(checkpoint), method, calib, num_calib,
                           percentile if method == "percentile" else None, seed, n_images])
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def trade_off_curve(fp32_checkpoint, K_values: Sequence[int] = DEFAULT_K, images=None, method: str = "minmax",
                    calib: str = "samples", num_calib: int = 32, percentile: float = 99.99, seed: int = 0,
                    threads: int = 2, latency_runs: int = 3, cache=None,
                    progress: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Quality/latency of PTQ with the K most sensitive convs float, for each K in `K_values`.

    images: H×W×3 array(s) to score on (PSNR vs the FP32 ONNX output, mean over images;
    latency = median ORT time on the first image, `threads` threads); default: 4 calibration-
    style crops at another seed. Models are built with `run_ptq(keep_float=f"auto:{K}")`
    and cached (`qatie.inspect.cache_dir`). Returns [{K, layers, float_points, psnr_vs_fp32,
    latency_ms, latency_vs_fp32, model}] plus a first row K=None for FP32 itself."""
    if images is None:
        from .ptq import calibration_images

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


def plot_trade_off(rows: list[dict], title: str | None = None):
    """PSNR vs FP32 (y) against latency (x) for each K, annotated; FP32's latency as a dashed
    line. → Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    pts = [r for r in rows if r["K"] is not None and math.isfinite(r["psnr_vs_fp32"])]
    ax.plot([r["latency_ms"] for r in pts], [r["psnr_vs_fp32"] for r in pts], "o-", color="#e4812f")
    for r in pts:
        ax.annotate(f"K={r['K']}", (r["latency_ms"], r["psnr_vs_fp32"]), xytext=(4, 4), textcoords="offset points",
                    fontsize=8)
    fp = next((r for r in rows if r["K"] is None), None)
    if fp is not None:
        ax.axvline(fp["latency_ms"], color="0.3", ls="--", lw=1)
        ax.annotate("FP32", (fp["latency_ms"], ax.get_ylim()[0]), xytext=(3, 4), textcoords="offset points",
                    fontsize=8, color="0.3")
    ax.set_xlabel("latency (ms, median, this machine)")
    ax.set_ylabel("PSNR vs FP32 output (dB)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Mixed precision: K most sensitive convs kept float", fontsize=10)
    return fig


def format_trade_off(rows: list[dict]) -> str:
    head = f"{'K':>4} {'PSNR vs FP32':>12} {'latency ms':>10} {'× FP32':>7}  float convs"
    lines = [head, "-" * len(head)]
    for r in rows:
        k = "fp32" if r["K"] is None else str(r["K"])
        p = "inf" if math.isinf(r["psnr_vs_fp32"]) else f"{r['psnr_vs_fp32']:.2f}"
        layers = ", ".join(r["layers"][:6]) + (" …" if len(r["layers"]) > 6 else "")
        lines.append(f"{k:>4} {p:>12} {r['latency_ms']:>10.1f} {r['latency_vs_fp32']:>7.2f}  {layers}")
    return "\n".join(lines)
