"""Every INT8 model QATIE ships or writes computes the exact integer result on every CPU.

The invariant is checked from the weights (QuantSpec v3, `qatie.model.pair_safety`), so it holds on any
machine CI runs on; and the product's result is checked too: each shipped model's output on this
CPU equals its exact integer result (the same model on ONNX Runtime's exact uint8-weight kernels)
on real photos — a test that fails on a CPU without VNNI for a model that saturates there.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qatie.runtime import int8_reference as ref
from qatie.imageio import read_image
from qatie.model.pair_safety import PAIR_SUM_LIMIT, risky_weight_pairs
from qatie.model.quant import SPEC, _pairs, fake_quant_weight, pair_safe, weight_levels, weight_scales
from conftest import REPO_ROOT, assert_exact_on_every_cpu, make_image, random_model, saturating_weights
from tolerances import TOLERANCES

CKPT = REPO_ROOT / "checkpoints"
SHIPPED_INT8 = ["int8_ptq", "int8_qat", "paper_int8_ptq", "paper_int8_qat"]
EXAMPLES = sorted((REPO_ROOT / "assets" / "examples").glob("*_input.png"))
shipped = pytest.mark.skipif(not all((CKPT / f"{n}.onnx").is_file() for n in SHIPPED_INT8), reason="shipped models absent")


# ------------------------------------------------------------------------------ the rounding

def _levels_over(levels: torch.Tensor) -> int:
    p = _pairs(levels)
    return int(((p[:, :, 0] * p[:, :, 1] > 0) & (p[:, :, 0].abs() + p[:, :, 1].abs() > PAIR_SUM_LIMIT)).sum())


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (8, 4, 3, 3), (12, 7, 1, 1), (32, 32, 2, 2), (5, 64, 3, 3)])
@pytest.mark.parametrize("kind", ["normal", "heavy_tailed", "all_equal", "one_big_pair"])
def test_weight_levels_are_pair_safe_and_close(shape, kind):
    """No same-sign pair over the limit, whatever the weights; levels in −127…127; each weight
    within half a level of its exact value except where a pair was moved onto the limit (one
    level at most, since the scale already fits the largest pair)."""
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g)
    if kind == "heavy_tailed":
        w = w ** 3
    elif kind == "all_equal":
        w = torch.full(shape, 0.3)
    elif kind == "one_big_pair" and shape[1] > 1:
        w[0, 0, 0, 0], w[0, 1, 0, 0] = 5.0, 4.9
    levels, scale = weight_levels(w)
    assert _levels_over(levels) == 0
    stored = levels.numpy().astype(np.int8)
    if shape[1] % 2:  # the exporter pads an odd channel count with a zero channel (graph_opt)
        stored = np.concatenate([stored, np.zeros((shape[0], 1) + shape[2:], np.int8)], 1)
    assert risky_weight_pairs(stored) == 0  # the file-layout check agrees
    assert torch.equal(levels, levels.round()) and levels.abs().max() <= SPEC.weight_qmax
    # one level, plus the float32 rounding of w / scale (a value of magnitude ≤ weight_qmax)
    rel = TOLERANCES["float32_copy"]["rel"]
    err = (levels - w / scale.reshape(-1, 1, 1, 1)).abs()
    assert float(err.max()) <= 1 + SPEC.weight_qmax * rel
    assert torch.equal(scale, weight_scales(w))
    peak = w.abs().flatten(1).amax(1)  # max|w| / 127 ≤ scale ≤ max|w| / 64 (the pair sum is ≤ 2·max|w|), in float32
    assert torch.all(scale >= peak / SPEC.weight_qmax * (1 - rel)) and torch.all(scale <= peak / 64 * (1 + rel))


def test_pair_safe_moves_only_pairs_over_the_limit_to_the_nearest_point_on_it():
    exact = torch.tensor([[[[70.4]], [[65.2]], [[-40.0]], [[-30.0]], [[127.0]], [[-127.0]]]])  # 1×6×1×1
    levels = exact.round()
    safe = pair_safe(levels, exact)
    # (70, 65) → on |q0| + |q1| = 128, nearest to (70.4, 65.2): (67, 61) ≈ (70.4 − 3.6, 65.2 − 3.6)
    assert safe.flatten().tolist() == [67.0, 61.0, -40.0, -30.0, 127.0, -127.0]


def test_channels_without_a_big_pair_keep_full_8_bit_resolution():
    w = torch.zeros(2, 4, 1, 1)
    w[0, :, 0, 0] = torch.tensor([1.0, -1.0, 0.5, -0.5])  # opposite signs: max|w| / 127
    w[1, :, 0, 0] = torch.tensor([1.0, 1.0, 0.0, 0.0])    # one same-sign pair summing to 2: 2 / 128
    scale = weight_scales(w)
    assert scale.tolist() == pytest.approx([1 / 127, 2 / 128])


def test_qat_simulates_exactly_the_integers_export_writes(tmp_path):
    """The weights QAT trains through (`fake_quant_weight`) are the exported int8 levels × scales,
    bit for bit, and the straight-through gradient is the identity."""
    from qatie.export.to_onnx import export_int8
    from qatie.model.quant import calibrate

    m = random_model(8, seed=3)
    w = m.enc2.a.weight
    sim = fake_quant_weight(w)
    levels, scale = weight_levels(w)
    assert torch.equal(sim, levels * scale.reshape(-1, 1, 1, 1))
    w2 = w.detach().clone().requires_grad_(True)
    fake_quant_weight(w2).sum().backward()
    assert torch.equal(w2.grad, torch.ones_like(w2))
    ranges = calibrate(m, [make_image(32, 40, seed=1)], "minmax")
    path = export_int8(m, ranges, tmp_path / "m.onnx", source="ptq-minmax")
    stored = {c.name: c for c in ref.int_convs(path)}["/enc2/a/Conv"]
    assert np.array_equal(stored.w, levels.numpy().astype(np.int8))
    assert np.array_equal(stored.w_scale, scale.numpy())
    assert_exact_on_every_cpu(path)


def test_a_v2_export_of_the_same_network_could_saturate(tmp_path):
    """The check is not vacuous: rounded without the limit, the same network has pairs that can
    leave int16; the note says so, in plain words, with this CPU's kernel path."""
    from qatie.export.to_onnx import export_int8
    from qatie.model.quant import calibrate

    m = random_model(8, seed=3)
    ranges = calibrate(m, [make_image(32, 40, seed=1)], "minmax")
    with saturating_weights():
        path = export_int8(m, ranges, tmp_path / "v2.onnx", source="ptq-minmax")
    pairs = ref.saturable_pairs(path)
    assert pairs > 0 and ref.runtime_saturable_pairs(path) == pairs
    assert json.loads(path.with_suffix(".json").read_text())["saturable_pairs"] == pairs
    note = ref.exactness_note(path)
    assert f"{pairs:,} of its int8 weight pairs can overflow" in note


