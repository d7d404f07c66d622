"""ONNX export: the FP32 model, and the INT8 QDQ model of a set of ranges (PTQ or QAT alike).

The network is traced once with every QPoint emitted as a `qatie::QPoint` marker node. The
FP32 model drops the markers; the INT8 model turns each into QuantizeLinear → DequantizeLinear
with that point's (scale, zero point) from `qatie.model.quant.quant_params`, and stores every conv
weight as int8 per output channel (+ int32 bias) behind a DequantizeLinear — the QDQ form that
ONNX Runtime fuses into integer kernels (QLinearConv and friends).

Contract of every exported model: input `image` float32 N×3×H×W RGB in [0,1], output `output`
of the same shape; N, H, W dynamic, H and W multiples of 8 and ≥ 16 (`qatie.padding` pads any
image to that; `qatie.runtime.enhancer` does it for you). Each INT8 model gets a JSON sidecar
(`<model>.json`) listing every quantized tensor with its scale and zero point.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from qatie.export.graph_opt import optimize_fp32, optimize_int8
from qatie.export.sidecar import sidecar_path
from qatie.model.network import QATIENet, QConv2d, Up, delta_phase_weights, phase_weights, swapped_hooks
from qatie.provenance import current_command
from qatie.model.pair_safety import risky_weight_pairs
from qatie.model.quant import SPEC, Ranges, complete_ranges, quant_params, weight_levels
from qatie.util import LRU, atomic_write, atomic_write_text

OPSET = 17
TRACE_SIZE = 64


class _Marker(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name):
        return x

    @staticmethod
    def symbolic(g, x, name):
        out = g.op("qatie::QPoint", x, name_s=name)
        out.setType(x.type())
        return out


def _phase_convs(up: Up) -> nn.ModuleList:
    """The sub-pixel form's four 2×2 convs as modules, so they trace under names (`up1.conv.phases.0`)."""
    convs = nn.ModuleList()
    bias = nn.Parameter(up.conv.bias.detach().clone())  # one tensor: the tracer would merge equal copies
    for w in phase_weights(up.conv.weight.detach()):
        c = QConv2d(w.shape[1], w.shape[0], 2, padding=0, bias=False)
        c.weight.data.copy_(w)
        c.bias = bias
        convs.append(c)
    return convs


def _delta_phase_conv(delta: QConv2d) -> QConv2d:
    """delta as one conv on up1's stacked phases (`qatie.model.network.delta_phase_weights`)."""
    w = delta_phase_weights(delta.weight.detach())
    c = QConv2d(w.shape[1], w.shape[0], 2, padding=1, bias=True)
    c.weight.data.copy_(w), c.bias.data.copy_(delta.bias.detach().repeat(4))
    return c


#: The last traces (serialized), keyed by everything a trace depends on: exporting one model with
#: several keep-float sets (the trade-off curve, the Inspect panel's K list) traces it once.
_TRACES = LRU(2)


