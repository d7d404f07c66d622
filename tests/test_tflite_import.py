"""The paper authors' released TFLite models imported into our network: the mapping is proved
layer by layer against their own INT8 tensors (skips without ../shared or ai-edge-litert)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED, assert_close, conv_counts
from tolerances import TOLERANCES

REFERENCE = SHARED / "reference"
SMALL = REFERENCE / "qatie_official_int8_100x100.tflite"
FULL_HD = REFERENCE / "qatie_official_int8_1920x1080.tflite"

pytestmark = [
    pytest.mark.skipif(not SMALL.is_file(), reason=f"{SMALL} is absent (shared data not available)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
litert = pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")

TOL = TOLERANCES["tflite_import"]  # with the reasons
MIN_CONV_SQNR_DB = TOL["conv_min_sqnr_db"]


def _crops(n_per_image: int = 2) -> list[np.ndarray]:
    from qatie.data.datasets import sample_images

    crops = []
    for img in sample_images(("astronaut", "coffee")).values():
        for y, x in [(40, 60), (200, 150)][:n_per_image]:
            crops.append(np.ascontiguousarray(img[y:y + 100, x:x + 100]))
    return crops


@pytest.fixture(scope="module")
def imported():
    from qatie.paper.tflite import import_tflite

    return import_tflite(SMALL)


def test_import_is_the_papers_network_with_provenance(imported):
    from qatie.model.network import count_parameters

    model, info = imported
    assert count_parameters(model) == 915_331  # the paper's count (docs/paper_model.md), not ours to derive
    assert info["licence"] == "MIT" and len(info["source_sha256"]) == 64
    assert info["instance_norm_eps_stored"] == [1e-05]
    # no conv kept its fresh initialisation (the delta conv starts at zero in build_model)
    assert all(m.weight.abs().sum() > 0 for m in model.convs())


def test_every_conv_maps_with_an_sqnr_a_wrong_mapping_cannot_reach(imported):
    from qatie.paper.tflite import prove_mapping

    model, _ = imported
    rows = prove_mapping(SMALL, _crops(), model=model)
    convs = [r for r in rows if r["layer"] != "output"]
    assert len(convs) == len(conv_counts(model)["convs"])  # every conv of the network
    worst = min(convs, key=lambda r: r["conv_sqnr_db"])
    print(f"worst conv: {worst['layer']} {worst['conv_sqnr_db']:.2f} dB")
    assert worst["conv_sqnr_db"] >= MIN_CONV_SQNR_DB, worst
    # the wiring (tanh gates, InstanceNorm, concat orders, resize, residual) reproduces their output
    # from their own conv outputs: the final output agrees far above any wrong wiring (measured 49 dB)
    out = next(r for r in rows if r["layer"] == "output")
    assert out["wired_sqnr_db"] >= TOL["wired_min_sqnr_db"], out


def test_a_wrong_mapping_is_caught(imported):
    from qatie.paper.tflite import prove_mapping

    model, _ = imported
    wrong = type(model)(32)
    wrong.load_state_dict(model.state_dict())
    with torch.no_grad():  # swap the two encoder branches and transpose one kernel
        a, b = wrong.enc1.a.weight.clone(), wrong.enc1.b.weight.clone()
        wrong.enc1.a.weight.copy_(b), wrong.enc1.b.weight.copy_(a)
        wrong.ref_s2.t_conv.weight.copy_(wrong.ref_s2.t_conv.weight.transpose(2, 3).clone())
    rows = {r["layer"]: r for r in prove_mapping(SMALL, _crops(1), model=wrong)}
    right = {r["layer"]: r for r in prove_mapping(SMALL, _crops(1), model=model)}
    print("swapped:", {k: round(rows[k]["conv_sqnr_db"], 2) for k in ("enc1.a", "enc1.b")},
          "transposed:", round(rows["ref_s2.t_conv"]["conv_sqnr_db"], 2), "right:", round(right["ref_s2.t_conv"]["conv_sqnr_db"], 2))
    for layer in ("enc1.a", "enc1.b"):  # swapped branches: nothing in common
        assert rows[layer]["conv_sqnr_db"] < TOL["wrong_conv_max_sqnr_db"], rows[layer]
    # a transposed kernel keeps its smooth part, far below the right one
    assert (rows["ref_s2.t_conv"]["conv_sqnr_db"]
            < right["ref_s2.t_conv"]["conv_sqnr_db"] - TOL["transposed_kernel_min_loss_db"])
    assert rows["ref_s2.u"]["conv_sqnr_db"] >= MIN_CONV_SQNR_DB  # the untouched ones still map


@pytest.mark.skipif(not FULL_HD.is_file(), reason="full-HD reference model absent")
def test_both_released_files_carry_the_same_weights(imported):
    """The int8 weights, their scales and the norm parameters are identical; biases differ only by
    their int32 rounding at each file's own input scale (bias step = input scale × weight scale)."""
    from qatie.paper.tflite import import_tflite

    small, _ = imported
    full, _ = import_tflite(FULL_HD)
    sd_small, sd_full = small.state_dict(), full.state_dict()
    for key, value in sd_small.items():
        if key.endswith(".bias") and "norm" not in key:
            assert_close(value, sd_full[key], "tflite_import.bias_between_files_max_abs")
        else:
            assert torch.equal(value, sd_full[key]), key


