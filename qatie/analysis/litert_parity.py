"""Proof, layer by layer, that a LiteRT file written by `qatie.export.to_tflite` computes the INT8
model it came from — and where LiteRT's arithmetic rounds differently, by how much.

Every int8 tensor of the file (one per quantization point) is recomputed from LiteRT's *own*
int8 inputs of that step with QATIE's arithmetic: convs as exact integer sums requantized in
float32 (`qatie.runtime.int8_reference`, the same function the ONNX proofs use, on the ONNX
model's own weights), everything else as the ONNX model's QDQ semantics say — dequantize, the
float op (tanh, InstanceNorm's statistics, LeakyReLU, add, product), quantize with round half to
even. A tensor that differs from that is LiteRT's own rounding at that one step; nothing
compounds, since each step starts from LiteRT's values. `conv_rows` are the convs alone.

`agreement` is the whole-network view: the LiteRT output, the ONNX INT8 output and the FP32
output of the same photo, each INT8 one scored against FP32 (the issue's ≤ 1 dB goal).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qatie.errors import ModelFileError
from qatie.export.to_tflite import read_onnx_int8
from qatie.runtime.int8_reference import IntConv, conv_u8
from qatie.runtime.litert import interpreter



@dataclass
class _Tensor:
    name: str
    dtype: type
    scale: float
    zp: int


def _read_graph(path):
    """The file's operators with their builtin options (the schema's object API)."""
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[c.builtinCode] for c in model.operatorCodes]
    return s, model, [(codes[o.opcodeIndex], list(o.inputs), list(o.outputs), o.builtinOptions)
                      for o in model.subgraphs[0].operators]


def _deq(t: _Tensor, q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(t.zp)) * np.float32(t.scale)


def _quant(t: _Tensor, f: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(f / np.float32(t.scale)) + t.zp, -128, 127).astype(np.int8)


class _Reference:
    """QATIE's arithmetic for each op of the file, on LiteRT's int8 inputs."""

    def __init__(self, s, tensors: list[_Tensor], consts: dict[int, np.ndarray], onnx_convs: dict):
        self.s, self.t, self.consts, self.onnx_convs = s, tensors, consts, onnx_convs

    def float_of(self, i: int, x: np.ndarray) -> np.ndarray:
        return _deq(self.t[i], x) if self.t[i].dtype == np.int8 else x.astype(np.float32)

    def out(self, i: int, f: np.ndarray) -> np.ndarray:
        return _quant(self.t[i], f) if self.t[i].dtype == np.int8 else f.astype(np.float32)

    def conv(self, ins, vals, o, opts) -> np.ndarray:
        x, w, b = ins
        key = self.t[w].name.removesuffix(".weight")
        ref = self.onnx_convs.get(key)
        wt = self.consts[w].transpose(0, 3, 1, 2)
        if ref is None or not np.array_equal(ref.w[:wt.shape[0], :wt.shape[1]], wt) \
                or not np.array_equal(ref.bias[:wt.shape[0]], self.consts[b]):
            raise ModelFileError(f"conv {key}: its weights are not the ONNX model's")
        k = wt.shape[2]
        pad = k // 2 if opts.padding == self.s.Padding.SAME else 0
        tx, ty = self.t[x], self.t[o]
        c = IntConv(key, "", "", wt, self.consts[b].astype(np.int64), np.float32(tx.scale), tx.zp + 128,
                    ref.w_scale[:wt.shape[0]], np.float32(ty.scale), ty.zp + 128, (pad,) * 4,
                    (opts.strideH, opts.strideW), (1, 1))
        u8 = (vals[x].astype(np.int16) + 128).astype(np.uint8).transpose(0, 3, 1, 2)
        y, _ = conv_u8(c, u8)
        return (y.astype(np.int16) - 128).astype(np.int8).transpose(0, 2, 3, 1)

    def run(self, kind: str, ins: list[int], vals: dict, o: int, opts) -> np.ndarray:
        f = [self.float_of(i, vals[i]) if i in vals else self.consts[i] for i in ins]
        if kind == "CONV_2D":
            return self.conv(ins, vals, o, opts)
        if kind in ("PAD", "MIRROR_PAD"):
            mode = "reflect" if kind == "MIRROR_PAD" else "constant"
            x = vals[ins[0]]
            kw = {"constant_values": self.t[ins[0]].zp} if mode == "constant" and x.dtype == np.int8 else {}
            return np.pad(x, self.consts[ins[1]], mode=mode, **kw)
        if kind in ("SLICE",):
            b, n = self.consts[ins[1]], self.consts[ins[2]]
            return vals[ins[0]][tuple(slice(a, a + m) for a, m in zip(b, n))]
        if kind == "DEPTH_TO_SPACE":
            x = vals[ins[0]]
            n, h, w, c = x.shape
            bs = opts.blockSize
            return x.reshape(n, h, w, bs, bs, c // bs // bs).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * bs, w * bs, -1)
        if kind == "MAX_POOL_2D":
            x = vals[ins[0]]
            n, h, w, c = x.shape
            return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))
        if kind == "CONCATENATION":
            return self.out(o, np.concatenate(f, opts.axis))
        return self.out(o, _FLOAT_OPS[kind](f, opts))


_FLOAT_OPS = {
    "QUANTIZE": lambda f, o: f[0], "DEQUANTIZE": lambda f, o: f[0],
    "TANH": lambda f, o: np.tanh(f[0]), "RSQRT": lambda f, o: 1 / np.sqrt(f[0]),
    "LEAKY_RELU": lambda f, o: np.where(f[0] > 0, f[0], np.float32(o.alpha) * f[0]),
    "ADD": lambda f, o: f[0] + f[1], "SUB": lambda f, o: f[0] - f[1], "MUL": lambda f, o: f[0] * f[1],
    "SQUARED_DIFFERENCE": lambda f, o: (f[0] - f[1]) ** 2,
    "MEAN": lambda f, o: f[0].mean(tuple(int(a) for a in f[1]), keepdims=bool(o.keepDims), dtype=np.float64).astype(np.float32),
}


def op_rows(tflite_path, onnx_path, image: np.ndarray, kernels: str = "xnnpack", threads: int = 1) -> list[dict]:
    """Per int8 tensor of the file (a quantization point), in execution order: LiteRT's value
    against QATIE's arithmetic on LiteRT's own int8 inputs of that step. Rows: tensor, op (the
    float ops since the last int8 tensor, joined by →), shape, share of values off, max levels."""
    s, model, ops = _read_graph(tflite_path)
    it = interpreter(tflite_path, preserve_all=True, threads=threads, kernels=kernels)
    inp = it.get_input_details()[0]
    if tuple(inp["shape"][1:3]) != image.shape[:2]:
        raise ModelFileError(f"{Path(tflite_path).name} takes {tuple(inp['shape'][1:3])} images, got {image.shape[:2]}")
    it.set_tensor(inp["index"], np.ascontiguousarray(image[None], np.float32))
    it.invoke()
    details = it.get_tensor_details()
    tensors = [_Tensor(d["name"], d["dtype"], *(d["quantization"] if d["quantization"][0] else (1.0, 0)))
               for d in details]
    produced = {o for _, _, outs, _ in ops for o in outs}
    inputs = {int(i) for i in model.subgraphs[0].inputs}
    consts = {i: it.get_tensor(i) for _, ins, _, _ in ops for i in ins if i not in produced and i not in inputs}
    ref = _Reference(s, tensors, consts, read_onnx_int8(onnx_path).convs)
    mine: dict[int, np.ndarray] = {}   # QATIE's float values of the float tensors (from LiteRT's int8 ones)
    chain: dict[int, list[str]] = {}
    rows = []
    for kind, ins, outs, opts in ops:
        o = outs[0]
        vals = {i: (mine[i] if tensors[i].dtype == np.float32 and i in mine else it.get_tensor(i)) for i in ins
                if i not in consts}
        want = ref.run(kind, ins, vals, o, opts)
        steps = [s_ for i in ins if i in chain for s_ in chain[i]] + [kind]
        if tensors[o].dtype == np.float32:
            mine[o], chain[o] = want, list(dict.fromkeys(steps))
            continue
        got = it.get_tensor(o)
        d = np.abs(got.astype(np.int16) - want.astype(np.int16))
        rows.append({"tensor": tensors[o].name, "op": _label(list(dict.fromkeys(steps))), "shape": list(got.shape),
                     "values": int(d.size), "off": int((d > 0).sum()), "max_levels": int(d.max())})
    return rows


def _label(steps: list[str]) -> str:
    """A float chain by what it computes (the ops as written: docs/litert.md)."""
    if "RSQRT" in steps:
        return "InstanceNorm (float)"
    if "TANH" in steps:
        return "tanh (float)"
    return "→".join(steps)


def conv_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["op"] == "CONV_2D"]


def summary(rows: list[dict]) -> list[dict]:
    """`op_rows` by op: tensors, values, share off, max levels."""
    out: dict[str, dict] = {}
    for r in rows:
        k = out.setdefault(r["op"], {"op": r["op"], "tensors": 0, "values": 0, "off": 0, "max_levels": 0})
        k["tensors"] += 1
        k["values"] += r["values"]
        k["off"] += r["off"]
        k["max_levels"] = max(k["max_levels"], r["max_levels"])
    return [v | {"off_pct": 100 * v["off"] / v["values"]} for v in out.values()]


def agreement(onnx_path, fp32_onnx, image: np.ndarray, cache_dir, threads: int = 2) -> dict:
    """The LiteRT export of `onnx_path` at the photo's size, the ONNX INT8 model and the FP32 model
    on one photo: each INT8 output's PSNR against FP32, and LiteRT's against the ONNX INT8 one."""
    from qatie.metrics import psnr
    from qatie.runtime.enhancer import OnnxEnhancer
    from qatie.runtime.litert import litert_enhancer

    h, w = image.shape[:2]
    lite = litert_enhancer(onnx_path, h, w, cache_dir, threads=threads).enhance(image)
    onnx_int8 = OnnxEnhancer(onnx_path, threads=threads).enhance(image)
    fp32 = OnnxEnhancer(fp32_onnx, threads=threads).enhance(image)
    return {"size": f"{h}x{w}", "litert_vs_fp32_db": psnr(lite, fp32), "onnx_vs_fp32_db": psnr(onnx_int8, fp32),
            "litert_vs_onnx_db": psnr(lite, onnx_int8), "model": os.fspath(onnx_path)}


def format_rows(rows: list[dict], kernels: str) -> str:
    head = f"LiteRT ({kernels}) against QATIE's arithmetic on LiteRT's own inputs, per op kind"
    lines = [head, f"{'op':22s} {'tensors':>7s} {'values':>11s} {'off':>9s} {'off %':>8s} {'max lv':>6s}"]
    lines += [f"{r['op']:22s} {r['tensors']:7d} {r['values']:11,d} {r['off']:9,d} {r['off_pct']:8.3f} {r['max_levels']:6d}"
              for r in summary(rows)]
    return "\n".join(lines)