def _trace_key(model: QATIENet, subpixel: bool) -> str:
    """The model's structure and every tensor of its state (weights, quantizer buffers)."""
    h = hashlib.sha256(f"{type(model).__name__}|{model.pad_input}|{subpixel}|".encode())
    h.update(",".join(q.qname for q in model.qpoints()).encode())
    for name, t in model.state_dict().items():
        h.update(f"|{name}:{tuple(t.shape)}:{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _trace(model: QATIENet, path: Path, subpixel: bool = False) -> onnx.ModelProto:
    """Trace `model` to ONNX with QPoint markers (weights as float, fake quantizers off).
    `subpixel`: the up-convs in the INT8 scheme's form (`qatie.model.network.Up`). A model traced
    before (same structure and state) is not traced again (`_TRACES`); each caller gets its own
    copy to edit."""
    key = _trace_key(model, subpixel)
    cached = _TRACES.get(key)
    if cached is None:
        cached = _trace_uncached(model, path, subpixel).SerializeToString()
        _TRACES.put(key, cached)
    proto = onnx.ModelProto()
    proto.ParseFromString(cached)
    return proto


def _trace_uncached(model: QATIENet, path: Path, subpixel: bool) -> onnx.ModelProto:
    ups = [m for m in model.modules() if isinstance(m, Up)]
    saved_sub = [(u, u.subpixel) for u in ups]
    was_training = model.training
    model.eval()
    markers = {qp: (lambda name: (lambda x: _Marker.apply(x, name)))(qp.qname) for qp in model.qpoints()}
    try:
        for u in ups:
            u.subpixel = subpixel
            u.conv.phases = _phase_convs(u) if subpixel else None
        model.delta.phases = _delta_phase_conv(model.delta) if subpixel else None
        with swapped_hooks(markers, {c: None for c in model.convs()}):
            return _export_traced(model, path)
    finally:
        for u, sub in saved_sub:
            u.subpixel, u.conv.phases = sub, None
        model.delta.phases = None
        model.train(was_training)


def _export_traced(model: QATIENet, path: Path) -> onnx.ModelProto:
    """torch.onnx.export of the marked model (dynamic N, H, W) → the loaded proto."""
    x = torch.rand(1, 3, TRACE_SIZE, TRACE_SIZE)
    dyn = {0: "batch", 2: "height", 3: "width"}
    tmp = path.with_name(f".{path.name}.trace.onnx")
    with warnings.catch_warnings():  # tracer chatter about the (constant) padding decision
        warnings.simplefilter("ignore")
        torch.onnx.export(model.cpu(), (x,), str(tmp), input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": dyn, "output": dyn}, opset_version=OPSET,
                          custom_opsets={"qatie": 1}, dynamo=False, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    tmp.unlink()
    return proto


def _marker_name(node) -> str:
    return next(a.s.decode() for a in node.attribute if a.name == "name")


def _rename_input(graph, old: str, new: str) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
    for o in graph.output:
        if o.name == old:
            o.name = new


def _finish(proto: onnx.ModelProto, path: Path, doc: str) -> Path:
    contrib = [o for o in proto.opset_import if o.domain == "com.microsoft"]  # graph_opt's lookup tables
    del proto.opset_import[:]
    proto.opset_import.extend([helper.make_opsetid("", OPSET)] + contrib)
    proto.doc_string = doc
    proto.producer_name = "qatie"
    command = current_command()
    if command:
        helper.set_model_props(proto, {"qatie_command": command})
    onnx.checker.check_model(proto)
    return atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


def _fix_output(graph) -> None:
    """Make sure the graph output is called `output` (a marker may have renamed it)."""
    out = graph.output[0]
    if out.name != "output":
        _rename_input(graph, out.name, "output")
        for n in graph.node:
            for i, o in enumerate(n.output):
                if o == out.name:
                    n.output[i] = "output"


def export_fp32(model: QATIENet, path) -> Path:
    """Write the FP32 ONNX model (markers removed). Its up-convs take the sub-pixel form the INT8
    scheme quantizes (same function; measured as fast in ORT as nearest resize + conv), so the
    FP32 and INT8 graphs hold the same tensors under the same names (`qatie.analysis`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proto = _trace(model, path, subpixel=True)  # the INT8 models' form: same tensors, same names
    g = proto.graph
    for node in [n for n in g.node if n.op_type == "QPoint"]:
        _bypass(g, node)
    optimize_fp32(proto)
    return _finish(proto, path, f"qatie FP32, width {model.width}, variant {model.variant}")


def _bypass(graph, node) -> None:
    src, dst = node.input[0], node.output[0]
    graph.node.remove(node)
    if any(o.name == dst for o in graph.output):
        for n in graph.node:  # the producer now writes the graph output directly
            for i, o in enumerate(n.output):
                if o == src:
                    n.output[i] = dst
        _rename_input(graph, src, dst)
    else:
        _rename_input(graph, dst, src)


def conv_name(node) -> str:
    """The module path of a traced Conv node (`ref_s2.m1`), from its weight initializer's name.
    The sub-pixel form's convs belong to the conv they compute: `up1.conv.phases.0` … and
    `delta.phases` are `up1.conv` and `delta`."""
    w = node.input[1]
    return w[: -len(".weight")].split(".phases")[0] if w.endswith(".weight") else node.name


def float_islands(graph, keep_float) -> dict[str, list[str]]:
    """For each conv in `keep_float` (module paths), the QPoints that become float with it.

    A kept conv computes in float with float weights; its input stays quantized. Walking forward
    from its output, every QPoint that does not feed a conv (and is not the pinned input/output)
    is dropped as well, so the elementwise ops after the conv (LeakyReLU, tanh, InstanceNorm,
    add, concat, max-pool) run in float up to the next QPoint that feeds a conv, which quantizes
    the island's output. (Keeping only the weights float changes nothing measurable: per-channel
    int8 weights are almost exact; the error is activation rounding — see docs/inspect.md.)
    `graph` is a traced graph with QPoint markers (`_trace`)."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs: dict[str, list] = {}
    for n in graph.node:
        if n.op_type == "Conv":
            convs.setdefault(conv_name(n), []).append(n)
    unknown = sorted(set(keep_float) - set(convs))
    if unknown:
        from qatie.errors import QatieError

        raise QatieError(f"keep-float: no conv named {', '.join(unknown)}; convs are: {', '.join(convs)}")

    def feeds_conv(tensor: str) -> bool:  # directly, or through the Pad in front of a sub-pixel phase conv
        return any(x.op_type == "Conv" or (x.op_type == "Pad" and feeds_conv(x.output[0]))
                   for x in consumers.get(tensor, []))

    islands = {}
    for name in keep_float:
        dropped, stack, seen = [], [o for n in convs[name] for o in n.output], set()
        while stack:
            for c in consumers.get(stack.pop(), []):
                if c.name in seen or c.op_type == "Conv":
                    continue
                seen.add(c.name)
                if c.op_type == "QPoint":
                    qname = _marker_name(c)
                    if qname in ("q_input", "q_output") or feeds_conv(c.output[0]):
                        continue
                    dropped.append(qname)
                stack.extend(c.output)
        islands[name] = dropped
    return islands


def conv_islands(model: QATIENet) -> dict[str, list[str]]:
    """`float_islands` of every conv of `model` (traces it once)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        g = _trace(model, Path(d) / "islands.onnx", subpixel=True).graph
    return float_islands(g, list(dict.fromkeys(conv_name(n) for n in g.node if n.op_type == "Conv")))


def export_int8(model: QATIENet, ranges: Ranges, path, source: str, meta: dict | None = None,
                keep_float: set[str] | None = None) -> Path:
    """Write the INT8 QDQ ONNX model for `ranges` (free QPoints → (min, max)) and its sidecar.

    `keep_float`: conv module paths (`ref_f2.skip`, `delta`, …) that stay float — float weights,
    float compute, and the QPoints of their `float_islands` removed; the sidecar records them
    (`keep_float`, `float_points`) and lists only the tensors that are still quantized."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = quant_params(model, ranges)
    full_ranges = complete_ranges(model, ranges)
    proto = _trace(model, path, subpixel=True)
    g = proto.graph
    keep = set(keep_float or ())
    dropped = set().union(*float_islands(g, keep).values()) if keep else set()
    new_nodes, bypass, tensors, dq_scale = _quantize_activations(g, params, full_ranges, dropped)
    weights, weight_nodes = _quantize_weights(g, new_nodes, keep, dq_scale)
    del g.node[:]
    g.node.extend(_toposort(weight_nodes + new_nodes, g))
    # The tracer gives every QPoint marker output a made-up symbolic shape (one scale's H, W
    # reused for others, even for the batch dim). ORT plans buffer reuse from value_info: where a
    # DequantizeLinear survives fusion (a keep-float conv's input) that plan broke on the second
    # image size ("Shape mismatch attempting to re-use buffer"). ORT infers the shapes itself.
    markers = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"} | set(bypass)
    kept_info = [v for v in g.value_info if v.name not in markers]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    _fix_output(g)
    opt = optimize_int8(proto)  # value-preserving speed-ups for ONNX Runtime (docs/performance.md)
    for t in tensors:
        opt.fix_sidecar_tensor(t)
    doc = f"qatie INT8 ({source}), width {model.width}, variant {model.variant}"
    _finish(proto, path, doc)
    # The invariant, checked on the weights as written (after the passes padded and merged convs):
    # 0 = the exact integer result on every CPU (`qatie.runtime.int8_reference.saturable_pairs` reads it back).
    pairs = sum(risky_weight_pairs(numpy_helper.to_array(i)) for i in g.initializer
                if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)
    sidecar = {"model": path.name, "source": source, "command": current_command(), "width": model.width, "variant": model.variant,
               "spec": SPEC.to_dict() | {"float_ops": list(SPEC.float_ops)}, "meta": meta or {},
               "keep_float": sorted(keep), "float_points": [n for n in (qp.qname for qp in model.qpoints()) if n in dropped],
               "saturable_pairs": pairs, "tensors": tensors, "weights": weights, "graph_opt": opt.changes}
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=1))
    return path