def test_cli_writes_a_checkpoint_that_loads_safely(tmp_path, cli):
    from qatie.model.checkpoint import load_model, read_checkpoint

    out = tmp_path / "paper.pt"
    proc = cli("import-tflite", SMALL, "--out", out)
    assert "MIT" in proc.stdout
    ckpt = read_checkpoint(out)  # weights_only=True
    assert ckpt["source"]["source_file"] == SMALL.name
    model = load_model(out)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        y = model(x)
    # it changes photos (a DPED look): on average more than a fresh network (the identity up to
    # 8-bit rounding) may change any one pixel
    print(f"mean change: {float((y - x).abs().mean()):.4f}")
    assert y.shape == x.shape and (y - x).abs().mean() > TOLERANCES["untrained_identity_max_abs"]


def test_not_a_tflite_file_is_a_clear_error(tmp_path):
    from qatie.errors import ModelFileError
    from qatie.paper.tflite import import_tflite

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(ModelFileError, match="bad.tflite"):
        import_tflite(bad)


@pytest.mark.skipif(not FULL_HD.is_file(), reason="full-HD reference model absent")
def test_the_full_hd_file_leaves_the_gates_three_levels_and_that_alone_breaks_colour(imported):
    """docs/paper_model.md's diagnosis: the full-HD file requantizes each tanh to its concat's
    scale before the gate multiplies them, leaving 3 levels of tanh's [−1, 1] (the 100×100 file: 5–17);
    those grids alone, on our exact FP32 network, cost far more than the small file's."""
    from qatie.data.datasets import sample_images
    from qatie.paper.diagnosis import gate_grid_experiment, tanh_gate_grids

    small, full = tanh_gate_grids(SMALL), tanh_gate_grids(FULL_HD)
    assert [g["branch"] for g in full] == ["enc1.a", "enc1.b", "enc2.a", "enc2.b"]
    assert max(g["levels_in_tanh_range"] for g in full) <= 3
    assert min(g["levels_in_tanh_range"] for g in small) >= 5
    model, _ = imported
    img = np.ascontiguousarray(list(sample_images(("coffee",)).values())[0][:192, :256])
    bad, fine = gate_grid_experiment(model, img, full), gate_grid_experiment(model, img, small)
    print(f"gate grids vs FP32: full-HD file's {bad['psnr_vs_fp32_db']:.2f} dB, 100×100 file's {fine['psnr_vs_fp32_db']:.2f} dB")
    assert bad["psnr_vs_fp32_db"] < fine["psnr_vs_fp32_db"] - TOL["three_level_gates_min_loss_db"], (
        bad["psnr_vs_fp32_db"], fine["psnr_vs_fp32_db"])
    assert model.enc1.q_ta.hook is None  # the experiment leaves the model as it found it


def test_the_authors_model_runs_as_released_on_any_photo_size():
    from qatie.paper.tflite import AuthorsTFLite

    authors = AuthorsTFLite(SMALL, threads=1)
    for shape in ((60, 90, 3), (130, 210, 3)):
        img = np.random.default_rng(0).random(shape, dtype=np.float32)
        y = authors.enhance(img)
        assert y.shape == shape and np.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    assert "tiles" in authors.how((130, 210, 3))
