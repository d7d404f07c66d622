"""QATIE's INT8 models exported to LiteRT (TFLite) with their own scales: every op proved against
QATIE's arithmetic on LiteRT's own inputs, the output against FP32 as the ONNX model it came from,
the command line, the benchmark rows, and what the exporter refuses (skips without ai-edge-litert)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import REPO_ROOT as REPO, SHARED
from tolerances import TOLERANCES

litert = pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install 'qatie[tflite]')")

from qatie.analysis.litert_parity import agreement, conv_rows, op_rows, summary  # noqa: E402
from qatie.errors import ModelFileError, QatieError  # noqa: E402
from qatie.export.to_tflite import check_size, export_tflite, to_tflite  # noqa: E402

TOL = TOLERANCES["litert_export"]
QAT = REPO / "checkpoints" / "paper_int8_qat.onnx"
FP32 = REPO / "checkpoints" / "paper_fp32.onnx"
COPIES = {"PAD", "CONCATENATION", "MAX_POOL_2D", "DEPTH_TO_SPACE", "SLICE", "QUANTIZE"}


@pytest.fixture(scope="module")
def crop():
    from qatie.data.datasets import sample_images

    img = sample_images(("astronaut",))["astronaut"]
    return np.ascontiguousarray(img[100:220, 150:286])  # 120×136: padded to 120×136 (multiples of 8), no crop


@pytest.fixture(scope="module")
def odd_crop():
    from qatie.data.datasets import sample_images

    img = sample_images(("coffee",))["coffee"]
    return np.ascontiguousarray(img[50:147, 60:161])  # 97×101: padded inside the graph, cropped back


@pytest.fixture(scope="module")
def exported(tmp_path_factory, crop):
    return to_tflite(QAT, tmp_path_factory.mktemp("litert") / "qat.tflite", *crop.shape[:2])


@pytest.mark.parametrize("kernels", ["xnnpack", "builtin"])
def test_every_op_is_qatie_arithmetic_up_to_one_level_of_litert_rounding(exported, crop, kernels):
    rows = op_rows(exported, QAT, crop, kernels=kernels)
    convs = conv_rows(rows)
    assert len(convs) == 41  # every INT8 conv of the ONNX model, its weights checked equal
    for r in summary(rows):
        print(kernels, r)
        assert r["max_levels"] <= TOL["op_max_levels"], r
        assert r["off_pct"] / 100 <= TOL["op_off_share_max"], r
        if r["op"] in COPIES:  # copies and the input's quantization move no value
            assert r["off"] == 0, r


def test_a_wrong_weight_is_caught(tmp_path, crop):
    """The proof reads the ONNX model's own weights: a file whose conv differs is refused."""
    from ai_edge_litert import schema_py_generated as s

    path = to_tflite(QAT, tmp_path / "m.tflite", *crop.shape[:2])
    m = s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    g = m.subgraphs[0]
    w = next(t for t in g.tensors if t.name == b"ref_s2.m1.weight")
    m.buffers[w.buffer].data = m.buffers[w.buffer].data[::-1].copy()  # same levels, wrong places
    import flatbuffers

    b = flatbuffers.Builder(1 << 20)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    with pytest.raises(ModelFileError, match="ref_s2.m1"):
        op_rows(path, QAT, crop)


def test_odd_sizes_are_padded_inside_the_file_and_agree_with_fp32_as_onnx_does(tmp_path, odd_crop):
    r = agreement(QAT, FP32, odd_crop, tmp_path, threads=1)
    print(r)
    assert abs(r["litert_vs_fp32_db"] - r["onnx_vs_fp32_db"]) <= TOL["agreement_gap_db"]
    assert r["litert_vs_onnx_db"] > r["onnx_vs_fp32_db"] - TOL["agreement_gap_db"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="shared data (the full-HD photo) is absent")
def test_full_hd_agreement_within_one_db_of_the_onnx_model(tmp_path):
    """docs/paper_model.md's full-HD photo at the authors' 1920×1080 size (portrait)."""
    sys.path.insert(0, str(REPO / "docs"))
    from paper_model_numbers import full_hd_photo

    r = agreement(QAT, FP32, full_hd_photo(), tmp_path)
    print(r)
    assert r["size"] == "1920x1080"
    assert abs(r["litert_vs_fp32_db"] - r["onnx_vs_fp32_db"]) <= TOL["agreement_gap_db"]