def _quantize_activations(g, params: dict, full_ranges: dict, dropped: set[str]):
    """Each QPoint marker → QuantizeLinear + DequantizeLinear with its scale and zero point (a
    dropped one — inside a keep-float island — is bypassed). Returns (nodes, bypassed outputs,
    the sidecar's tensor records, each DQ output's scale)."""
    tensors, dq_scale = [], {}
    new_nodes, bypass = [], {}
    for node in list(g.node):
        if node.op_type != "QPoint":
            new_nodes.append(node)
            continue
        name = _marker_name(node)
        if name in dropped:
            bypass[node.output[0]] = node.input[0]
            continue
        scale, zp = params[name]
        base = name.replace(".", "/")
        s_name, z_name = f"{base}/scale", f"{base}/zero_point"
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s_name),
                              numpy_helper.from_array(np.array(zp, np.uint8), z_name)])
        q_out = f"{base}/quantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [node.input[0], s_name, z_name], [q_out], name=f"{base}/Q"))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [node.output[0]], name=f"{base}/DQ"))
        dq_scale[node.output[0]] = scale
        lo, hi = full_ranges[name]
        tensors.append({"name": name, "onnx_tensor": node.input[0], "q_tensor": q_out, "dq_tensor": node.output[0],
                        "scale": scale, "zero_point": zp,
                        "dtype": SPEC.activation_dtype, "min": lo, "max": hi})
    for node in new_nodes:  # consumers of a removed QPoint read its (float) input
        for i, name in enumerate(node.input):
            while name in bypass:
                name = bypass[name]
            node.input[i] = name
    return new_nodes, bypass, tensors, dq_scale


