"""The value-preserving passes (see `qatie.export.graph_opt` for what each does and why)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qatie.export.graph_opt.graph import (SYM_INPUT_ALIGN, SYM_MIN_OUTPUT, SYM_OUTPUT_ALIGN, OptReport, _attr, _drop_if_unread,
                    _forget_shape, _G, _own_initializer, _qdq_conv, _scalar_qparams)

# --------------------------------------------------------------------------------------------
# Passes
# --------------------------------------------------------------------------------------------

def pad_narrow_convs(model: onnx.ModelProto, report: OptReport | None = None) -> OptReport:
    """Zero-pad QDQ convs whose channel counts keep MLAS off its symmetric conv path."""
    report = report if report is not None else OptReport()
    G = _G(model.graph)
    padded_inputs: dict[tuple[str, int], str] = {}  # (quantized tensor, channels) → padded DQ output
    for conv in list(model.graph.node):
        parts = _qdq_conv(G, conv)
        if parts is None:
            continue
        x_dq, w_dq, b_dq, q = parts
        w = G.const(w_dq.input[0])
        cout, cin = w.shape[:2]
        cin_p = -(-cin // SYM_INPUT_ALIGN) * SYM_INPUT_ALIGN
        cout_p = cout if (cout >= SYM_MIN_OUTPUT and cout % SYM_OUTPUT_ALIGN == 0) else \
            max(SYM_MIN_OUTPUT, -(-cout // SYM_OUTPUT_ALIGN) * SYM_OUTPUT_ALIGN)
        if cin_p == cin and cout_p == cout:
            continue
        if cout_p != cout and G.const(w_dq.input[1]).size == 1:
            continue  # per-tensor weights: not produced by our exporter, leave alone
        wp = np.zeros((cout_p, cin_p) + w.shape[2:], np.int8)
        wp[:cout, :cin] = w
        G.set_init(_own_initializer(G, w_dq, 0), wp)
        what = []
        if cin_p != cin:
            xq = x_dq.input[0]
            key = (xq, cin_p)
            if key not in padded_inputs:
                (_, zp) = _scalar_qparams(G, x_dq)
                pads = G.add_init(np.array([0, 0, 0, 0, 0, cin_p - cin, 0, 0], np.int64), f"{xq}/pad_channels/pads")
                value = G.add_init(np.array(zp, zp.dtype), f"{xq}/pad_channels/value")
                padded = G.unique(f"{xq}/pad_channels")
                dq_out = G.unique(f"{x_dq.output[0]}/pad_channels")
                pad = helper.make_node("Pad", [xq, pads, value], [padded], mode="constant",
                                       name=G.unique(f"{x_dq.name or xq}/pad_channels"))
                dq = helper.make_node("DequantizeLinear", [padded, x_dq.input[1], x_dq.input[2]], [dq_out],
                                      name=G.unique(f"{x_dq.name or xq}/pad_channels/DQ"))
                G.insert_before(x_dq, [pad, dq])
                padded_inputs[key] = dq_out
            conv.input[0] = padded_inputs[key]
            what.append(f"input channels {cin}→{cin_p}")
        if cout_p != cout:
            ws = G.const(w_dq.input[1]).astype(np.float32).reshape(-1)
            wsp = np.concatenate([ws, np.ones(cout_p - cout, np.float32)])
            G.set_init(_own_initializer(G, w_dq, 1), wsp)
            G.set_init(_own_initializer(G, w_dq, 2), np.zeros(cout_p, np.int8))
            if b_dq is not None:
                b = G.const(b_dq.input[0]).reshape(-1)
                bs = G.const(b_dq.input[1]).astype(np.float32).reshape(-1)
                x_scale = np.float32(_scalar_qparams(G, x_dq)[0])
                G.set_init(_own_initializer(G, b_dq, 0), np.concatenate([b, np.zeros(cout_p - cout, b.dtype)]))
                G.set_init(_own_initializer(G, b_dq, 1), np.concatenate([bs, np.full(cout_p - cout, x_scale, np.float32)]))
                if len(b_dq.input) > 2 and b_dq.input[2]:
                    bz = G.const(b_dq.input[2]).reshape(-1)
                    G.set_init(_own_initializer(G, b_dq, 2), np.zeros(cout_p, bz.dtype))
            _forget_shape(model, conv.output[0])  # now cout_p channels
            q_out = q.output[0]
            readers = G.consumers.get(q_out, [])
            split = readers[0] if len(readers) == 1 and readers[0].op_type == "Split" else None
            sizes = G.const(split.input[1]) if split is not None and len(split.input) > 1 else None
            if (sizes is not None and _attr(split, "axis", 0) == 1 and int(sizes.sum()) == cout
                    and q_out not in G.outputs):
                # One Split reads the output (delta's phases): it takes the padding channels as one
                # more piece, left unread, instead of a Slice copying the real ones first.
                split.input[1] = G.add_init(np.append(sizes, cout_p - cout).astype(np.int64), f"{q_out}/split")
                split.output.append(G.unique(f"{q_out}/padding_channels"))
                _forget_shape(model, q_out)
                report.merged[q_out] = (q_out, 0, cout)  # the point's levels: channels [0, cout)
                what.append(f"output channels {cout}→{cout_p} (+1 Split piece)")
            else:  # Slice the quantized output back to the real channels, before every consumer.
                full = G.unique(f"{q_out}/padded")
                q.output[0] = full
                starts = G.add_init(np.array([0], np.int64), f"{q_out}/slice/starts")
                ends = G.add_init(np.array([cout], np.int64), f"{q_out}/slice/ends")
                axes = G.add_init(np.array([1], np.int64), f"{q_out}/slice/axes")
                sl = helper.make_node("Slice", [full, starts, ends, axes], [q_out], name=G.unique(f"{q.name or q_out}/slice_channels"))
                idx = list(model.graph.node).index(q)
                model.graph.node.insert(idx + 1, sl)
                what.append(f"output channels {cout}→{cout_p} (+Slice)")
        G.refresh()
        report.changes.append(f"pad_narrow_convs: {conv.name}: " + ", ".join(what))
    return report


def drop_redundant_clip(model: onnx.ModelProto, report: OptReport | None = None) -> OptReport:
    """Remove Clip nodes that cannot change the output of the DequantizeLinear feeding them."""
    report = report if report is not None else OptReport()
    G = _G(model.graph)
    for clip in [n for n in model.graph.node if n.op_type == "Clip"]:
        dq = G.producer.get(clip.input[0])
        qp = _scalar_qparams(G, dq)
        if qp is None or len(G.consumers.get(dq.output[0], [])) != 1 or dq.output[0] in G.outputs:
            continue
        lo = G.const(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else np.array(-np.inf, np.float32)
        hi = G.const(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else np.array(np.inf, np.float32)
        if lo is None or hi is None:
            continue
        scale, zp = qp
        info = np.iinfo(zp.dtype)
        # Exactly what DequantizeLinear computes for every representable level (float32).
        levels = np.arange(info.min, info.max + 1, dtype=np.int64)
        values = (levels - int(zp)).astype(np.float32) * np.float32(scale)
        if values.min() < np.float32(lo) or values.max() > np.float32(hi):
            continue
        old = dq.output[0]
        dq.output[0] = clip.output[0]
        model.graph.node.remove(clip)
        report.renamed[old] = clip.output[0]
        report.changes.append(f"drop_redundant_clip: {clip.name or clip.output[0]} (input in "
                              f"[{values.min():g}, {values.max():g}] ⊆ [{float(lo):g}, {float(hi):g}])")
        G.refresh()
    return report


def fold_pad_into_conv(model: onnx.ModelProto, report: OptReport | None = None) -> OptReport:
    """Pad(constant 0, H/W only) → Conv  ⇒  Conv with those pads (the sub-pixel up-convs' asymmetric
    padding; torch's conv only pads symmetrically). Exact: the conv pads with zeros itself — in
    INT8 with the input's zero point, which is 0.0 — and ORT can only fuse DQ → Conv → Q."""
    report = report if report is not None else OptReport()
    G = _G(model.graph)
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        convs = G.consumers.get(pad.output[0], [])
        pads = G.const(pad.input[1]) if len(pad.input) > 1 else None
        value = G.const(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        mode = _attr(pad, "mode", b"constant")
        if (not convs or any(c.op_type != "Conv" or c.input[0] != pad.output[0] for c in convs) or pads is None
                or pads.shape != (8,) or np.any(pads[[0, 1, 4, 5]] != 0) or value is None or np.any(value != 0)
                or mode not in (b"constant", "constant") or (len(pad.input) > 3 and pad.input[3])
                or pad.output[0] in G.outputs):
            continue
        top, left, bottom, right = (int(v) for v in pads[[2, 3, 6, 7]])
        for conv in convs:
            old = [int(v) for v in (_attr(conv, "pads") or [0, 0, 0, 0])]
            if _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                break
            new = [old[0] + top, old[1] + left, old[2] + bottom, old[3] + right]
            for a in [a for a in conv.attribute if a.name == "pads"]:
                conv.attribute.remove(a)
            conv.attribute.append(helper.make_attribute("pads", new))
            conv.input[0] = pad.input[0]
        else:
            model.graph.node.remove(pad)
            report.changes.append(f"fold_pad_into_conv: {pad.name} → pads {top, left, bottom, right} of "
                                  + ", ".join(c.name for c in convs))
            G.refresh()
    return report


COPY_OPS = {"Concat": None, "Reshape": (0,), "Transpose": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Slice": (0,),
            "Split": (0,)}


def _copy_chain(G: _G, name: str, chain: list, leaves: list) -> bool:
    """Collect the pure-copy nodes producing `name` back to DequantizeLinear leaves."""
    node = G.producer.get(name)
    if node is None:
        return False
    if node.op_type == "DequantizeLinear":
        leaves.append(node)
        return True
    readers = [c for c in G.consumers.get(name, []) if c.op_type != "Shape"]  # a shape is a shape in uint8 too
    if node.op_type not in COPY_OPS or len(readers) != 1 or name in G.outputs:
        return False
    if node in chain:  # a Split reached through another of its outputs
        return True
    data = range(len(node.input)) if COPY_OPS[node.op_type] is None else COPY_OPS[node.op_type]
    chain.append(node)
    return all(_copy_chain(G, node.input[i], chain, leaves) for i in data)


def copies_in_uint8(model: onnx.ModelProto, report: OptReport | None = None) -> OptReport:
    """DQ(q₁), DQ(q₂), … → pure copies (Concat, Reshape, Transpose, …) → Q  ⇒  the copies on q₁,
    q₂, … directly, when every DQ has the Q's scale and zero point (the QuantSpec makes a
    concat's inputs share its parameters, and the sub-pixel up-conv's phases share theirs).
    Exact: Q(DQ(q)) = q for the same parameters, and copies do not change values. ORT would
    otherwise run QLinearConcat — single-threaded, requantizing each input through a table."""
    report = report if report is not None else OptReport()
    G = _G(model.graph)
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        qp = _scalar_qparams(G, q, "QuantizeLinear")
        chain, leaves = [], []
        if qp is None or q.output[0] in G.outputs or not _copy_chain(G, q.input[0], chain, leaves) or not chain:
            continue
        params = [_scalar_qparams(G, d) for d in leaves]
        if not all(p is not None and np.float32(p[0]) == np.float32(qp[0]) and p[1] == qp[1]
                   and p[1].dtype == qp[1].dtype for p in params):
            continue
        for node in chain:  # copies now read the quantized tensors
            for i, name in enumerate(node.input):
                d = G.producer.get(name)
                if d in leaves:
                    node.input[i] = d.input[0]
            for o in node.output:
                _forget_shape(model, o)  # now uint8
        # the point's DQ (and any other reader of the Q) reads the uint8 copy result directly
        for c in G.consumers.get(q.output[0], []):
            for i, name in enumerate(c.input):
                if name == q.output[0]:
                    c.input[i] = q.input[0]
        model.graph.node.remove(q)
        G.refresh()
        for d in {id(d): d for d in leaves}.values():
            for c in G.consumers.get(d.output[0], []):  # Shape reads the same shape from the uint8 tensor
                if c.op_type == "Shape":
                    c.input[0] = d.input[0]
            G.refresh()
            _drop_if_unread(model, G, d, report)
        report.renamed[q.output[0]] = q.input[0]  # the point's levels are the copies' output now
        report.changes.append(f"copies_in_uint8: {', '.join(n.name for n in chain)} on uint8 (dropped {q.name})")
    return report


def merge_sibling_convs(model: onnx.ModelProto, report: OptReport | None = None) -> OptReport:
    """QDQ convs that read one tensor and are concatenated along channels, all quantized with one
    scale and zero point  ⇒  one conv whose kernel holds each of theirs, zero-padded to a common
    window. Exact: each output channel's integer accumulator has the same products plus zeros,
    and keeps its own weight scale. Where it applies: up1's four 2×2 phase convs feeding delta
    (one 3×3 conv with 4× the outputs, 2.25× the multiply-adds, but no concat pass over the
    result: measured −2.5 % of the INT8 time at 1080p). Their points' levels are then channels of
    the merged output (the sidecar gives `q_tensor` and `channels`)."""
    report = report if report is not None else OptReport()
    G = _G(model.graph)
    for cat in [n for n in model.graph.node if n.op_type == "Concat"]:
        if _attr(cat, "axis") != 1 or len(cat.input) < 2:
            continue
        qs = [G.producer.get(i) for i in cat.input]
        if any(q is None or q.op_type != "QuantizeLinear" or len(G.consumers.get(q.output[0], [])) != 1 for q in qs):
            continue
        convs = [G.producer.get(q.input[0]) for q in qs]
        parts = [_qdq_conv(G, c) if c is not None else None for c in convs]
        if any(p is None or p[2] is None for p in parts) or len({p[0].output[0] for p in parts}) != 1:
            continue  # not QDQ convs with biases reading one tensor
        qps = [_scalar_qparams(G, q, "QuantizeLinear") for q in qs]
        if any(qp is None or np.float32(qp[0]) != np.float32(qps[0][0]) or qp[1] != qps[0][1] for qp in qps):
            continue
        if any(tuple(_attr(c, "strides", [1, 1])) != (1, 1) or tuple(_attr(c, "dilations", [1, 1])) != (1, 1)
               or _attr(c, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") for c in convs):
            continue
        ws = [G.const(p[1].input[0]) for p in parts]
        pads = [list(_attr(c, "pads", [0, 0, 0, 0])) for c in convs]
        if any(w.shape[2] != t + b + 1 or w.shape[3] != le + r + 1 for w, (t, le, b, r) in zip(ws, pads)):
            continue  # not a "same"-size conv: outputs would not line up
        top, left = max(p[0] for p in pads), max(p[1] for p in pads)
        bottom, right = max(p[2] for p in pads), max(p[3] for p in pads)
        kh, kw = top + bottom + 1, left + right + 1
        blocks = []
        for w, (t, le, _, _) in zip(ws, pads):
            k = np.zeros(w.shape[:2] + (kh, kw), np.int8)
            k[:, :, top - t:top - t + w.shape[2], left - le:left - le + w.shape[3]] = w
            blocks.append(k)
        cout = sum(b.shape[0] for b in blocks)
        w0 = parts[0][1].input[0]  # e.g. up1.conv.phases.0.weight_int8 → up1.conv.phases.merged
        base = G.unique(f"{w0.split('.phases.')[0]}.phases.merged" if ".phases." in w0 else f"{convs[0].name}/merged")
        joined = lambda k, i: np.concatenate([G.const(p[k].input[i]).reshape(-1) for p in parts])  # noqa: E731
        w_name = G.add_init(np.concatenate(blocks), f"{base}/weight_int8")
        ws_name = G.add_init(joined(1, 1).astype(np.float32), f"{base}/weight_scale")
        wz_name = G.add_init(np.zeros(cout, np.int8), f"{base}/weight_zero_point")
        b_name = G.add_init(joined(2, 0), f"{base}/bias_int32")
        bs_name = G.add_init(joined(2, 1).astype(np.float32), f"{base}/bias_scale")
        bz_name = G.add_init(np.zeros(cout, np.int32), f"{base}/bias_zero_point")
        new = [helper.make_node("DequantizeLinear", [w_name, ws_name, wz_name], [f"{base}/weight"], axis=0, name=f"{base}/weight/DQ"),
               helper.make_node("DequantizeLinear", [b_name, bs_name, bz_name], [f"{base}/bias"], axis=0, name=f"{base}/bias/DQ"),
               helper.make_node("Conv", [parts[0][0].output[0], f"{base}/weight", f"{base}/bias"], [f"{base}/out"],
                                pads=[top, left, bottom, right], kernel_shape=[kh, kw], name=base),
               helper.make_node("QuantizeLinear", [f"{base}/out", qs[0].input[1], qs[0].input[2]], [cat.output[0]],
                                name=f"{base}/Q")]
        G.insert_before(cat, new)
        for n in convs + qs + [cat]:
            model.graph.node.remove(n)
        G.refresh()
        for n in [p[k] for p in parts for k in (1, 2)]:  # the old weight and bias DQs, now unread
            if not G.consumers.get(n.output[0]):
                model.graph.node.remove(n)
        start = 0
        for q, b in zip(qs, blocks):
            report.merged[q.output[0]] = (cat.output[0], start, start + b.shape[0])
            start += b.shape[0]
        G.refresh()
        report.changes.append(f"merge_sibling_convs: {', '.join(c.name for c in convs)} → {base} ({kh}×{kw}, {cout} outputs)")
    return report


def _tanh_tables(in_scale: float, in_zp: np.ndarray, out_scale: float, out_zp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORT's own outputs for all 256 input levels: DQ → Tanh → Q, and QLinearSigmoid(2x) at half
    the output scale and zero point − n. Equal tables make the lookup exact."""
    import onnxruntime as ort

    n = int(round(1.0 / out_scale))
    init = [numpy_helper.from_array(np.array(v, dtype), k) for k, v, dtype in (
        ("s", in_scale, np.float32), ("z", in_zp, in_zp.dtype), ("so", out_scale, np.float32), ("zo", out_zp, out_zp.dtype),
        ("s2", 2 * np.float32(in_scale), np.float32), ("so2", np.float32(out_scale) / 2, np.float32),
        ("zo2", int(out_zp) - n, out_zp.dtype))]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]), helper.make_node("Tanh", ["f"], ["t"]),
             helper.make_node("QuantizeLinear", ["t", "so", "zo"], ["y_tanh"]),
             helper.make_node("QLinearSigmoid", ["x", "s2", "z", "so2", "zo2"], ["y_lut"], domain="com.microsoft")]
    u8 = onnx.TensorProto.UINT8
    g = helper.make_graph(nodes, "tanh_tables", [helper.make_tensor_value_info("x", u8, [256])],
                          [helper.make_tensor_value_info(k, u8, [256]) for k in ("y_tanh", "y_lut")], init)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=8)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y_tanh, y_lut = sess.run(None, {"x": np.arange(256, dtype=np.uint8)})
    return y_tanh, y_lut


def tanh_lookup(model: onnx.ModelProto, report: OptReport | None = None) -> OptReport:
    """DQ → Tanh → Q  ⇒  com.microsoft QLinearSigmoid, a 256-entry lookup table, per Q.

    tanh(x) = 2σ(2x) − 1, so with the input scale doubled, the output scale halved and the zero
    point lowered by n, σ's table gives tanh's levels — exactly when the output scale is 1/n and
    zero point ≥ n (the QuantSpec's tanh points are made so). Each replacement is checked: ORT's
    tables of both forms over all 256 input levels must be identical, else the float form stays.
    Saves a single-threaded DequantizeLinear, the float Tanh and the QuantizeLinear per tensor."""
    report = report if report is not None else OptReport()
    G = _G(model.graph)
    for tanh in [n for n in model.graph.node if n.op_type == "Tanh"]:
        dq = G.producer.get(tanh.input[0])
        qin = _scalar_qparams(G, dq)
        if qin is None or tanh.output[0] in G.outputs or qin[1].dtype != np.uint8:
            continue
        qs = G.consumers.get(tanh.output[0], [])
        done = []
        for q in qs:
            qout = _scalar_qparams(G, q, "QuantizeLinear")
            if qout is None or qout[1].dtype != np.uint8:
                continue
            n = round(1.0 / qout[0])
            if np.float32(1.0 / n) != np.float32(qout[0]) or not n <= int(qout[1]) <= 255:
                continue
            y_tanh, y_lut = _tanh_tables(qin[0], qin[1], qout[0], qout[1])
            if not np.array_equal(y_tanh, y_lut):
                report.changes.append(f"tanh_lookup: {q.name} kept in float ({int((y_tanh != y_lut).sum())} of 256 levels differ)")
                continue
            base = q.name or q.output[0]
            s2 = G.add_init(np.array(2 * np.float32(qin[0]), np.float32), f"{base}/lut/x_scale")
            so2 = G.add_init(np.array(np.float32(qout[0]) / 2, np.float32), f"{base}/lut/y_scale")
            zo2 = G.add_init(np.array(int(qout[1]) - n, np.uint8), f"{base}/lut/y_zero_point")
            lut = helper.make_node("QLinearSigmoid", [dq.input[0], s2, dq.input[2], so2, zo2], [q.output[0]],
                                   name=G.unique(f"{base}/lut"), domain="com.microsoft")
            G.insert_before(q, [lut])
            model.graph.node.remove(q)
            done.append(q.name)
        if not done:
            continue
        G.refresh()
        if not G.consumers.get(tanh.output[0]):
            model.graph.node.remove(tanh)
            G.refresh()
            _drop_if_unread(model, G, dq, report)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        report.changes.append(f"tanh_lookup: {tanh.name} → QLinearSigmoid tables for {', '.join(done)}")
    return report
