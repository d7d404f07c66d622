"""Per-tensor SQNR of INT8 models against FP32 on one image, and its text / JSON / CSV forms."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from qatie.errors import QatieError
from qatie.metrics import sqnr_db
from qatie.export.sidecar import labels_for, read_sidecar, stage_of
from qatie.util import jsonable
from qatie.analysis.probe import DEFAULT_MAX_SIDE, _activations, _as_float_image, _nchw, _probe, fit_image

def fake_quant(x: np.ndarray, scale: float, zero_point: int, qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """numpy QuantizeLinear → DequantizeLinear (round half to even, as ONNX does)."""
    s = np.float32(scale)
    q = np.clip(np.rint(x / s) + zero_point, qmin, qmax)
    return ((q - zero_point) * s).astype(np.float32)


def _reference_tensors(sidecars: list[dict]) -> list[dict]:
    """The union of the sidecars' tensors, in the first sidecar's (network) order."""
    seen, out = set(), []
    for s in sidecars:
        for t in s["tensors"]:
            if t["name"] not in seen:
                seen.add(t["name"])
                out.append(t)
    return out


def inspect_image(fp32_onnx, int8_onnx_list: Sequence, image, labels: Sequence[str] | None = None,
                  threads: int = 2, max_side: int | None = DEFAULT_MAX_SIDE) -> dict:
    """Per-tensor SQNR of each INT8 model against `fp32_onnx` on one image, with context.

    Returns {"image_size": [H, W], "analysed_size": [h, w], "models": {"fp32": path, label:
    path, ...}, "labels": [...], "layers": rows} — rows as in `layer_sqnr`. `fp32_onnx` may
    also be an INT8 model (then two INT8 models are compared tensor by tensor)."""
    if not int8_onnx_list:
        raise QatieError("no INT8 models to inspect")
    paths = [Path(p) for p in int8_onnx_list]
    sidecars = [read_sidecar(p) for p in paths]
    labels = labels_for(paths, sidecars, labels)
    full = _as_float_image(image)
    img = fit_image(full, max_side)
    tensors = _reference_tensors(sidecars)
    ref = _activations(fp32_onnx, tensors, img, threads, keep=True)
    rows = [{"name": t["name"], "stage": stage_of(t["name"])} for t in tensors]
    for label, path, side in zip(labels, paths, sidecars):
        own = {t["name"]: t for t in side["tensors"]}
        probe = _probe(path, side["tensors"], threads)
        x, hw = _nchw(img)
        _, raw = probe.run(x, hw)
        for row in rows:
            name = row["name"]
            if name not in raw or name not in ref:
                row[f"sqnr_{label}_db"] = row[f"range_sqnr_{label}_db"] = None
                continue
            r = ref[name]
            row[f"sqnr_{label}_db"] = sqnr_db(r, probe.value(name, raw.pop(name)))
            src, scale, zp = probe.fetch[name]
            if scale is None:
                scale, zp = own[name]["scale"], own[name]["zero_point"]
            row[f"range_sqnr_{label}_db"] = sqnr_db(r, fake_quant(r, scale, zp))
        del raw
    return {"image_size": list(full.shape[:2]), "analysed_size": list(img.shape[:2]),
            "models": {"fp32": str(fp32_onnx), **{lab: str(p) for lab, p in zip(labels, paths)}},
            "labels": labels, "layers": rows}


def layer_sqnr(fp32_onnx, int8_onnx_list: Sequence, image, labels: Sequence[str] | None = None,
               threads: int = 2, max_side: int | None = DEFAULT_MAX_SIDE) -> list[dict]:
    """One row per quantized tensor of the INT8 sidecars, in network order:
    {name, stage, sqnr_<label>_db, range_sqnr_<label>_db for each INT8 model}; labels are
    'ptq'/'qat' from the sidecars' `source` (so the usual rows read {name, stage, sqnr_ptq_db,
    sqnr_qat_db, ...}). SQNR is +inf where a tensor is identical to the reference.
    `image`: H×W×3 (float [0,1] or uint8) or an image file; larger than `max_side` is downscaled."""
    return inspect_image(fp32_onnx, int8_onnx_list, image, labels, threads, max_side)["layers"]


def sqnr_keys(rows: list[dict]) -> list[str]:
    """The labels present in SQNR rows, in column order ('ptq', 'qat', ...)."""
    if not rows:
        return []
    return [k[5:-3] for k in rows[0] if k.startswith("sqnr_") and k.endswith("_db")]


def worst_layers(rows: list[dict], label: str, n: int = 5, key: str = "sqnr") -> list[str]:
    """Names of the `n` tensors with the lowest finite `<key>_<label>_db` (key: 'sqnr' or
    'range_sqnr')."""
    col = f"{key}_{label}_db"
    vals = [(r[col], r["name"]) for r in rows if r.get(col) is not None and math.isfinite(r[col])]
    return [name for _, name in sorted(vals)[:n]]


def _fmt_db(v) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.1f}"


def format_table(result_or_rows, worst: int = 5) -> str:
    """Plain-text table: one line per tensor, SQNR (cumulative) and range-only SQNR per model,
    the `worst` lowest cumulative SQNRs of each model marked ◀."""
    rows = result_or_rows["layers"] if isinstance(result_or_rows, dict) else result_or_rows
    labels = sqnr_keys(rows)
    worst_sets = {lab: set(worst_layers(rows, lab, worst)) for lab in labels}
    w = max([len("tensor")] + [len(r["name"]) for r in rows])
    sw = max([len("stage")] + [len(r["stage"]) for r in rows])
    head = f"{'tensor':<{w}}  {'stage':<{sw}}"
    for lab in labels:
        head += f"  {lab.upper() + ' dB':>9}  {'range dB':>8}"
    lines = ["SQNR vs FP32 (dB; higher is better; 'range' = this tensor's own quantization only)", head, "-" * len(head)]
    for r in rows:
        line = f"{r['name']:<{w}}  {r['stage']:<{sw}}"
        marks = []
        for lab in labels:
            line += f"  {_fmt_db(r.get(f'sqnr_{lab}_db')):>9}  {_fmt_db(r.get(f'range_sqnr_{lab}_db')):>8}"
            if r["name"] in worst_sets[lab]:
                marks.append(lab.upper())
        if marks:
            line += "  ◀ worst " + "/".join(marks)
        lines.append(line)
    for lab in labels:
        lines.append(f"worst {lab.upper()}: " + ", ".join(
            f"{n} ({_fmt_db(next(r[f'sqnr_{lab}_db'] for r in rows if r['name'] == n))})" for n in worst_layers(rows, lab, worst)))
        lines.append(f"lowest range-only {lab.upper()}: " + ", ".join(worst_layers(rows, lab, worst, "range_sqnr")))
    return "\n".join(lines)


def write_json(result: dict, path, image_name: str | None = None) -> Path:
    """Write an `inspect_image` result as strict JSON ({"image", ..., "layers": [...]}; an
    infinite SQNR — identical tensors — is written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"image": image_name, **result}
    path.write_text(json.dumps(jsonable(payload), indent=1, allow_nan=False, ensure_ascii=False))
    return path


def write_csv(rows_or_result, path) -> Path:
    """One CSV row per tensor: name, stage, sqnr_<label>_db..., range_sqnr_<label>_db...
    (inf written as 'inf', missing as empty)."""
    rows = rows_or_result["layers"] if isinstance(rows_or_result, dict) else rows_or_result
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else ["name", "stage"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=fields)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v))
                         for k, v in r.items()})
    return path

