"""QATIE's INT8 models as LiteRT (TFLite) flatbuffers, with QATIE's own quantization parameters.

No converter recalibrates anything: the file is written op by op from the INT8 ONNX model and
its sidecar (`qatie.export.sidecar`) with the LiteRT schema that `ai-edge-litert` ships. Every
conv gets the ONNX model's int8 weights, per-channel scales and int32 biases unchanged, every
tensor the (scale, zero point) of its quantization point — uint8 level u with zero point z is
int8 level u − 128 with zero point z − 128, the same grid — so the integer sums are the ones
`qatie.runtime.int8_reference` computes (proved conv by conv: `qatie.analysis.litert_parity`).

What LiteRT computes differently from ONNX Runtime, on purpose kept as QuantSpec says:
- tanh and InstanceNorm run in float between DEQUANTIZE and QUANTIZE (QuantSpec's float ops).
  Each tanh output is quantized straight from the float tanh onto its own grid — the gate's
  1/n grid and the concat's — never requantized from LiteRT's fixed 1/128 int8 TANH grid (the
  authors' file reads its gates off the concat's grid: 3 levels, docs/paper_model.md).
- InstanceNorm is MEAN → SQUARED_DIFFERENCE → MEAN → ADD ε → RSQRT, × γ, on (x − mean), + β,
  all float32: the per-channel statistics of the whole tensor, as ONNX Runtime's op.
- The up-convs are the sub-pixel phase convs of the ONNX model, interleaved by DEPTH_TO_SPACE.
- Requantization (conv, add, mul, LeakyReLU) is LiteRT's own: its fixed-point multipliers
  round differently from ONNX Runtime's float32 scale at near-ties (at most a level, rarely).

The file has a fixed input size (LiteRT's convention; the authors' files are 100×100 and
1920×1080): float32 NHWC in [0, 1], padded inside the graph to a multiple of 8 as
`qatie.padding` pads (reflect), and cropped back; float32 NHWC out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qatie.errors import ModelFileError, QatieError
from qatie.export.sidecar import read_sidecar
from qatie.padding import MIN_SIDE, plan_padding
from qatie.paths import REPO_ROOT, SHIPPED_MODELS
from qatie.util import atomic_write, parse_size

#: The ONNX ops a QATIE INT8 graph is made of (after `qatie.export.graph_opt`): anything else —
#: a conv kept in float, a model from elsewhere — is not written (one message naming the op).
ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Constant", "Conv", "Unsqueeze", "Concat", "LeakyRelu",
                      "Transpose", "Shape", "Gather", "Reshape", "QLinearSigmoid", "Mul", "Add",
                      "InstanceNormalization", "Slice", "Pad", "MaxPool", "Split", "Clip"})
LEAKY_SLOPE = 0.2
MAX_PIXELS = 4096 * 4096
#: Each op's version for the types used here (LiteRT versions an op by what it supports: int8
#: kernels from version 2, per-channel int8 convs 3, the float ones 1).
_VERSIONS = {"CONV_2D": 3, "PAD": 2, "TANH": 1, "QUANTIZE": 2, "DEQUANTIZE": 2, "CONCATENATION": 2, "MUL": 2,
             "ADD": 2, "SUB": 1, "MEAN": 1, "SQUARED_DIFFERENCE": 1, "RSQRT": 1, "LEAKY_RELU": 2, "MAX_POOL_2D": 2,
             "DEPTH_TO_SPACE": 2, "SLICE": 2, "MIRROR_PAD": 1}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        raise QatieError("writing LiteRT (TFLite) models needs the optional package ai-edge-litert "
                         "(pip install 'qatie[tflite]')") from None
    return s


def check_size(text: str) -> tuple[int, int]:
    """'1920x1080' → (1920, 1080): HEIGHTxWIDTH, the order LiteRT lists an NHWC input's dims and the
    authors name their files (their 1920x1080 file takes 1920 rows × 1080 columns: portrait)."""
    return check_hw(*parse_size(text))


def check_hw(height: int, width: int) -> tuple[int, int]:
    """A size a LiteRT file can be written for: the graph reflect-pads to a multiple of 8, which
    needs sides of at least `MIN_SIDE`; at most `MAX_PIXELS`."""
    if min(height, width) < MIN_SIDE:
        raise QatieError(f"size {height}x{width}: both sides must be at least {MIN_SIDE} pixels for a LiteRT file")
    if height * width > MAX_PIXELS:
        raise QatieError(f"size {height}x{width}: at most {MAX_PIXELS / 1e6:.1f} MP for a LiteRT file "
                         f"({height * width / 1e6:.1f} MP asked)")
    return height, width


@dataclass
class _Conv:
    """One INT8 conv of the ONNX model: int8 weights O×I×kh×kw, per-channel scales, int32 bias."""
    name: str
    w: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    stride: int


@dataclass
class OnnxInt8:
    """What the writer reads from a QATIE INT8 ONNX model: its convs by weight name, InstanceNorm
    parameters by block, and every quantization point's (scale, uint8 zero point)."""
    convs: dict[str, _Conv]
    norms: dict[str, tuple[np.ndarray, np.ndarray, float]]
    points: dict[str, tuple[float, int]]
    variant: str
    source: str = ""
    name: str = ""


