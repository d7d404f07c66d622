"""Post-export graph optimisation: make ONNX Runtime's integer kernels faster without changing a value.

`qatie.export.to_onnx` calls `optimize_int8` on every INT8 QDQ model (and `optimize_fp32` on every FP32
model) right before saving. Every pass here is *value-preserving*: the optimised graph computes
bit-for-bit the output of the unoptimised one in ONNX Runtime (tests/test_graph_opt.py checks
that, and that every conv still becomes a QLinearConv). The QuantSpec — which tensors are
quantized and with which parameters — is untouched; only how ORT gets to compute it changes.
Measured effects are in docs/performance.md.

Passes (INT8):

* `pad_narrow_convs` — ONNX Runtime (MLAS) runs a QLinearConv through its fast symmetric
  "indirect" convolution (`MlasConvSym`, AVX-512 VNNI, requantization fused) only when the int8
  weights have zero point 0, the input channels are a multiple of 4 and there are ≥ 16 output
  channels (a multiple of 4). Otherwise it falls back to im2col + QGEMM, which at full resolution
  memsets and fills a K×H×W byte buffer per call (≈ 600 MB for the 3×3, 32→3 output conv at
  1080p) and then requantizes from an int32 buffer. Our two 3-channel-input convs (enc1.a/b)
  and the 3-channel output conv (delta) hit that path. The pass pads them with zeros: input
  channels by a `Pad` of the *quantized* input with its zero point (dequantizes to exactly 0)
  plus zero weight columns; output channels by zero weight rows / zero bias, and a `Slice` of
  the quantized output back to the real channels (or, where one `Split` on channels reads it —
  delta's four phases — one more, unread, piece of that Split). Zero weights add exact integer
  zeros, so the int32 accumulators — and therefore every output level — are unchanged.
* `fold_pad_into_conv` — the sub-pixel up-convs' asymmetric zero padding (an ONNX `Pad`, as
  torch convs pad symmetrically) becomes the conv's own `pads`, so ORT fuses DQ → Conv → Q.
* `copies_in_uint8` — DQ → pure copies (Concat, Reshape, Transpose) → Q with one scale and zero
  point throughout (the QuantSpec's concats and the sub-pixel interleave) runs the copies on the
  uint8 tensors: ORT's QLinearConcat is single-threaded and requantizes every input.
* `merge_sibling_convs` — QDQ convs reading one tensor and concatenated along channels with one
  scale and zero point (up1's four phase convs, which feed delta together) become one conv whose
  kernel holds each of theirs; no concat pass over the result.
* `tanh_lookup` — DQ → Tanh → Q becomes com.microsoft `QLinearSigmoid`, a 256-entry table
  (tanh(x) = 2σ(2x) − 1; the QuantSpec gives tanh outputs a 1/n scale for this), once ORT's
  tables of both forms are checked identical over all 256 input levels.
* `drop_redundant_clip` — a `Clip(min, max)` fed by a DequantizeLinear whose 256 possible
  outputs all lie in [min, max] is the identity (the network output is quantized at scale
  1/255, zero point 0, so it is already in [0, 1]); it is removed and the DequantizeLinear
  writes the graph output directly.

Run it on an existing file with `python -m qatie.export.graph_opt IN.onnx [OUT.onnx]` (idempotent; the
sidecar next to it is updated too).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx

from qatie.util import atomic_write, atomic_write_text
from qatie.export.graph_opt.graph import OptReport
from qatie.export.graph_opt.passes import (copies_in_uint8, drop_redundant_clip, fold_pad_into_conv, merge_sibling_convs, pad_narrow_convs,
                     tanh_lookup)

__all__ = ["OptReport", "copies_in_uint8", "drop_redundant_clip", "fold_pad_into_conv", "merge_sibling_convs",
           "pad_narrow_convs", "tanh_lookup", "optimize_int8", "optimize_fp32", "optimize_file", "is_int8", "main"]


def _prune_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers and Constant nodes nothing reads any more."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        model.graph.node.remove(n)
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


INT8_PASSES = (fold_pad_into_conv, copies_in_uint8, merge_sibling_convs, pad_narrow_convs, tanh_lookup,
               drop_redundant_clip)
FP32_PASSES = (fold_pad_into_conv,)  # the sub-pixel up-convs' padding; nothing else helped FP32 (docs/performance.md)


def _run_passes(model: onnx.ModelProto, passes) -> OptReport:
    report = OptReport()
    for p in passes:
        p(model, report)
    _prune_initializers(model)
    return report


def optimize_int8(model: onnx.ModelProto) -> OptReport:
    """Apply every INT8 pass to `model` in place; returns what changed. Idempotent."""
    return _run_passes(model, INT8_PASSES)


def optimize_fp32(model: onnx.ModelProto) -> OptReport:
    """Apply every FP32 pass to `model` in place; returns what changed. Idempotent."""
    return _run_passes(model, FP32_PASSES)


def is_int8(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def optimize_file(src, dst=None) -> OptReport:
    """Optimise an exported .onnx file (INT8 or FP32) and write it to `dst` (default: in place)."""
    src = Path(src)
    dst = Path(dst) if dst else src
    model = onnx.load(str(src))
    report = optimize_int8(model) if is_int8(model) else optimize_fp32(model)
    onnx.checker.check_model(model)
    atomic_write(dst, lambda tmp: onnx.save(model, str(tmp)))
    side_src, side_dst = src.with_suffix(".json"), dst.with_suffix(".json")
    if side_src.is_file() and (report or side_src != side_dst):
        # keep the sidecar true to the graph: renamed DQ outputs, and what was changed
        side = json.loads(side_src.read_text())
        for t in side.get("tensors", []):
            report.fix_sidecar_tensor(t)
        side["graph_opt"] = side.get("graph_opt", []) + report.changes
        atomic_write_text(side_dst, json.dumps(side, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        print("usage: python -m qatie.export.graph_opt IN.onnx [OUT.onnx]", file=sys.stderr)
        return 2
    report = optimize_file(*argv)
    print("\n".join(report.changes) if report else "nothing to change")
    return 0
