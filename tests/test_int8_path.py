"""The CPU's INT8 kernel path (qatie.runtime.cpu) and the integer reference (qatie.runtime.int8_reference).

ONNX Runtime's U8S8 convs sum exactly on VNNI/AMX/ARM and saturate int16 pair sums on AVX2.
Every test here asserts what the *detected* path must compute: the exact integer result, or
the model of AVX2's saturating pairs — bit for bit (tests/tolerances.py) — so each holds on any
CPU and fails when the detection, the reference or the model of the kernels is wrong.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qatie.runtime import int8_reference as ref
from qatie.runtime.cpu import int8_exact, int8_path, machine_summary
from conftest import REPO_ROOT, conv_counts, make_image, saturating_weights
from tolerances import INT8_CONV_VS_PATH_MODEL_LEVELS as TOL

PATH = int8_path()
INT8_CONVS = conv_counts()["int8"]  # the integer convs ONNX Runtime runs
EXACT = int8_exact(PATH)


def assert_matches_path_model(got: np.ndarray, exact: np.ndarray, avx2: np.ndarray, what: str):
    """ORT's uint8 output equals the detected path's model (either model where exactness is unknown)."""
    d_exact, d_avx2 = (int(np.abs(got.astype(np.int32) - m.astype(np.int32)).max()) for m in (exact, avx2))
    if EXACT is None:
        assert min(d_exact, d_avx2) <= TOL, (what, PATH, d_exact, d_avx2)
    else:
        assert (d_avx2 if EXACT is False else d_exact) <= TOL, (what, PATH, d_exact, d_avx2)


# ------------------------------------------------------------------------------------ detection

@pytest.mark.parametrize("flags, machine, path", [
    ({"sse4_1"}, "x86_64", "sse"),
    ({"avx2", "fma"}, "x86_64", "avx2"),  # AMD Zen 3, Intel Haswell…Comet Lake
    ({"avx2", "fma", "avx_vnni"}, "x86_64", "avx-vnni"),  # Alder Lake
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}, "x86_64", "avx512-core"),  # Skylake-SP
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}, "x86_64", "avx512-vnni"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "amx_int8", "amx_tile"},
     "x86_64", "amx"),
    ({"asimd"}, "aarch64", "neon"), ({"asimd", "asimddp"}, "aarch64", "neon-dot"),
    ({"asimd", "asimddp", "i8mm"}, "aarch64", "neon-i8mm"),
])
def test_int8_path_follows_mlas_dispatch(flags, machine, path):
    assert int8_path(flags, machine) == path
    assert int8_exact(path) is {"avx2": False, "avx512-core": False, "sse": None}.get(path, True)


def test_machine_summary_names_the_path():
    s = machine_summary(3)
    assert s["threads"] == 3 and s["int8_path"] == PATH and s["int8_exact"] is EXACT and s["cpu"]


# ------------------------------------------------------------------------------- single convs

def _qdq_conv(w: np.ndarray, x_zp: int, pads, strides, bias: np.ndarray) -> onnx.ModelProto:
    """uint8 x → DQ → Conv(DQ(w int8, per channel), DQ(bias int32)) → Q → uint8 y."""
    o = w.shape[0]
    ws = np.linspace(0.004, 0.01, o).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(o, np.int8), "wz"),
             numpy_helper.from_array(np.float32(0.02), "xs"), numpy_helper.from_array(np.uint8(x_zp), "xz"),
             numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.float32(0.02) * ws, "bs"),
             numpy_helper.from_array(np.zeros(o, np.int32), "bz"),
             numpy_helper.from_array(np.float32(0.6), "ys"), numpy_helper.from_array(np.uint8(120), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
             helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], kernel_shape=list(w.shape[2:]), pads=list(pads),
                              strides=list(strides), name="conv"),
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, w.shape[1], None, None])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("o, c, k, pads, strides", [
    (16, 16, 3, (1, 1, 1, 1), (1, 1)),  # MLAS's symmetric-conv kernel (C % 4 = 0, O % 8 = 0, O ≥ 16)
    (32, 8, 3, (1, 1, 1, 1), (2, 2)),   # the same kernel, strided
    (12, 8, 3, (1, 1, 1, 1), (1, 1)),   # O % 8 ≠ 0: im2col + QGEMM
    (8, 3, 3, (1, 1, 1, 1), (2, 2)),    # 3 input channels (the image): pairs span kernel positions
    (16, 24, 1, (0, 0, 0, 0), (1, 1)),  # pointwise: QGEMM straight on the input
    (16, 8, 2, (1, 0, 0, 1), (1, 1)),   # an up-conv phase: 2×2, asymmetric pads
])
def test_a_conv_computes_what_the_detected_path_predicts(o, c, k, pads, strides):
    import onnxruntime as ort

    rng = np.random.default_rng(o * 100 + c)
    w = rng.integers(-127, 128, (o, c, k, k)).astype(np.int8)
    w[:, :, 0, 0] = 127  # same-sign large pairs: AVX2 saturates them for large inputs
    x = rng.integers(150, 256, (1, c, 9, 11)).astype(np.uint8)
    m = _qdq_conv(w, 7, pads, strides, rng.integers(-3000, 3000, o).astype(np.int32))
    conv = ref.int_convs(m)[0]
    exact, _ = ref.conv_u8(conv, x)
    avx2, n_sat = ref.conv_u8(conv, x, saturate=True)
    assert n_sat > 0 and not np.array_equal(exact, avx2)  # the case discriminates the two models
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == exact.shape
    assert_matches_path_model(got, exact, avx2, f"{o}×{c}×{k}×{k}")


def test_weights_within_64_never_saturate():
    """255·(64 + 64) = 32640 ≤ 32767: no input can saturate a pair (tests/tolerances.py)."""
    w = np.full((16, 16, 3, 3), 64, np.int8)
    w[::2] = -64
    x = np.full((1, 16, 6, 6), 255, np.uint8)
    conv = ref.int_convs(_qdq_conv(w, 0, (1, 1, 1, 1), (1, 1), np.zeros(16, np.int32)))[0]
    assert conv.risky_pairs() == 0
    assert ref.conv_accumulators(conv, x, saturate=True)[1] == 0
    w[1, 0, 0, 0] = 65  # one more level and a pair (with w[1, 1, 0, 0] = 64) reaches 255·129 = 32895
    conv.w = w
    assert conv.risky_pairs() == 1 and ref.conv_accumulators(conv, x, saturate=True)[1] > 0


# ------------------------------------------------------------------------------- whole models

@pytest.fixture(scope="module")
def random_int8(tmp_path_factory):
    """A random width-8 network exported twice: as QuantSpec v2 did (full-range weights, no pair
    limit: a model from elsewhere) and as QATIE exports it (QuantSpec v3, pair-safe)."""
    import torch

    from qatie.export.to_onnx import export_int8
    from qatie.model.network import build_model
    from qatie.model.quant import calibrate

    d = tmp_path_factory.mktemp("int8path")
    torch.manual_seed(0)
    m = build_model(8).eval()
    torch.nn.init.normal_(m.delta.weight, std=0.05)
    ranges = calibrate(m, [make_image(48, 56, seed=i) for i in range(3)], "minmax")
    with saturating_weights():
        full = export_int8(m, ranges, d / "full.onnx", source="ptq-minmax")
    bounded = export_int8(m, ranges, d / "bounded.onnx", source="ptq-minmax")
    return full, bounded


def test_full_range_random_model_saturates_only_where_the_path_does(random_int8):
    """The saturating case is detected: the reference predicts clipped pair sums; ONNX Runtime's
    output is the exact result on an exact path and differs from it (as the AVX2 model says) on AVX2."""
    full, _ = random_int8
    img = make_image(40, 56, seed=9)
    rows = ref.check_convs(full, img)
    assert len(rows) == INT8_CONVS and sum(r["saturated"] for r in rows) > 0
    off_exact = [r["name"] for r in rows if r["max_levels_vs_exact"] > TOL]
    off_avx2 = [r["name"] for r in rows if r["max_levels_vs_avx2"] > TOL]
    dev = ref.deviation(full, img, per_conv=False)
    if EXACT:
        assert not off_exact and dev["max_levels"] == 0 and dev["agreement_psnr_db"] == float("inf")
    elif EXACT is False:
        assert not off_avx2 and off_exact and dev["max_levels"] > 0
    else:
        assert all(r["max_levels_vs_exact"] <= TOL or r["max_levels_vs_avx2"] <= TOL for r in rows)


def test_pair_safe_export_computes_the_exact_result_on_every_path(random_int8):
    """What QATIE exports: no saturable pair in the file or in the graph ONNX Runtime runs, none
    clipped, every conv and the whole output the exact integer result."""
    full, bounded = random_int8
    assert ref.saturable_pairs(full) > 0  # the same network, rounded without the limit, could saturate
    assert ref.saturable_pairs(bounded) == 0 and ref.runtime_saturable_pairs(bounded) == 0
    img = make_image(40, 56, seed=9)
    rows = ref.check_convs(bounded, img)
    assert len(rows) == INT8_CONVS
    assert all(r["risky_pairs"] == 0 and r["saturated"] == 0 and r["max_levels_vs_exact"] == 0 for r in rows), rows
    assert ref.deviation(bounded, img, per_conv=False)["max_levels"] == 0


def test_exact_model_reencodes_weights_as_uint8(random_int8):
    full, _ = random_int8
    proto = ref.exact_model(full)
    g = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) == INT8_CONVS
    for n in convs:
        dq = producer[n.input[1]]
        assert inits[dq.input[0]].dtype == np.uint8 and np.all(inits[dq.input[2]] == 128)
    assert not ref.int_convs(proto)  # no int8 weights left
    orig = {c.name: c.w for c in ref.int_convs(full)}
    w0 = inits[producer[convs[0].input[1]].input[0]].astype(np.int16) - 128
    assert np.array_equal(w0, orig[convs[0].name])  # the same numbers


@pytest.mark.skipif(not (REPO_ROOT / "checkpoints" / "int8_qat.onnx").exists(), reason="shipped models absent")
@pytest.mark.parametrize("name", ["int8_ptq", "int8_qat"])
def test_shipped_model_convs_match_the_path_model(name):
    """Every conv of the shipped model, on ONNX Runtime's own inputs, is the detected path's model."""
    rows = ref.check_convs(REPO_ROOT / "checkpoints" / f"{name}.onnx", make_image(48, 72, seed=4))
    assert len(rows) == INT8_CONVS
    key = "max_levels_vs_avx2" if EXACT is False else "max_levels_vs_exact"
    assert max(r[key] for r in rows) <= TOL, [r for r in rows if r[key] > TOL]


@pytest.mark.slow
def test_deviation_cli(cli, tmp_path):
    import json

    from qatie.export.to_onnx import export_fp32
    from qatie.model.network import build_model

    out = cli("deviation", "--models", "qat", "--size", "32x48", "--json", tmp_path / "d.json").stdout
    assert f"INT8 kernels: {PATH}" in out
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["machine"]["int8_path"] == PATH and len(res["results"]) == 3
    for r in res["results"]:
        assert r["image_hw"] == [32, 48] and r["max_levels"] >= 0 and (r["max_levels"] == 0) == (r["share_off"] == 0)
    fp32 = export_fp32(build_model(8).eval(), tmp_path / "f.onnx")
    bad = cli("deviation", "--models", fp32, check=False)
    assert bad.returncode == 2 and "no INT8 convs" in bad.stderr
    big = cli("deviation", "--size", "5000x5000", check=False)
    assert big.returncode == 2 and "larger than" in big.stderr
