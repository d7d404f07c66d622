"""The exact integer result of an INT8 model's convs (numpy, int64 sums), what ONNX Runtime's
AVX2 kernels compute instead, and how far the shipped models' outputs are from exact.

Every QDQ conv of our export runs in ONNX Runtime as a U8S8 QLinearConv:
``y = clamp(round(float32(Σ (x − zx)·w + bias) · (sx·sw / sy)) + zy, 0, 255)`` with x uint8,
w int8. The sum is what differs between CPUs (`qatie.runtime.cpu`). MLAS's AVX2 kernels (the
symmetric-conv kernel, the QGEMM kernel after im2col and the GEMV kernel alike) multiply the
*raw* uint8 activations with the weights taken in the order (kernel row, kernel column, input
channel) — input channel fastest, spatial padding filled with the zero point zx — and add the
products in adjacent pairs (k = 2j, 2j+1; an odd count padded with a zero) with VPMADDUBSW, whose
int16 result saturates; the pair sums are then added exactly in int32 and zx·Σw is subtracted.
`conv_u8` computes both: the exact sum, or the saturating one (``saturate=True``).

A pair can only saturate when its two weights have the same sign and 255·(|w0| + |w1|) > 32767,
i.e. |w0| + |w1| ≥ 129: int8 weights of magnitude ≤ 64 can never saturate, whatever the input.

`probe_convs` runs a model in ONNX Runtime and captures every conv's uint8 input and output;
`check_convs` compares each conv's output with the exact and the modelled result. For whole
outputs, `exact_model` re-encodes the int8 weights as uint8 with zero point 128 (w + 128, the
same numbers): ONNX Runtime then takes its U8U8 kernels, which widen to int16 before
multiplying (VPMADDWD) and so sum exactly on every x86 path — a whole-network exact reference
that `deviation` compares the deployed model with.

Every model QATIE writes is pair-safe (QuantSpec v3, `qatie.model.pair_safety`): `saturable_pairs` and
`runtime_saturable_pairs` check it from the weights, `exactness_note` words it for a model that is not.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from qatie.model.pair_safety import risky_weight_pairs

INT16_MAX = 32767


@dataclass
class IntConv:
    """One QDQ conv as integers: uint8 input tensor `x`, uint8 output tensor `y` (both names in
    the ONNX graph), int8 weights O×C×kh×kw, int32 bias, and the quantization parameters."""
    name: str
    x: str
    y: str
    w: np.ndarray
    bias: np.ndarray
    x_scale: np.float32
    x_zp: int
    w_scale: np.ndarray
    y_scale: np.float32
    y_zp: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    strides: tuple[int, int]
    dilations: tuple[int, int]

    def risky_pairs(self) -> int:
        """Weight pairs (in MLAS's order) that can saturate for some input: same sign and |w0| + |w1| ≥ 129."""
        return risky_weight_pairs(self.w)


def _const_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    vals = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            vals[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return vals


def int_convs(model: "str | os.PathLike | onnx.ModelProto") -> list[IntConv]:
    """Every conv of a QDQ INT8 model whose input, weights and output are quantized (convs kept
    float are skipped)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    g = proto.graph
    vals = _const_values(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = []
    for n in g.node:
        if n.op_type != "Conv":
            continue
        dq_x, dq_w = producer.get(n.input[0]), producer.get(n.input[1])
        dq_b = producer.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        outs = consumers.get(n.output[0], [])
        if not (dq_x is not None and dq_x.op_type == "DequantizeLinear" and dq_w is not None
                and dq_w.op_type == "DequantizeLinear" and len(outs) == 1 and outs[0].op_type == "QuantizeLinear"):
            continue
        w = vals.get(dq_w.input[0])
        if w is None or w.dtype != np.int8 or w.ndim != 4:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"conv {n.name}: only group=1 with explicit pads is modelled")
        q = outs[0]
        pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
        bias = vals[dq_b.input[0]].astype(np.int64) if dq_b is not None else np.zeros(w.shape[0], np.int64)
        zp = lambda node: int(vals[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 else 0  # noqa: E731
        convs.append(IntConv(
            name=n.name or n.output[0], x=dq_x.input[0], y=q.output[0], w=w, bias=bias,
            x_scale=np.float32(vals[dq_x.input[1]].reshape(-1)[0]), x_zp=zp(dq_x),
            w_scale=np.broadcast_to(vals[dq_w.input[1]].astype(np.float32).reshape(-1), (w.shape[0],)).copy(),
            y_scale=np.float32(vals[q.input[1]].reshape(-1)[0]), y_zp=zp(q),
            pads=(pads[0], pads[1], pads[2], pads[3]), strides=tuple(attrs.get("strides", [1, 1])),
            dilations=tuple(attrs.get("dilations", [1, 1]))))
    return convs


def _weight_matrix(w: np.ndarray) -> np.ndarray:
    """O×C×kh×kw → K×O with k = (row·kw + column)·C + channel: MLAS's reduction order."""
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _im2col(conv: IntConv, x: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Raw uint8 N×C×H×W → (P×K int32 patches in MLAS's order, (N, Ho, Wo)); padding = zx."""
    n, c, h, w = x.shape
    o, _, kh, kw = conv.w.shape
    t, l, b, r = conv.pads
    sh, sw = conv.strides
    dh, dw = conv.dilations
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=conv.x_zp)
    ho = (h + t + b - dh * (kh - 1) - 1) // sh + 1
    wo = (w + l + r - dw * (kw - 1) - 1) // sw + 1
    cols = [xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]  # each N×C×Ho×Wo
    a = np.stack(cols, axis=1)  # N×(kh·kw)×C×Ho×Wo
    a = a.transpose(0, 3, 4, 1, 2).reshape(n * ho * wo, kh * kw * c)
    return a.astype(np.int32), (n, ho, wo)


def conv_accumulators(conv: IntConv, x: np.ndarray, saturate: bool = False) -> tuple[np.ndarray, int]:
    """(N×O×Ho×Wo int64 sums Σ (x − zx)·w + bias, number of saturated pair sums) for uint8 input
    `x`. `saturate`: add the products in MLAS's AVX2 pairs with int16 saturation."""
    a, (n, ho, wo) = _im2col(conv, np.asarray(x, np.uint8))
    wm = _weight_matrix(conv.w).astype(np.int32)
    # float64 products and sums are exact here (|Σ| ≤ 255·127·K ≪ 2^53)
    raw = (a.astype(np.float64) @ wm.astype(np.float64)).astype(np.int64)
    n_sat = 0
    if saturate:
        if wm.shape[0] % 2:
            wm = np.vstack([wm, np.zeros((1, wm.shape[1]), np.int32)])
            a = np.hstack([a, np.zeros((a.shape[0], 1), np.int32)])
        w0, w1 = wm[0::2], wm[1::2]
        risky = (np.sign(w0) * np.sign(w1) > 0) & (np.abs(w0) + np.abs(w1) >= 129)
        for j in np.flatnonzero(risky.any(axis=1)):
            s = a[:, 2 * j, None] * w0[j] + a[:, 2 * j + 1, None] * w1[j]  # P×O int32
            clipped = np.clip(s, -INT16_MAX - 1, INT16_MAX)
            n_sat += int((clipped != s).sum())
            raw += clipped - s
    acc = raw - conv.x_zp * wm.sum(axis=0).astype(np.int64) + conv.bias
    return acc.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2), n_sat


def requantize(conv: IntConv, acc: np.ndarray) -> np.ndarray:
    """int sums → uint8 as MLAS does: float32(sum) × float32(sx·sw/sy), clamped, rounded half to even."""
    scale = (conv.x_scale * conv.w_scale) / conv.y_scale  # float32, in the order ORT computes it
    y = acc.astype(np.float32) * scale.reshape(1, -1, 1, 1)
    y = np.clip(y, np.float32(-conv.y_zp), np.float32(255 - conv.y_zp))
    return (np.rint(y).astype(np.int32) + conv.y_zp).astype(np.uint8)


def conv_u8(conv: IntConv, x: np.ndarray, saturate: bool = False) -> tuple[np.ndarray, int]:
    """(uint8 output, saturated pair count) of `conv` on uint8 input `x`: exact, or as AVX2 computes it."""
    acc, n_sat = conv_accumulators(conv, x, saturate)
    return requantize(conv, acc), n_sat


# --------------------------------------------------------------------------------------------
# Pair safety: exact on every CPU, checked from the weights alone
# --------------------------------------------------------------------------------------------

def saturable_pairs(model: "str | os.PathLike | onnx.ModelProto") -> int:
    """Weight pairs of a model's INT8 convs, in the file's layout, that can saturate the int16
    pair sums of CPUs without VNNI. 0 means ONNX Runtime computes the exact integer result on
    every CPU, whatever the input (QuantSpec v3 keeps it 0 for every model QATIE writes)."""
    return sum(c.risky_pairs() for c in int_convs(model))


def runtime_saturable_pairs(model: "str | os.PathLike") -> int:
    """`saturable_pairs` in the layout ONNX Runtime runs: the weights of every integer conv
    (QLinearConv) of the graph ORT builds when it loads the model — after QATIE's graph passes
    and ORT's own (QDQ fusion, channels-last) — read back from its optimized-model file."""
    import onnxruntime as ort

    from qatie.runtime.enhancer import session_options

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "runtime.onnx"
        ort.InferenceSession(os.fspath(model), session_options(1, str(out)), providers=["CPUExecutionProvider"])
        g = onnx.load(str(out)).graph
    vals = _const_values(g)
    total = 0
    for n in g.node:
        if n.op_type != "QLinearConv":
            continue
        w = vals.get(n.input[3])
        if w is None or w.dtype != np.int8 or w.ndim != 4:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group != 1:
            raise ValueError(f"conv {n.name}: only group=1 is modelled")
        total += risky_weight_pairs(w)
    return total


def exactness_note(model: "str | os.PathLike", measured: Optional[dict] = None, on: str = "this photo",
                   pairs: Optional[int] = None) -> Optional[str]:
    """A plain-words warning for an INT8 model that is *not* pair-safe; None when it is (or has no
    INT8 convs). It says how many weight pairs can overflow, whether this CPU's kernels do, and —
    `measured`, the `levels_apart` of this CPU's output and the exact one on `on` (the photo
    shown) — how far off the output is (`pairs`: its `saturable_pairs`, when the caller already
    counted them). Models the user brings get it in the app's notice line, in
    `qatie deviation`, and wherever `qatie` writes an INT8 model (a guard: v3 writes none)."""
    from qatie.runtime.cpu import int8_exact, int8_path

    try:
        pairs = saturable_pairs(model) if pairs is None else pairs
    except ValueError as e:  # a conv form the check does not model (grouped, auto_pad)
        return f"its INT8 convs could not be checked for saturation ({e}): its output may differ between CPUs."
    if pairs == 0:
        return None
    path = int8_path()
    head = (f"{pairs:,} of its int8 weight pairs can overflow the 16-bit sums that CPUs without VNNI "
            f"(AVX2, AVX-512 without VNNI) use")
    if int8_exact(path):
        return head + f"; this CPU's kernels ({path}) add exactly, so its output here is the exact integer result."
    if measured is None:
        return head + f", as this CPU ({path}) does: its output here can differ from the exact integer result."
    if measured["max_levels"] == 0:
        return head + f", as this CPU ({path}) does; on {on} its output is still the exact integer result."
    return (head + f", as this CPU ({path}) does: on {on} its output is up to {measured['max_levels']} levels "
            f"off the exact integer result ({100 * measured['share_off']:.1f} % of values differ, "
            f"{measured['agreement_psnr_db']:.1f} dB agreement).")


def exact_enhancer(model: "str | os.PathLike", threads: int = 1):
    """An `OnnxEnhancer` of `exact_model(model)`: the exact integer result on this CPU."""
    from qatie.runtime.enhancer import OnnxEnhancer

    with tempfile.TemporaryDirectory() as d:  # the session keeps the graph: the file can go
        ref_path = Path(d) / f"{Path(model).stem}_exact.onnx"
        onnx.save(exact_model(model), str(ref_path))
        return OnnxEnhancer(ref_path, threads=threads, arena=False)  # a reference run: memory goes back


def levels_apart(deployed: np.ndarray, exact: np.ndarray) -> dict:
    """How far a deployed output is from the exact one, in 8-bit output levels and dB."""
    from qatie.metrics import psnr

    diff = np.abs(_levels(deployed) - _levels(exact))
    return {"max_levels": int(diff.max()), "mean_levels": float(diff.mean()), "share_off": float((diff > 0).mean()),
            "agreement_psnr_db": psnr(deployed, exact)}


# --------------------------------------------------------------------------------------------
# Running the model: capture each conv's input and output
# --------------------------------------------------------------------------------------------

def _as_nchw(image: np.ndarray) -> np.ndarray:
    from qatie.padding import pad_nchw

    x = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1)[None])
    return pad_nchw(x)[0]