def test_cli_export_and_size_errors(tmp_path):
    out = tmp_path / "out.tflite"
    cmd = [sys.executable, "-m", "qatie.cli.main", "export", "--format", "tflite", "--model", "paper-qat",
           "--size", "64x48", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    from qatie.runtime.litert import LiteRTEnhancer

    enh = LiteRTEnhancer(out)
    assert enh.size == (64, 48)
    y = enh.enhance(np.full((64, 48, 3), 0.5, np.float32))
    assert y.shape == (64, 48, 3) and np.isfinite(y).all()
    with pytest.raises(QatieError, match="64×48"):
        enh.enhance(np.zeros((48, 64, 3), np.float32))
    bad = subprocess.run(cmd[:-4] + ["--size", "8x1920", "--out", str(tmp_path / "x.tflite")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "at least 16" in bad.stderr
    with pytest.raises(QatieError, match="at least 16"):  # the writer itself checks, whoever calls it
        to_tflite(QAT, tmp_path / "tiny.tflite", 8, 8)
    assert not (tmp_path / "tiny.tflite").exists()
    with pytest.raises(QatieError, match="HxW"):
        check_size("full-hd")


def test_what_the_exporter_cannot_express_ends_in_one_message(tmp_path):
    with pytest.raises(ModelFileError, match="sidecar"):
        export_tflite("paper", tmp_path / "fp32.tflite", "64x64")  # an FP32 model has no INT8 scales
    proto = onnx.load(str(QAT))
    node = next(n for n in proto.graph.node if n.op_type == "LeakyRelu")
    node.op_type = "Elu"
    onnx.save(proto, str(tmp_path / "elu.onnx"))
    shutil.copy(QAT.with_suffix(".json"), tmp_path / "elu.json")
    with pytest.raises(ModelFileError, match=r"ONNX op Elu"):
        export_tflite(tmp_path / "elu.onnx", tmp_path / "elu.tflite", "64x64")
    side = json.loads(QAT.with_suffix(".json").read_text())
    side["keep_float"] = ["enc1.a"]
    shutil.copy(QAT, tmp_path / "kf.onnx")
    (tmp_path / "kf.json").write_text(json.dumps(side))
    with pytest.raises(ModelFileError, match="kept in float"):
        export_tflite(tmp_path / "kf.onnx", tmp_path / "kf.tflite", "64x64")
    assert not (tmp_path / "kf.tflite").exists()  # nothing half-written


def test_bench_times_the_litert_export_beside_the_onnx_model():
    from qatie.runtime.bench import run_benchmark

    r = run_benchmark(["paper-qat"], [(64, 64)], threads=1, runs=1, warmup=0, measure_memory=False, litert=True)
    rows = {row["model"]: row for row in r["results"]}
    assert set(rows) == {"paper-qat", "paper-qat@litert"}
    assert rows["paper-qat@litert"]["kind"] == "litert" and rows["paper-qat@litert"]["median_ms"] > 0


def test_cli_proof_writes_the_table_and_the_agreement(tmp_path, crop):
    from PIL import Image

    Image.fromarray((crop * 255).round().astype(np.uint8)).save(tmp_path / "crop.png")
    out = tmp_path / "proof.json"
    p = subprocess.run([sys.executable, "-m", "qatie.cli.main", "litert-proof", "--images", str(tmp_path / "crop.png"),
                        "--kernels", "xnnpack", "--threads", "1", "--json", str(out)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    ops = {r["op"]: r for r in result["proof"]["xnnpack"]}
    assert ops["CONV_2D"]["tensors"] == 41 and ops["CONV_2D"]["max_levels"] <= TOL["op_max_levels"]
    assert "CONV_2D" in p.stdout and "LiteRT vs FP32" in p.stdout and result["machine"]["cpu"]
    (a,) = result["agreement"]
    assert abs(a["litert_vs_fp32_db"] - a["onnx_vs_fp32_db"]) <= TOL["agreement_gap_db"]
