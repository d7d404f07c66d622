"""Why the authors' full-HD INT8 TFLite model breaks photos, measured against our FP32 import.

Three measurements, each a function (docs/paper_model_numbers.py prints them):
- `tanh_gate_grids`: the int8 grid each encoder's tanh reaches its gate product on. The TFLite
  converter requantizes each tanh output to the scale of the concat it also feeds (int8 concat
  inputs must share one scale) and the gate's MUL reads that requantized tensor, so a tanh in
  [−1, 1] gets only as many levels as the concat's range leaves it.
- `layer_clipping`: per conv, the authors' INT8 tensor against our FP32 one on the same photo
  (SQNR, and the share of FP32 values outside the int8 grid: clipping).
- `gate_grid_experiment`: our FP32 network with only the gate inputs quantized on a given file's
  grids — what that one choice costs, with everything else exact.
"""
from __future__ import annotations

import numpy as np

from qatie.metrics import psnr, sqnr_db
from qatie.paper.tflite import _interpreter, conv_mapping, read_convs, run_tflite

_GATES = ("enc1.a", "enc1.b", "enc2.a", "enc2.b")


def tanh_gate_grids(tflite_path) -> list[dict]:
    """For each encoder branch: the scale and zero point of the tensor its gate MUL reads, and how
    many int8 levels fall inside tanh's range [−1, 1]."""
    it = _interpreter(tflite_path)
    details = it.get_tensor_details()
    ops = it._get_ops_details()
    producer = {o["outputs"][0]: o for o in ops}
    rows = []
    for op in ops:
        if op["op_name"] != "MUL" or not all(producer.get(t, {}).get("op_name") == "QUANTIZE" for t in op["inputs"]):
            continue  # the gate product: both inputs are requantized tanh outputs
        for t in op["inputs"]:
            scale, zp = details[t]["quantization"]
            levels = int(np.sum(np.abs((np.arange(-128, 128) - zp) * scale) <= 1.0))
            rows.append({"scale": float(scale), "zero_point": int(zp), "levels_in_tanh_range": levels})
    for row, name in zip(rows, _GATES):
        row["branch"] = name
    return rows


def _fake_quant(scale: float, zp: int):
    import torch

    def q(x):
        return (torch.clamp(torch.round(x / scale) + zp, -128, 127) - zp) * scale
    return q


def gate_grid_experiment(model, image: np.ndarray, grids: list[dict]) -> dict:
    """Our FP32 `model` on `image` (H×W×3) with only the four gate inputs (tanh outputs at
    `enc*.q_ta/q_tb`) fake-quantized on `grids` (from `tanh_gate_grids`): PSNR of the result
    against the exact FP32 output, and the mean colour shift (levels, per RGB channel)."""
    import torch

    from qatie.model.network import swapped_hooks

    points = {"enc1.a": model.enc1.q_ta, "enc1.b": model.enc1.q_tb, "enc2.a": model.enc2.q_ta, "enc2.b": model.enc2.q_tb}
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))[None])
    with torch.no_grad():
        ref = model(x)[0].numpy().transpose(1, 2, 0)
        with swapped_hooks({points[g["branch"]]: _fake_quant(g["scale"], g["zero_point"]) for g in grids}):
            out = model(x)[0].numpy().transpose(1, 2, 0)
    return {"psnr_vs_fp32_db": psnr(ref, out), "mean_shift_levels_rgb": [round(float(v), 2) for v in 255 * (out - ref).mean((0, 1))],
            "output": out, "fp32": ref}


def layer_clipping(tflite_path, model, image: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """Our FP32 `model` and the authors' INT8 model on the same `image` (at the TFLite model's
    input size): per conv, the chained SQNR of their tensor against ours and the share of our FP32
    values outside their int8 grid. Also returns their output image."""
    import torch

    it = _interpreter(tflite_path, preserve_all=True)
    mapping = conv_mapping(read_convs(it), model)
    details = it.get_tensor_details()
    modules = dict(model.named_modules())
    ours = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: ours.__setitem__(n, o[0].numpy().transpose(1, 2, 0)))
             for n in mapping]
    try:
        y_tfl, tensors = run_tflite(it, image, [c.output for c in mapping.values()])
        with torch.no_grad():
            y = model(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))[None]))[0].numpy().transpose(1, 2, 0)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for n, c in mapping.items():
        scale, zp = details[c.output]["quantization"]
        lo, hi = (-128 - zp) * scale, (127 - zp) * scale
        f = ours.pop(n)
        rows.append({"layer": n, "sqnr_db": sqnr_db(f, tensors[c.output]), "grid": [float(lo), float(hi)],
                     "fp32_range": [float(f.min()), float(f.max())],
                     "clipped_pct": float(100 * np.mean((f < lo) | (f > hi)))})
    rows.append({"layer": "output", "psnr_vs_fp32_db": psnr(y, y_tfl)})
    return rows, y_tfl