def probe_convs(model: "str | os.PathLike", image: np.ndarray, threads: int = 1):
    """Run `model` in ONNX Runtime on an H×W×3 float image; returns (convs, {tensor: array}) with
    every conv's uint8 input and output, and the model output under its own name."""
    import onnxruntime as ort

    from qatie.runtime.enhancer import session_options

    proto = onnx.load(os.fspath(model))
    convs = int_convs(proto)
    have = {o.name for o in proto.graph.output}
    names = [proto.graph.output[0].name]
    for c in convs:
        for t in (c.x, c.y):
            if t not in names:
                names.append(t)
                if t not in have:
                    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    sess = ort.InferenceSession(proto.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: _as_nchw(image)}
    return convs, dict(zip(names, sess.run(names, feed)))


def check_convs(model: "str | os.PathLike", image: np.ndarray, threads: int = 1) -> list[dict]:
    """Per conv, on ONNX Runtime's own uint8 input: how its output compares with the exact result
    and with the AVX2 model. Rows: name, risky_pairs, saturated (pair sums clipped on this input),
    max_levels_vs_exact, outputs_vs_exact (how many output values differ), max_levels_vs_avx2."""
    convs, vals = probe_convs(model, image, threads)
    rows = []
    for c in convs:
        got = vals[c.y].astype(np.int32)
        exact, _ = conv_u8(c, vals[c.x])
        avx2, n_sat = conv_u8(c, vals[c.x], saturate=True)
        rows.append({"name": c.name, "risky_pairs": c.risky_pairs(), "saturated": n_sat,
                     "max_levels_vs_exact": int(np.abs(got - exact).max()),
                     "outputs_vs_exact": int((got != exact).sum()),
                     "max_levels_vs_avx2": int(np.abs(got - avx2).max())})
    return rows


