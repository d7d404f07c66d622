"""The graph view the optimiser's passes share: producers and readers of every tensor, a node's
QDQ parameters, and what each pass changed (`OptReport`, which also keeps sidecars true)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: MLAS symmetric-conv requirements on x86-64 (convsym.cpp, AVX2/AVX-512 dispatch tables):
#: input channels % 4 == 0, output channels ≥ 16 and % 4 == 0 (% 8 for the AVX2 kernels).
SYM_INPUT_ALIGN = 4
SYM_OUTPUT_ALIGN = 8
SYM_MIN_OUTPUT = 16


@dataclass
class OptReport:
    """What the passes changed: human-readable lines, tensor renames (old → new name) and the
    DequantizeLinear outputs removed because nothing read them (their points keep `q_tensor`)."""

    changes: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    dropped_dq: set[str] = field(default_factory=set)
    merged: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # q_tensor → (wider tensor, channels)

    def fix_sidecar_tensor(self, t: dict) -> None:
        """Keep a sidecar entry true to the optimised graph: `q_tensor` the uint8 tensor holding the
        point's levels, `dq_tensor` its float view (None where nothing reads one)."""
        dq = t.get("dq_tensor")
        if dq in self.dropped_dq:
            t["dq_tensor"] = None
        elif dq in self.renamed:
            t["dq_tensor"] = self.renamed[dq]
        if t.get("q_tensor") in self.renamed:
            t["q_tensor"] = self.renamed[t["q_tensor"]]
        if t.get("q_tensor") in self.merged:  # now channels [start, end) of a wider tensor
            t["q_tensor"], start, end = self.merged[t["q_tensor"]]
            t["channels"] = [start, end]

    def __bool__(self) -> bool:
        return bool(self.changes)


# --------------------------------------------------------------------------------------------
# Small graph helpers
# --------------------------------------------------------------------------------------------

class _G:
    def __init__(self, graph: onnx.GraphProto):
        self.g = graph
        self.refresh()

    def refresh(self) -> None:
        self.inits = {i.name: i for i in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.g.output}

    def const(self, name: str):
        """The value of an initializer or a `Constant` node's output, else None."""
        t = self.inits.get(name)
        if t is not None:
            return numpy_helper.to_array(t)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        if node is not None and node.op_type == "Cast":  # torch exports F.pad's pads as Cast(Constant)
            v = self.const(node.input[0])
            return None if v is None else v.astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(node, "to")))
        return None

    def unique(self, base: str) -> str:
        used = set(self.inits) | set(self.producer) | {i.name for i in self.g.input}
        used |= {n.name for n in self.g.node}
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        return name

    def add_init(self, array: np.ndarray, base: str) -> str:
        name = self.unique(base)
        self.g.initializer.append(numpy_helper.from_array(array, name))
        self.inits[name] = self.g.initializer[-1]
        return name

    def set_init(self, name: str, array: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(array, name))

    def insert_before(self, anchor, new_nodes) -> None:
        idx = list(self.g.node).index(anchor)
        for k, n in enumerate(new_nodes):
            self.g.node.insert(idx + k, n)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scalar_qparams(G: _G, dq, op: str = "DequantizeLinear") -> tuple[float, np.ndarray] | None:
    """(scale, zero_point array) of a per-tensor `op` (DequantizeLinear) with constant parameters."""
    if dq is None or dq.op_type != op or len(dq.input) < 3:
        return None
    s, z = G.const(dq.input[1]), G.const(dq.input[2])
    if s is None or z is None or s.size != 1 or z.size != 1:
        return None
    return float(s.reshape(-1)[0]), z.reshape(())


def _qdq_conv(G: _G, conv):
    """The pieces of a QDQ conv — DQ(act) → Conv(DQ(int8 W, zp 0), DQ(int32 b)) → Q — or None."""
    if conv.op_type != "Conv" or len(conv.input) < 2 or _attr(conv, "group", 1) != 1:
        return None
    x_dq, w_dq = G.producer.get(conv.input[0]), G.producer.get(conv.input[1])
    b_dq = G.producer.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    if _scalar_qparams(G, x_dq) is None or w_dq is None or w_dq.op_type != "DequantizeLinear":
        return None
    w = G.const(w_dq.input[0])
    w_zp = G.const(w_dq.input[2]) if len(w_dq.input) > 2 else None
    w_scale = G.const(w_dq.input[1])
    if w is None or w.dtype != np.int8 or w.ndim != 4 or w_scale is None or w_zp is None or np.any(w_zp != 0):
        return None
    if w_scale.size > 1 and _attr(w_dq, "axis", 1) != 0:
        return None
    if b_dq is not None:
        if b_dq.op_type != "DequantizeLinear" or G.const(b_dq.input[0]) is None or G.const(b_dq.input[1]) is None:
            return None
    outs = G.consumers.get(conv.output[0], [])
    if len(outs) != 1 or outs[0].op_type != "QuantizeLinear" or conv.output[0] in G.outputs:
        return None
    q = outs[0]
    if G.const(q.input[1]) is None or G.const(q.input[1]).size != 1:
        return None
    return x_dq, w_dq, b_dq, q


def _forget_shape(model: onnx.ModelProto, name: str) -> None:
    """Drop a value_info entry whose shape a pass changed (ORT plans buffers from value_info)."""
    keep = [v for v in model.graph.value_info if v.name != name]
    if len(keep) != len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)


def _drop_if_unread(model: onnx.ModelProto, G: _G, dq, report: OptReport) -> None:
    """Remove a DequantizeLinear nothing reads any more; its point keeps `q_tensor` in the sidecar."""
    if not G.consumers.get(dq.output[0]) and dq.output[0] not in G.outputs:
        model.graph.node.remove(dq)
        report.dropped_dq.add(dq.output[0])
        G.refresh()


def _own_initializer(G: _G, node, index: int) -> str:
    """Make `node.input[index]` an initializer used by `node` alone (copy if shared); its name."""
    name = node.input[index]
    if len(G.consumers.get(name, [])) > 1:
        new = G.add_init(G.const(name), f"{name}_padded")
        node.input[index] = new
        return new
    return name
