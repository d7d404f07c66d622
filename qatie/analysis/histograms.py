"""One quantized tensor's FP32 values on an image against each INT8 model's grid: why a range
loses detail (tails, outliers, clipping)."""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from qatie.errors import QatieError
from qatie.export.sidecar import labels_for, read_sidecar, stage_of
from qatie.analysis.probe import DEFAULT_MAX_SIDE, _activations, fit_image
from qatie.analysis.sqnr import _reference_tensors

def _find_tensor(sidecars: list[dict], tensor_name: str) -> dict:
    for s in sidecars:
        for t in s["tensors"]:
            if tensor_name in (t["name"], t.get("onnx_tensor"), t.get("dq_tensor")):
                return t
    names = [t["name"] for t in sidecars[0]["tensors"]] if sidecars else []
    raise QatieError(f"no quantized tensor {tensor_name!r}; known: {', '.join(names[:8])}, …")


def _sidecar_items(sidecars) -> tuple[list[str], list[dict]]:
    if isinstance(sidecars, Mapping):
        items = list(sidecars.items())
        return [str(k) for k, _ in items], [read_sidecar(v) for _, v in items]
    if isinstance(sidecars, (str, os.PathLike)):
        sidecars = [sidecars]
    sides = [read_sidecar(s) for s in sidecars]
    paths = [s if not isinstance(s, Mapping) else s.get("model", f"model{i}") for i, s in enumerate(sidecars)]
    return labels_for(paths, sides, None), sides


def activation_histogram(fp32_onnx, tensor_name: str, image, sidecars, bins: int = 256, threads: int = 2,
                         max_side: int | None = DEFAULT_MAX_SIDE) -> dict:
    """Histogram of one quantized tensor's FP32 values on `image`, with each INT8 model's range.

    `tensor_name`: a QPoint name (`enc1.q_a`) or its ONNX tensor name. `sidecars`: INT8 model
    paths (.onnx or .json), sidecar dicts, or {label: one of those}. Returns {name, stage,
    onnx_tensor, analysed_size, values: {count, min, max, mean, std, p0.01, p99.99}, counts,
    edges, ranges: [{label, min, max, scale, zero_point, step, levels, clipped_low, clipped_high,
    levels_used}]} — `step` is the quantization step in the tensor's own units (= scale),
    `clipped_*` the share of this image's values outside the range, `levels_used` how many of
    the 256 levels this image's values actually span."""
    labels, sides = _sidecar_items(sidecars)
    if not sides:
        raise QatieError("activation_histogram needs at least one INT8 sidecar")
    t = _find_tensor(sides, tensor_name)
    img = fit_image(image, max_side)
    acts = _activations(fp32_onnx, _reference_tensors(sides), img, threads, keep=True)
    if t["name"] not in acts:
        raise QatieError(f"{fp32_onnx}: the model has no tensor for {t['name']} ({t.get('onnx_tensor')})")
    v = acts[t["name"]].ravel()
    vmin, vmax = float(v.min()), float(v.max())
    ranges = []
    for lab, s in zip(labels, sides):
        entry = next((e for e in s["tensors"] if e["name"] == t["name"]), None)
        if entry is None:
            continue
        scale, zp = float(entry["scale"]), int(entry["zero_point"])
        lo, hi = (0 - zp) * scale, (255 - zp) * scale  # the grid the model really uses (0 included)
        used_lo, used_hi = max(vmin, lo), min(vmax, hi)
        ranges.append({"label": lab, "min": float(entry.get("min", lo)), "max": float(entry.get("max", hi)),
                       "grid_min": lo, "grid_max": hi, "scale": scale, "zero_point": zp, "step": scale,
                       "levels": 256, "clipped_low": float(np.mean(v < lo - scale / 2)),
                       "clipped_high": float(np.mean(v > hi + scale / 2)),
                       "levels_used": int(max(0, round((used_hi - used_lo) / scale)) + 1)})
    lo_edge = min([vmin] + [r["grid_min"] for r in ranges])
    hi_edge = max([vmax] + [r["grid_max"] for r in ranges])
    if hi_edge <= lo_edge:
        hi_edge = lo_edge + 1e-6
    counts, edges = np.histogram(v, bins=bins, range=(lo_edge, hi_edge))
    p_lo, p_hi = np.percentile(v, [0.01, 99.99])
    return {"name": t["name"], "stage": stage_of(t["name"]), "onnx_tensor": t.get("onnx_tensor"),
            "analysed_size": list(img.shape[:2]),
            "values": {"count": int(v.size), "min": vmin, "max": vmax, "mean": float(v.mean()), "std": float(v.std()),
                       "p0.01": float(p_lo), "p99.99": float(p_hi)},
            "counts": counts.tolist(), "edges": edges.tolist(), "ranges": ranges}

