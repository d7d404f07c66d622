"""qatie.graph_opt: the post-export passes change how ONNX Runtime computes, never what it computes.

Every test compares the optimised INT8 model with the same export without the passes (the
exporter's call is monkeypatched away) in ONNX Runtime, and requires bit-identical outputs, all
35 convs as QLinearConv, and the Q/DQ contract of the sidecar intact.
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

import qatie.export as export_mod
from qatie import graph_opt
from qatie.export import export_int8, sidecar_path
from qatie.model import build_model
from qatie.quant import calibrate
from qatie.runtime import OnnxEnhancer, session_options
from tests.conftest import REPO_ROOT, make_image

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
    assert ort_ops["QLinearConv"] == 35 and ort_ops["Conv"] == 0 and ort_ops["Resize"] == 0, ort_ops
    # The Q/DQ contract of the sidecar holds: one Q node per point, each dq_tensor made by a DQ node,
    # except the three low-resolution tensors the resize pass reads from uint8 (their DQ is dropped).
    side = json.loads(sidecar_path(opt).read_text())
    g = onnx.load(str(opt)).graph
    producers = {o: n for n in g.node for o in n.output}
    by_name = {n.name: n for n in g.node}
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) == len(side["tensors"])
    for t in side["tensors"]:
        if t["dq_tensor"] is None:
            assert by_name[t["name"].replace(".", "/") + "/Q"].op_type == "QuantizeLinear"
        else:
            assert producers[t["dq_tensor"]].op_type == "DequantizeLinear", t["name"]
    assert sorted(t["name"] for t in side["tensors"] if t["dq_tensor"] is None) == [
        "bottleneck.q.out", "ref_f2.q.out", "ref_f4.q.out"]
    assert side["graph_opt"] and any("delta" in c for c in side["graph_opt"])


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
    assert _ort_ops(dst, tmp_path)["QLinearConv"] == 35
    if src.with_suffix(".json").exists():  # the sidecar follows the graph
        side = json.loads(dst.with_suffix(".json").read_text())
        producers = {o: n for n in onnx.load(str(dst)).graph.node for o in n.output}
        assert all(producers[t["dq_tensor"]].op_type == "DequantizeLinear" for t in side["tensors"] if t.get("dq_tensor"))
        assert sum(t["dq_tensor"] is None for t in side["tensors"]) == 3  # the unread low-res DQs (P1)
        assert side["graph_opt"]


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


@pytest.mark.parametrize("ctm, mode, ok", [
    ("asymmetric", "floor", True), ("asymmetric", "round_prefer_floor", True), ("half_pixel", "round_prefer_floor", True),
    ("asymmetric", "ceil", False), ("asymmetric", "round_prefer_ceil", False), ("half_pixel", "floor", False),
    ("align_corners", "floor", False),
])
def test_resize_rewrite_only_for_exact_pixel_repetition(ctm, mode, ok):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    r = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                         coordinate_transformation_mode=ctm, nearest_mode=mode)
    g = helper.make_graph([r], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [scales])
    assert graph_opt._is_nearest_2x(graph_opt._G(g), r) is ok
