"""Score enhancers on (input, target) pairs: PSNR/SSIM against the target, and agreement with
the first model (how INT8 models are scored against their FP32 parent).

An enhancer is named by a string: a `.pt` checkpoint (run in torch), an `.onnx` file or a
shipped model name (run in ONNX Runtime); `qatie.runtime.enhancer.load_enhancer`, the one model
loader, turns it into a plain function image → image.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

import numpy as np

from qatie.errors import QatieError
from qatie.metrics import agreement, psnr, ssim

from qatie.runtime.enhancer import Enhancer, load_enhancer

INPUT = "input"


def _mean(values: Iterable[float]) -> float:
    """Mean that stays inf when any value is inf (an image reproduced exactly)."""
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _summarize_agreement(items: list[dict]) -> dict:
    return {
        "psnr_vs_fp32": _mean(a["psnr_vs_fp32"] for a in items),
        "max_levels": max(a["max_levels"] for a in items),
        "mean_levels": _mean(a["mean_levels"] for a in items),
        "share_over_2_levels": _mean(a["share_over_2_levels"] for a in items),
    }


def evaluate(models: list[str], pairs: list[tuple[str, np.ndarray, np.ndarray]], threads: int = 2,
             enhancers: Optional[dict[str, Enhancer]] = None,
             progress: Optional[Callable[[int, int, str], None]] = None) -> dict:
    """Score each model (and the untouched input) on `pairs` of (name, input, target).

    Returns {"models", "count", "summary": {name: {psnr, ssim, s_per_image[,
    agreement_with_<first>]}}, "images": [{name, input: {psnr, ssim}, <model>: {...}}]}.
    Summary PSNR/SSIM are means over images. For every model after the first, its output is
    compared with the first model's output (`metrics.agreement`): per image, and in the summary
    as means (max for `max_levels`). `enhancers` may supply ready functions by model name.
    """
    if not models:
        raise QatieError("no models to evaluate")
    if len(set(models)) != len(models):
        raise QatieError(f"a model is listed twice: {', '.join(models)}")
    if INPUT in models:
        raise QatieError(f"{INPUT!r} is reserved for the unprocessed input; rename that model file")
    if not pairs:
        raise QatieError("no images to evaluate")
    enhancers = dict(enhancers or {})
    for m in models:
        if m not in enhancers:
            enhancers[m] = load_enhancer(m, threads=threads)
    first = models[0]
    agree_key = f"agreement_with_{first}"
    images, seconds = [], {m: 0.0 for m in models}
    for i, (name, inp, tgt) in enumerate(pairs):
        if progress is not None:
            progress(i, len(pairs), name)
        if inp.shape != tgt.shape:
            raise QatieError(f"{name}: input {inp.shape[:2]} and target {tgt.shape[:2]} differ in size")
        row = {"name": name, INPUT: {"psnr": psnr(inp, tgt), "ssim": ssim(inp, tgt)}}
        reference = None
        for m in models:
            t0 = time.perf_counter()
            out = enhancers[m](inp)
            seconds[m] += time.perf_counter() - t0
            entry = {"psnr": psnr(out, tgt), "ssim": ssim(out, tgt)}
            if m == first:
                reference = out
            else:
                entry[agree_key] = agreement(out, reference)
            row[m] = entry
        images.append(row)
    if progress is not None:
        progress(len(pairs), len(pairs), "")
    summary = {}
    for key in [INPUT] + list(models):
        summary[key] = {"psnr": _mean(r[key]["psnr"] for r in images),
                        "ssim": _mean(r[key]["ssim"] for r in images)}
        if key != INPUT:
            summary[key]["s_per_image"] = seconds[key] / len(images)
        if key not in (INPUT, first):
            summary[key][agree_key] = _summarize_agreement([r[key][agree_key] for r in images])
    return {"models": list(models), "count": len(images), "summary": summary, "images": images}


def _num(v: float, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "inf"
    return format(v, fmt)


def format_table(result: dict) -> str:
    """A plain-text table of the summary: PSNR, SSIM, gain over the input and agreement."""
    models = result["models"]
    summary = result["summary"]
    first = models[0]
    agree_key = f"agreement_with_{first}"
    names = [INPUT] + models
    w = max(12, *(len(n) for n in names))
    has_agree = len(models) > 1
    head = f"{'model':<{w}}  {'PSNR dB':>8}  {'SSIM':>7}  {'ΔPSNR':>7}  {'s/img':>6}"
    if has_agree:
        head += f"  | vs {first[:24]}: {'PSNR dB':>8}  {'max lv':>6}  {'mean lv':>7}  {'>2 lv':>6}"
    lines = [f"{result['count']} images", head, "-" * len(head)]
    base = summary[INPUT]["psnr"]
    for n in names:
        s = summary[n]
        gain = "" if n == INPUT else _num(s["psnr"] - base, "+.2f")
        secs = _num(s["s_per_image"], ".3f") if "s_per_image" in s else ""
        line = f"{n:<{w}}  {_num(s['psnr'], '.2f'):>8}  {_num(s['ssim'], '.4f'):>7}  {gain:>7}  {secs:>6}"
        if has_agree and agree_key in s:
            a = s[agree_key]
            pad = " " * (len(f"  | vs {first[:24]}: "))
            line += (f"{pad}{_num(a['psnr_vs_fp32'], '.2f'):>8}  {_num(a['max_levels'], '.0f'):>6}  "
                     f"{_num(a['mean_levels'], '.3f'):>7}  {_num(100 * a['share_over_2_levels'], '.2f') + '%':>6}")
        lines.append(line.rstrip())
    return "\n".join(lines)