# --------------------------------------------------------------------------------------------
# Whole network
# --------------------------------------------------------------------------------------------

def exact_model(model: "str | os.PathLike | onnx.ModelProto") -> onnx.ModelProto:
    """The same model with every conv's int8 weights stored as uint8 w + 128, zero point 128: ONNX
    Runtime runs these convs on its U8U8 kernels, which sum exactly (see the module docstring)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model)))
    g = proto.graph
    vals = _const_values(g)
    producer = {o: n for n in g.node for o in n.output}
    done = set()
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        dq = producer.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.name in done:
            continue
        w = vals.get(dq.input[0])
        if w is None or w.dtype != np.int8:
            continue
        zp = vals[dq.input[2]] if len(dq.input) > 2 else np.zeros((), np.int8)
        if np.any(zp != 0):
            raise ValueError(f"conv {n.name}: weights are not symmetric (zero point ≠ 0)")
        scale = vals[dq.input[1]]
        base = f"{dq.output[0]}__u8"
        g.initializer.extend([numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), base + "_w"),
                              numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), base + "_zp")])
        dq.input[0], dq.input[2] = base + "_w", base + "_zp"
        if len(dq.input) < 3:
            dq.input.append(base + "_zp")
        done.add(dq.name)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used or i.name in {o.name for o in g.output}]
    del g.initializer[:]
    g.initializer.extend(keep)
    return proto


def _levels(y: np.ndarray) -> np.ndarray:
    return np.round(np.clip(y, 0, 1) * 255).astype(np.int32)


def deviation(model: "str | os.PathLike", image: np.ndarray, threads: int = 1, per_conv: bool = True) -> dict:
    """How far ONNX Runtime's output of an INT8 model is from the exact integer result on this
    CPU's path: output levels (max, mean, share of values off), agreement PSNR in dB (inf when
    identical), and per conv (on ORT's own inputs) the saturated pair sums and differences."""
    from qatie.runtime.enhancer import OnnxEnhancer

    deployed = OnnxEnhancer(model, threads=threads).enhance(image)
    exact = exact_enhancer(model, threads).enhance(image)
    out = {"model": str(model), "image_hw": list(image.shape[:2])} | levels_apart(deployed, exact)
    if per_conv:
        rows = check_convs(model, image, threads)
        out["convs"] = rows
        out["convs_off_exact"] = sum(r["outputs_vs_exact"] > 0 for r in rows)
        out["saturated_pairs"] = sum(r["saturated"] for r in rows)
        out["convs_off_avx2_model"] = sum(r["max_levels_vs_avx2"] > 0 for r in rows)
    return out


# --------------------------------------------------------------------------------------------
# `qatie deviation`
# --------------------------------------------------------------------------------------------

def default_images(size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Centre crops (H×W `size`) of scikit-image's astronaut, coffee and chelsea photos."""
    from qatie.data.datasets import sample_images

    h, w = size
    out = {}
    for name, img in sample_images(("astronaut", "coffee", "chelsea")).items():
        if img.shape[0] < h or img.shape[1] < w:
            raise ValueError(f"--size {h}x{w} is larger than the {img.shape[0]}×{img.shape[1]} sample photo {name}")
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        out[name] = np.ascontiguousarray(img[top:top + h, left:left + w])
    return out


def measure(models: list[str], images: dict[str, np.ndarray], threads: int = 1) -> dict:
    """`deviation` of each model on each image, with the machine it ran on (`qatie.runtime.cpu`)."""
    from qatie.runtime.cpu import machine_summary
    from qatie.errors import QatieError
    from qatie.runtime.enhancer import resolve_onnx

    rows, warnings = [], {}
    for m in models:
        path = resolve_onnx(m)
        if not int_convs(path):
            raise QatieError(f"{m} ({path}) has no INT8 convs (QDQ with int8 weights): nothing to compare")
        pairs = saturable_pairs(path)
        mine = []
        for name, img in images.items():
            d = deviation(path, img, threads=threads)
            d.pop("convs")
            mine.append(d | {"model": m, "image": name, "path": str(path), "saturable_pairs": pairs})
        rows += mine
        worst = max(mine, key=lambda r: r["max_levels"])
        note = exactness_note(path, worst, on=worst["image"], pairs=pairs)
        if note:
            warnings[m] = note
    return {"machine": machine_summary(threads), "results": rows, "warnings": warnings}


def format_deviation(result: dict) -> str:
    """A text table of `measure`'s result."""
    from qatie.runtime.cpu import describe

    s = result["machine"]
    model = "avx2" if s["int8_exact"] is False else "exact"
    head = ["model", "image", "H×W", "max lv", "mean lv", "off %", "agreement dB", "convs ≠ exact",
            "AVX2 clips", f"convs ≠ {model} model", "saturable pairs"]
    body = [[r["model"], r["image"], "×".join(map(str, r["image_hw"])), str(r["max_levels"]), f"{r['mean_levels']:.3f}",
             f"{100 * r['share_off']:.1f}", "inf" if math.isinf(r["agreement_psnr_db"]) else f"{r['agreement_psnr_db']:.2f}",
             str(r["convs_off_exact"]), str(r["saturated_pairs"]),
             str(r["convs_off_avx2_model"] if model == "avx2" else r["convs_off_exact"]),
             str(r["saturable_pairs"])] for r in result["results"]]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()  # noqa: E731
    return "\n".join([f"INT8 output vs the exact integer result — {describe(s)}", line(head),
                      line(["-" * w for w in widths])] + [line(b) for b in body] + [
        "levels: |ONNX Runtime − exact| of the 8-bit output; exact = the same model on uint8 weights (U8U8 kernels); "
        "per conv (on ONNX Runtime's own inputs): outputs off the numpy exact sum, pair sums AVX2 clips, "
        "and convs off the model of this CPU's kernels (0 = the model is the kernel); saturable pairs: weight pairs "
        "that can overflow int16 on CPUs without VNNI (0 = exact on every CPU)."] +
        [f"WARNING: {m}: {note}" for m, note in result.get("warnings", {}).items()])
