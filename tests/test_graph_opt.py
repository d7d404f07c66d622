"""qatie.export.graph_opt: the post-export passes change how ONNX Runtime computes, never what it computes.

Every test compares the optimised INT8 model with the same export without the passes (the
exporter's call is monkeypatched away) in ONNX Runtime, and requires bit-identical outputs, every
conv as QLinearConv, and the sidecar true to the graph. The random models are exported with
weights in −64…64 (`non_saturating_weights`): the passes regroup products (merged and padded
convs), and on an AVX2-only CPU a regrouped pair that saturates differently would differ without
any pass being wrong; with |w| ≤ 64 nothing saturates, so bit-identity must hold on every CPU.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import qatie.export.to_onnx as export_mod
from qatie.export import graph_opt
from qatie.export.sidecar import sidecar_path
from qatie.export.to_onnx import export_int8
from qatie.model.network import build_model
from qatie.model.quant import calibrate
from qatie.runtime.enhancer import OnnxEnhancer, session_options
from conftest import REPO_ROOT, conv_counts, graph_counts, make_image, non_saturating_weights

SIZES = ((17, 31), (40, 56), (64, 24))


def _model(width: int, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(width)
    torch.nn.init.normal_(m.delta.weight, std=0.05)  # not the identity
    return m.eval()


def _export_pair(tmp_path, width: int, keep_float=None, monkeypatch=None):
    """(optimised, unoptimised) INT8 exports of one random model and one set of ranges."""
    m = _model(width)
    ranges = calibrate(m, [make_image(48, 56, seed=i) for i in range(3)], "minmax")
    kw = {"keep_float": keep_float} if keep_float else {}
    with non_saturating_weights():
        opt = export_int8(m, ranges, tmp_path / f"w{width}_opt.onnx", source="ptq-minmax", **kw)
        monkeypatch.setattr(export_mod, "optimize_int8", lambda proto: graph_opt.OptReport())
        plain = export_int8(m, ranges, tmp_path / f"w{width}_plain.onnx", source="ptq-minmax", **kw)
        monkeypatch.undo()
    return opt, plain


def _ort_ops(path, tmp_path) -> Counter:
    import onnxruntime as ort

    out = tmp_path / (path.stem + "_ort.onnx")
    ort.InferenceSession(str(path), session_options(1, str(out)), providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def _assert_same_outputs(a, b, sizes=SIZES):
    ea, eb = OnnxEnhancer(a, threads=1), OnnxEnhancer(b, threads=1)
    for i, (h, w) in enumerate(sizes):
        img = make_image(h, w, seed=10 + i)
        ya, yb = ea.enhance(img), eb.enhance(img)
        assert np.array_equal(ya, yb), f"{h}×{w}: max diff {np.abs(ya - yb).max() * 255:.2f} levels"


@pytest.mark.parametrize("width", [8, 16])
def test_optimised_int8_equals_unoptimised_bit_for_bit(tmp_path, monkeypatch, width):
    opt, plain = _export_pair(tmp_path, width, monkeypatch=monkeypatch)
    _assert_same_outputs(opt, plain)
    ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    assert ops["Resize"] == 0 and ops["Clip"] == 0 and ops["Slice"] >= 1 and ops["Pad"] == 1, ops
    ort_ops = _ort_ops(opt, tmp_path)
    # every conv (each up-conv as its phases), up1's phases merged into one (they feed delta together)
    assert ort_ops["QLinearConv"] == conv_counts()["int8"] and ort_ops["Conv"] == 0 and ort_ops["Resize"] == 0, ort_ops
    # No float work left between the integer kernels but the InstanceNorm islands: no QLinearConcat,
    # no float Tanh (each a lookup table), no Q/DQ except around the InstanceNorms and at the input and output.
    counts = graph_counts()
    assert ort_ops["QLinearConcat"] == 0 and ort_ops["Tanh"] == 0, ort_ops
    assert ort_ops["QLinearSigmoid"] == counts["tanh_tables"], ort_ops
    assert ort_ops["DequantizeLinear"] == ort_ops["QuantizeLinear"] == counts["instance_norms"] + 1, ort_ops
    # delta's phases are padded to 16 outputs and split straight into its four phases plus the
    # padding channels (no Slice copy of the real ones first)
    assert [len(n.output) for n in onnx.load(str(opt)).graph.node if n.op_type == "Split"] == [conv_counts()["phases"] + 1]
    assert_sidecar_follows_graph(opt)
    side = json.loads(sidecar_path(opt).read_text())
    assert side["graph_opt"] and any("delta" in c for c in side["graph_opt"])


def assert_sidecar_follows_graph(path):
    """Every point's `q_tensor` is in the graph; its `dq_tensor` is a DQ of exactly it; a point without
    one is only read by uint8 copies or tanh tables (graph_opt dropped the DQ nothing else read)."""
    side = json.loads(sidecar_path(path).read_text())
    g = onnx.load(str(path)).graph
    producers = {o: n for n in g.node for o in n.output}
    consumers = Counter()
    readers: dict[str, set] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
            consumers[i] += 1
    for t in side["tensors"]:
        assert t["q_tensor"] in producers or t["q_tensor"] == "image", t["name"]
        if t.get("channels"):  # merged into a wider conv: a channel range of its quantized output
            q = producers[t["q_tensor"]]
            assert q.op_type == "QuantizeLinear" and producers[q.input[0]].op_type == "Conv", t["name"]
            continue
        if t["dq_tensor"] is None:
            assert readers[t["q_tensor"]] <= {"Concat", "Reshape", "Transpose", "Slice", "Shape", "QLinearSigmoid"}, t["name"]
        else:
            dq = producers[t["dq_tensor"]]
            assert dq.op_type == "DequantizeLinear" and dq.input[0] == t["q_tensor"], t["name"]


def test_passes_are_idempotent(tmp_path, monkeypatch):
    opt, _ = _export_pair(tmp_path, 16, monkeypatch=monkeypatch)
    again = tmp_path / "again.onnx"
    assert not graph_opt.optimize_file(opt, again)
    _assert_same_outputs(opt, again, sizes=SIZES[:1])


def test_keep_float_export_still_exact(tmp_path, monkeypatch):
    opt, plain = _export_pair(tmp_path, 16, keep_float={"delta", "up1.conv"}, monkeypatch=monkeypatch)
    _assert_same_outputs(opt, plain)


@pytest.mark.skipif(not (REPO_ROOT / "checkpoints" / "int8_qat.onnx").exists(), reason="shipped models absent")
def test_optimize_file_on_the_shipped_model(tmp_path):
    src = tmp_path / "src.onnx"
    shutil.copy(REPO_ROOT / "checkpoints" / "int8_qat.onnx", src)
    if (REPO_ROOT / "checkpoints" / "int8_qat.json").exists():
        shutil.copy(REPO_ROOT / "checkpoints" / "int8_qat.json", src.with_suffix(".json"))
    dst = tmp_path / "dst.onnx"
    graph_opt.optimize_file(src, dst)
    _assert_same_outputs(src, dst, sizes=((72, 104),))
    assert _ort_ops(dst, tmp_path)["QLinearConv"] == conv_counts()["int8"]
    if src.with_suffix(".json").exists():  # the sidecar follows the graph
        assert_sidecar_follows_graph(dst)
        assert json.loads(dst.with_suffix(".json").read_text())["graph_opt"]


# --------------------------------------------------------------------------------------------
# Guards: the passes leave alone what they cannot prove equal
# --------------------------------------------------------------------------------------------

def _clip_model(scale: float, lo: float, hi: float) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.array(lo, np.float32), "lo"), numpy_helper.from_array(np.array(hi, np.float32), "hi")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Clip", ["d", "lo", "hi"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_clip_removed_only_when_it_cannot_act():
    m = _clip_model(1 / 255, 0.0, 1.0)
    assert graph_opt.drop_redundant_clip(m).renamed == {"d": "y"}
    assert [n.op_type for n in m.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    for scale, lo, hi in ((1 / 200, 0.0, 1.0), (1 / 255, 0.1, 1.0)):  # levels reach beyond [lo, hi]
        m = _clip_model(scale, lo, hi)
        assert not graph_opt.drop_redundant_clip(m)


def _tanh_model(out_scale: float, out_zp: int) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "so"), numpy_helper.from_array(np.array(out_zp, np.uint8), "zo")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Tanh", ["d"], ["t"]), helper.make_node("QuantizeLinear", ["t", "so", "zo"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [256])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [256])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("out_scale, out_zp, ok", [
    (1 / 100, 120, True), (1 / 128, 128, True),  # scale 1/n, zero point ≥ n: a table, all 256 levels equal
    (0.0101, 120, False), (1 / 100, 90, False),  # not 1/n; zero point < n (σ's zero point would be negative)
])
def test_tanh_lookup_only_where_it_is_exact(out_scale, out_zp, ok):
    x = ((np.arange(256, dtype=np.float32) - 128) * np.float32(0.02))  # every input level once
    m = _tanh_model(out_scale, out_zp)
    before = _run(m, x)
    changed = graph_opt.tanh_lookup(m)
    assert bool(changed) is ok and (sum(n.op_type == "QLinearSigmoid" for n in m.graph.node) == 1) is ok
    assert np.array_equal(_run(m, x), before)


def _concat_model(scale_b: float) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("s1", 0.1), ("s2", scale_b))]
    inits.append(numpy_helper.from_array(np.array(3, np.uint8), "z"))
    nodes = [helper.make_node("QuantizeLinear", ["a", "s1", "z"], ["qa"]), helper.make_node("DequantizeLinear", ["qa", "s1", "z"], ["da"]),
             helper.make_node("QuantizeLinear", ["b", "s2", "z"], ["qb"]), helper.make_node("DequantizeLinear", ["qb", "s2", "z"], ["db"]),
             helper.make_node("Concat", ["da", "db"], ["c"], axis=0), helper.make_node("QuantizeLinear", ["c", "s1", "z"], ["qc"]),
             helper.make_node("DequantizeLinear", ["qc", "s1", "z"], ["y"])]
    vi = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, [4]) for k in "ab"]
    g = helper.make_graph(nodes, "g", vi, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_concat_runs_on_uint8_only_when_parameters_match():
    import onnxruntime as ort

    feeds = {"a": np.array([-0.3, 0.0, 0.55, 2.0], np.float32), "b": np.array([0.12, -0.2, 1.0, 9.0], np.float32)}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]  # noqa: E731
    m = _concat_model(0.2)
    assert not graph_opt.copies_in_uint8(m)  # b's levels would need requantizing: not a copy
    m = _concat_model(0.1)
    before = run(m)
    assert graph_opt.copies_in_uint8(m)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 1  # only the output's DQ is left
    concat = next(n for n in m.graph.node if n.op_type == "Concat")
    assert list(concat.input) == ["qa", "qb"]
    assert np.array_equal(run(m), before)