@pytest.mark.parametrize("path, exact", [("avx2", False), ("avx512-core", False), ("avx512-vnni", True), ("neon-dot", True)])
def test_exactness_note_says_what_the_cpu_does(tmp_path, monkeypatch, path, exact):
    """The words for each kind of CPU (the path is forced here; what each path computes is
    tests/test_int8_path.py's subject): exact kernels say the output is exact; saturating ones
    give the measured deviation, or say that it can differ when nothing was measured."""
    import qatie.runtime.cpu
    from qatie.export.to_onnx import export_int8
    from qatie.model.quant import calibrate

    m = random_model(8, seed=3)
    ranges = calibrate(m, [make_image(32, 40, seed=1)], "minmax")
    with saturating_weights():
        v2 = export_int8(m, ranges, tmp_path / "v2.onnx", source="ptq-minmax")
    v3 = export_int8(m, ranges, tmp_path / "v3.onnx", source="ptq-minmax")
    monkeypatch.setattr(qatie.runtime.cpu, "int8_path", lambda *a, **k: path)
    assert ref.exactness_note(v3) is None
    note = ref.exactness_note(v2, {"max_levels": 7, "share_off": 0.25, "agreement_psnr_db": 41.23})
    assert f"({path})" in note
    if exact:
        assert "add exactly" in note and "levels" not in note
    else:
        assert "up to 7 levels off the exact integer result (25.0 % of values differ, 41.2 dB agreement)" in note
        assert "can differ" in ref.exactness_note(v2)


# ------------------------------------------------------------------------------ the shipped models

@shipped
@pytest.mark.parametrize("name", SHIPPED_INT8)
def test_shipped_int8_models_are_exact_on_every_cpu(name):
    assert_exact_on_every_cpu(CKPT / f"{name}.onnx")


@shipped
@pytest.mark.parametrize("name", SHIPPED_INT8)
def test_shipped_int8_output_is_the_exact_integer_result_on_real_photos(name):
    """The product's result on this CPU, whatever its kernels: the deployed model's 8-bit output
    equals the exact integer result on each bundled example photo (whole, as the app runs it)."""
    from qatie.runtime.enhancer import OnnxEnhancer

    assert EXAMPLES, "no bundled example photos"
    deployed = OnnxEnhancer(CKPT / f"{name}.onnx", threads=1)
    exact = ref.exact_enhancer(CKPT / f"{name}.onnx", threads=1)
    for photo in EXAMPLES:
        img = read_image(photo)
        apart = ref.levels_apart(deployed.enhance(img), exact.enhance(img))
        assert apart["max_levels"] == 0, (name, photo.name, apart)