def read_onnx_int8(path) -> OnnxInt8:
    """Read a QATIE INT8 ONNX model and its sidecar; raise `ModelFileError` naming what the LiteRT
    writer cannot express (an op it does not know, a conv kept in float, a missing sidecar)."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    side = read_sidecar(path)
    try:
        proto = onnx.load(os.fspath(path))
    except Exception as e:  # onnx raises DecodeError and friends on a bad file
        raise ModelFileError(f"{path.name}: not a readable ONNX model ({type(e).__name__})") from None
    g = proto.graph
    for n in g.node:
        if n.op_type not in ONNX_OPS:
            raise ModelFileError(f"{path.name}: cannot write ONNX op {n.op_type} ({n.name or n.output[0]}) to LiteRT; "
                                 "the exporter expresses QATIE's INT8 graphs only")
    if side.get("keep_float"):
        raise ModelFileError(f"{path.name}: convs kept in float ({', '.join(side['keep_float'])}); "
                             "the LiteRT export needs every conv in INT8")
    vals = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    convs = {}
    for n in g.node:
        if n.op_type != "Conv":
            continue
        dq = producer.get(n.input[1])
        w = vals.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if w is None or w.dtype != np.int8:
            raise ModelFileError(f"{path.name}: conv {n.name} has no int8 weights; the LiteRT export needs an INT8 model")
        key = dq.input[0].removesuffix("weight_int8").rstrip("./")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("group", 1) != 1 or len(set(attrs.get("strides", [1, 1]))) != 1:
            raise ModelFileError(f"{path.name}: conv {n.name}: grouped or unevenly strided convs are not written")
        bias_dq = producer[n.input[2]]
        convs[key] = _Conv(key, w, vals[dq.input[1]].astype(np.float32).reshape(-1), vals[bias_dq.input[0]].astype(np.int32),
                           tuple(attrs.get("pads", [0, 0, 0, 0])), int(attrs.get("strides", [1, 1])[0]))
    norms = {n.input[1].removesuffix(".t_norm.weight"): (vals[n.input[1]], vals[n.input[2]],
                                                         float(next(a.f for a in n.attribute if a.name == "epsilon")))
             for n in g.node if n.op_type == "InstanceNormalization"}
    points = {t["name"]: (float(t["scale"]), int(t["zero_point"])) for t in side["tensors"]}
    return OnnxInt8(convs, norms, points, str(side.get("variant", "full")), str(side.get("source", "")), path.name)


@dataclass
class _Graph:
    """A LiteRT graph under construction (the schema's object API): tensors, constant buffers,
    operators and the operator-code table."""
    s: object
    tensors: list = field(default_factory=list)
    buffers: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    codes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.buffers.append(self.s.BufferT())  # buffer 0: the empty one, by convention

    def tensor(self, name: str, shape, dtype: str, quant=None, data: np.ndarray | None = None) -> int:
        """Add a tensor; `quant` = (scales, zero points, quantized dimension)."""
        s = self.s
        t = s.TensorT()
        t.name, t.shape = name.encode(), np.asarray(shape, np.int32)
        t.type = {"float32": s.TensorType.FLOAT32, "int8": s.TensorType.INT8, "int32": s.TensorType.INT32}[dtype]
        t.buffer = 0
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = np.asarray(quant[0], np.float32).reshape(-1)
            q.zeroPoint = np.asarray(quant[1], np.int64).reshape(-1)
            q.quantizedDimension = quant[2]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, array: np.ndarray, quant=None) -> int:
        a = np.asarray(array)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.int8): "int8", np.dtype(np.int32): "int32"}[a.dtype]
        return self.tensor(name, a.shape, dtype, quant, a)

    def op(self, kind: str, inputs: list[int], outputs: list[int], options=None) -> None:
        s = self.s
        code = getattr(s.BuiltinOperator, kind)
        if kind not in self.codes:
            c = s.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), _VERSIONS[kind]
            self.codes[kind] = (len(self.codes), c)
        o = s.OperatorT()
        o.opcodeIndex = self.codes[kind][0]
        o.inputs, o.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        if options is not None:
            o.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.ops.append(o)

    def options(self, kind: str, **fields):
        o = getattr(self.s, kind + "T")()
        for k, v in fields.items():
            setattr(o, k, v)
        return o

    def serialize(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.ops, b"main"
        sg.inputs, sg.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        m = s.ModelT()
        m.version, m.description, m.subgraphs, m.buffers = 3, description.encode(), [sg], self.buffers
        m.operatorCodes = [c for _, c in sorted(self.codes.values(), key=lambda v: v[0])]
        b = flatbuffers.Builder(1 << 20)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


class _Writer:
    """Walks the network's forward (`qatie.model.network.QATIENet`) in NHWC, emitting LiteRT ops."""

    def __init__(self, model: OnnxInt8):
        self.m, self.g = model, _Graph(_schema())
        self.shape: dict[int, tuple[int, ...]] = {}

    # -- tensors -------------------------------------------------------------------------------
    def act(self, point: str, shape) -> int:
        """An int8 activation tensor on quantization point `point`'s grid."""
        scale, zp = self.m.points[point]
        t = self.g.tensor(point, shape, "int8", ([scale], [zp - 128], 0))
        self.shape[t] = tuple(shape)
        return t

    def flt(self, name: str, shape) -> int:
        t = self.g.tensor(name, shape, "float32")
        self.shape[t] = tuple(shape)
        return t

    # -- ops -----------------------------------------------------------------------------------
    def conv(self, key: str, x: int, point: str, in_point: str, outputs: int | None = None) -> int:
        """`outputs`: keep the first ones only (graph_opt's padding outputs are not computed)."""
        c = self.m.convs[key]
        n, h, w, cin = self.shape[x]
        wts = c.w[:outputs]
        if wts.shape[1] > cin:  # graph_opt padded the input channels with the zero point: no effect on sums
            wts = wts[:, :cin]
        o, _, kh, kw = wts.shape
        top, left, bottom, right = c.pads
        same = c.stride == 1 and kh == kw and kh % 2 == 1 and c.pads == (kh // 2,) * 4
        if not same and any(c.pads):
            x = self.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), in_point)
            n, h, w, cin = self.shape[x]
        ho, wo = ((h - kh) // c.stride + 1, (w - kw) // c.stride + 1) if not same else (h, w)
        in_scale = self.m.points[in_point][0]
        g = self.g
        wt = g.const(f"{key}.weight", np.ascontiguousarray(wts.transpose(0, 2, 3, 1)), (c.w_scale[:o], np.zeros(o, np.int64), 0))
        bs = (np.float32(in_scale) * c.w_scale[:o]).astype(np.float32)
        bt = g.const(f"{key}.bias", c.bias[:o], (bs, np.zeros(o, np.int64), 0))
        y = self.act(point, (n, ho, wo, o))
        s = g.s
        g.op("CONV_2D", [x, wt, bt], [y], g.options(
            "Conv2DOptions", padding=s.Padding.SAME if same else s.Padding.VALID, strideH=c.stride, strideW=c.stride,
            dilationHFactor=1, dilationWFactor=1, fusedActivationFunction=s.ActivationFunctionType.NONE))
        return y

    def pad(self, x: int, pads, point: str) -> int:
        """Zero-point padding of an int8 tensor (LiteRT's PAD fills with the zero point)."""
        p = self.g.const(f"{point}.pads{len(self.g.tensors)}", np.asarray(pads, np.int32))
        shape = tuple(d + a + b for d, (a, b) in zip(self.shape[x], pads))
        y = self.act(point, shape)
        self.g.op("PAD", [x, p], [y], self.g.options("PadOptions"))
        return y

    def unary(self, kind: str, x: int, point: str | None, options=None, shape=None) -> int:
        shape = shape or self.shape[x]
        y = self.act(point, shape) if point else self.flt(f"{kind.lower()}{len(self.g.tensors)}", shape)
        self.g.op(kind, [x], [y], options)
        return y

    def binary(self, kind: str, a: int, b: int, point: str | None, shape=None) -> int:
        shape = shape or self.shape[a]
        y = self.act(point, shape) if point else self.flt(f"{kind.lower()}{len(self.g.tensors)}", shape)
        opts = {"ADD": "AddOptions", "MUL": "MulOptions", "SUB": "SubOptions"}.get(kind)
        self.g.op(kind, [a, b], [y], self.g.options(opts) if opts else self.g.options("SquaredDifferenceOptions"))
        return y

    def lrelu(self, x: int, point: str) -> int:
        return self.unary("LEAKY_RELU", x, point, self.g.options("LeakyReluOptions", alpha=LEAKY_SLOPE))

    def concat(self, xs: list[int], point: str, axis: int = 3) -> int:
        shape = list(self.shape[xs[0]])
        shape[axis] = sum(self.shape[x][axis] for x in xs)
        y = self.act(point, shape)
        self.g.op("CONCATENATION", xs, [y], self.g.options("ConcatenationOptions", axis=axis))
        return y

    def depth_to_space(self, x: int, point: str) -> int:
        n, h, w, c = self.shape[x]
        return self.unary("DEPTH_TO_SPACE", x, point, self.g.options("DepthToSpaceOptions", blockSize=2),
                          shape=(n, 2 * h, 2 * w, c // 4))

    def slice(self, x: int, begin, size, point: str | None) -> int:
        g = self.g
        b = g.const(f"slice_begin{len(g.tensors)}", np.asarray(begin, np.int32))
        s = g.const(f"slice_size{len(g.tensors)}", np.asarray(size, np.int32))
        y = self.act(point, size) if point else self.flt(f"crop{len(g.tensors)}", size)
        g.op("SLICE", [x, b, s], [y], g.options("SliceOptions"))
        return y

    def mean_hw(self, x: int) -> int:
        n, _, _, c = self.shape[x]
        axes = self.g.const(f"axes{len(self.g.tensors)}", np.asarray([1, 2], np.int32))
        y = self.flt(f"mean{len(self.g.tensors)}", (n, 1, 1, c))
        self.g.op("MEAN", [x, axes], [y], self.g.options("ReducerOptions", keepDims=True))
        return y

    # -- blocks --------------------------------------------------------------------------------
    def tanh_points(self, x: int, points: tuple[str, str]) -> list[int]:
        """tanh in float of an int8 conv output, quantized straight onto each reader's grid."""
        t = self.unary("TANH", self.unary("DEQUANTIZE", x, None), None)
        return [self.unary("QUANTIZE", t, p) for p in points]

    def encoder(self, block: str, x: int, in_point: str) -> tuple[int, int, int]:
        a = self.conv(f"{block}.a", x, f"{block}.q_a", in_point)
        b = self.conv(f"{block}.b", x, f"{block}.q_b", in_point)
        ca, ta = self.tanh_points(a, (f"{block}.q_ca", f"{block}.q_ta"))
        tb, cb = self.tanh_points(b, (f"{block}.q_tb", f"{block}.q_cb"))
        return ca, self.binary("MUL", ta, tb, f"{block}.q_gate"), cb

    def instance_norm(self, block: str, x: int) -> int:
        gamma, beta, eps = self.m.norms[block]
        g = self.g
        xf = self.unary("DEQUANTIZE", x, None)
        mean = self.mean_hw(xf)
        var = self.mean_hw(self.binary("SQUARED_DIFFERENCE", xf, mean, None))
        inv = self.unary("RSQRT", self.binary("ADD", var, g.const(f"{block}.t_norm.eps", np.float32([eps])), None), None)
        a = self.binary("MUL", inv, g.const(f"{block}.t_norm.weight", gamma.astype(np.float32)), None)
        y = self.binary("MUL", self.binary("SUB", xf, mean, None), a, None)
        y = self.binary("ADD", y, g.const(f"{block}.t_norm.bias", beta.astype(np.float32)), None)
        return self.unary("QUANTIZE", y, f"{block}.q.t_norm")

    def refine(self, block: str, x: int, in_point: str) -> int:
        q = f"{block}.q."
        t = self.conv(f"{block}.t_conv", x, q + "t_conv", in_point)
        t = self.lrelu(self.instance_norm(block, t), q + "t_act")
        cat = self.concat([t, self.conv(f"{block}.u", x, q + "u", in_point)], q + "cat")
        m = self.lrelu(self.conv(f"{block}.m1", cat, q + "m1", q + "cat"), q + "m1_act")
        m = self.lrelu(self.conv(f"{block}.m2", m, q + "m2", q + "m1_act"), q + "m2_act")
        return self.binary("ADD", m, self.conv(f"{block}.skip", cat, q + "skip", q + "cat"), q + "out")

    def up(self, block: str, x: int, in_point: str) -> int:
        """The four phase convs, stacked on channels (slot-major) and interleaved by DEPTH_TO_SPACE."""
        ys = [self.conv(f"{block}.conv.phases.{k}", x, f"{block}.q_phase.{k}", in_point) for k in range(4)]
        return self.depth_to_space(self.concat(ys, f"{block}.q_conv"), f"{block}.q_conv")

    def fuse(self, block: str, xs: list[int]) -> int:
        return self.conv(f"{block}.conv", self.concat(xs, f"{block}.q_cat"), f"{block}.q_conv", f"{block}.q_cat")

    def delta(self, f2: int) -> int:
        """up1's phases (one merged conv) → delta on the phases (2×2 conv) → interleave → crop the ring."""
        stack = self.conv("up1.conv.phases.merged", f2, "up1.q_conv", "ref_f2.q.out")
        d = self.conv("delta.phases", stack, "q_delta_phases", "up1.q_conv", outputs=12)  # 4 slots × RGB
        d = self.depth_to_space(d, "q_delta")
        n, h, w, c = self.shape[d]
        return self.slice(d, (0, 1, 1, 0), (n, h - 2, w - 2, c), "q_delta")

    def network(self, height: int, width: int) -> bytes:
        if self.m.variant != "full":
            raise ModelFileError(f"{self.m.name}: variant {self.m.variant!r}; the LiteRT export writes the paper's "
                                 "full network only")
        missing = [k for k in ("up1.conv.phases.merged", "delta.phases") if k not in self.m.convs]
        if missing:
            raise ModelFileError(f"{self.m.name}: no conv {missing[0]} (an export older than the sub-pixel output stage)")
        g, s = self.g, self.g.s
        plan = plan_padding(height, width)
        image = self.flt("image", (1, height, width, 3))
        x = image
        if not plan.is_noop:
            pads = g.const("image.pads", np.asarray([[0, 0], [0, plan.bottom], [0, plan.right], [0, 0]], np.int32))
            x = self.flt("image.padded", (1, height + plan.bottom, width + plan.right, 3))
            g.op("MIRROR_PAD", [image, pads], [x], g.options("MirrorPadOptions", mode=s.MirrorPadMode.REFLECT))
        x = self.unary("QUANTIZE", x, "q_input")
        xa1, g1, xb1 = self.encoder("enc1", x, "q_input")
        s2 = self.refine("ref_s2", g1, "enc1.q_gate")
        xa2, g2, xb2 = self.encoder("enc2", s2, "ref_s2.q.out")
        s4 = self.refine("ref_s4", g2, "enc2.q_gate")
        n, h, w, c = self.shape[s4]
        pooled = self.unary("MAX_POOL_2D", s4, "q_pool", g.options(
            "Pool2DOptions", padding=s.Padding.VALID, strideW=2, strideH=2, filterWidth=2, filterHeight=2,
            fusedActivationFunction=s.ActivationFunctionType.NONE), shape=(n, h // 2, w // 2, c))
        b = self.refine("bottleneck", pooled, "q_pool")
        f4 = self.refine("ref_f4", self.fuse("fuse4", [self.up("up4", b, "bottleneck.q.out"), s4, xa2, xb2]), "fuse4.q_conv")
        f2 = self.refine("ref_f2", self.fuse("fuse2", [self.up("up2", f4, "ref_f4.q.out"), s2, xa1, xb1]), "fuse2.q_conv")
        y = self.binary("ADD", x, self.delta(f2), "q_output")
        if not plan.is_noop:
            y = self.slice(y, (0, 0, 0, 0), (1, height, width, 3), "q_output")
        out = self.unary("DEQUANTIZE", y, None)
        return g.serialize([image], [out], f"QATIE INT8 ({self.m.source or 'int8'}) from {self.m.name}, "
                                           f"{width}x{height}; quantization parameters as exported")


def to_tflite(onnx_path, out, height: int, width: int) -> Path:
    """Write the LiteRT INT8 model of a QATIE INT8 ONNX model for a fixed H×W input."""
    check_hw(height, width)
    data = _Writer(read_onnx_int8(onnx_path)).network(height, width)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def int8_onnx(model) -> Path:
    """A shipped INT8 model's name (`paper-qat`, `paper-ptq`, `qat`, `ptq`) or an INT8 .onnx path → its file."""
    text = os.fspath(model)
    path = REPO_ROOT / SHIPPED_MODELS[text] if text in SHIPPED_MODELS else Path(text).expanduser()
    if not path.is_file():
        names = ", ".join(k for k, v in SHIPPED_MODELS.items() if "int8" in v)
        raise ModelFileError(f"model {text!r}: no such file; pass an INT8 .onnx or a shipped name ({names})")
    return path


def export_tflite(model, out, size: str = "1920x1080") -> Path:
    """`qatie export --format tflite`: the LiteRT file of a shipped INT8 model or an INT8 .onnx at
    `size` (HEIGHTxWIDTH), written atomically."""
    height, width = check_size(size)
    src = int8_onnx(model)
    return atomic_write(out, lambda tmp: to_tflite(src, tmp, height, width))