def _quantize_weights(g, nodes: list, keep: set[str], dq_scale: dict):
    """Every conv outside `keep`: pair-safe int8 per-channel weights and int32 bias (scale = input
    scale × weight scale) behind DequantizeLinear nodes. Returns (the sidecar's weight records,
    the new DQ nodes)."""
    inits = {i.name: i for i in g.initializer}
    weights, weight_nodes = [], []
    pads = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Pad"}  # sub-pixel phases pad first
    for node in nodes:
        if node.op_type != "Conv" or conv_name(node) in keep:
            continue
        x_name, w_name, module = pads.get(node.input[0], node.input[0]), node.input[1], conv_name(node)
        if x_name not in dq_scale:
            raise RuntimeError(f"conv {node.name} input {x_name} is not quantized: the network breaks the QuantSpec")
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        levels, scale = weight_levels(torch.from_numpy(w))  # pair-safe int8, as QAT simulates it
        wq, sw = levels.numpy().astype(np.int8), scale.numpy().astype(np.float32)
        g.initializer.remove(inits[w_name])
        g.initializer.extend([numpy_helper.from_array(wq, f"{w_name}_int8"),
                              numpy_helper.from_array(sw, f"{w_name}_scale"),
                              numpy_helper.from_array(np.zeros(len(sw), np.int8), f"{w_name}_zero_point")])
        extra = [helper.make_node("DequantizeLinear", [f"{w_name}_int8", f"{w_name}_scale", f"{w_name}_zero_point"],
                                  [f"{w_name}_dq"], axis=0, name=f"{w_name}/DQ")]
        node.input[1] = f"{w_name}_dq"
        if len(node.input) > 2:
            b_name = node.input[2]
            b = numpy_helper.to_array(inits[b_name]).astype(np.float64)
            sb = (np.float32(dq_scale[x_name]) * sw).astype(np.float32)
            bq = np.round(b / sb.astype(np.float64)).astype(np.int32)
            if inits[b_name] in g.initializer:
                g.initializer.remove(inits[b_name])
            b_name = f"{w_name[: -len('.weight')]}.bias" if w_name.endswith(".weight") else b_name  # up-conv phases share one
            g.initializer.extend([numpy_helper.from_array(bq, f"{b_name}_int32"),
                                  numpy_helper.from_array(sb, f"{b_name}_scale"),
                                  numpy_helper.from_array(np.zeros(len(sb), np.int32), f"{b_name}_zero_point")])
            extra.append(helper.make_node("DequantizeLinear", [f"{b_name}_int32", f"{b_name}_scale", f"{b_name}_zero_point"],
                                          [f"{b_name}_dq"], axis=0, name=f"{b_name}/DQ"))
            node.input[2] = f"{b_name}_dq"
        weights.append({"conv": node.name, "module": module, "weight": w_name, "scales": sw.tolist()})
        weight_nodes += extra
    return weights, weight_nodes


def _toposort(nodes, graph) -> list:
    """Order nodes so each comes after the producers of its inputs (required by the checker)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, out = list(nodes), []
    while pending:
        progressed = False
        for n in list(pending):
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
                pending.remove(n)
                progressed = True
        if not progressed:
            raise RuntimeError(f"cycle or dangling input near {pending[0].name}")
    return out
