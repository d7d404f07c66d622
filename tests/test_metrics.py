"""Metrics equal scikit-image's; evaluation (torch and ONNX enhancers, summary, agreement)."""
import json
import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import make_image
from qatie.errors import CheckpointError, ModelFileError, QatieError
from qatie.analysis.evaluate import evaluate, format_table
from qatie.runtime.enhancer import load_enhancer
from qatie.util import jsonable
from qatie.metrics import agreement, error_levels, psnr, ssim


@pytest.fixture
def pair():
    ref = make_image(40, 52, seed=1)
    out = np.clip(ref + np.random.default_rng(2).normal(0, 0.03, ref.shape), 0, 1).astype(np.float32)
    return out, ref


def test_psnr_ssim_equal_skimage(pair):
    out, ref = pair
    assert psnr(out, ref) == peak_signal_noise_ratio(ref, out, data_range=1.0)
    assert ssim(out, ref) == structural_similarity(ref, out, channel_axis=2, data_range=1.0)
    assert isinstance(psnr(out, ref), float) and isinstance(ssim(out, ref), float)


def test_identical_images():
    a = make_image(10, 10)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_small_images():
    a = make_image(5, 9, seed=1)
    b = make_image(5, 9, seed=2)
    assert ssim(a, b) == structural_similarity(b, a, channel_axis=2, data_range=1.0, win_size=5)
    tiny = make_image(2, 2)
    assert ssim(tiny, tiny) == 1.0 and ssim(tiny, 1 - tiny) == 0.0


def test_error_levels_and_agreement():
    a = np.zeros((3, 4, 3), np.float32)
    b = a.copy()
    b[0, 0, 1] = 3 / 255
    b[1, 1, 2] = 1 / 255
    lv = error_levels(b, a)
    assert lv.shape == (3, 4) and lv.dtype == np.float32
    assert lv[0, 0] == 3 and lv[1, 1] == 1 and lv.sum() == 4
    ag = agreement(b, a)
    assert ag["max_levels"] == 3 and ag["mean_levels"] == pytest.approx(4 / 12)
    assert ag["share_over_2_levels"] == pytest.approx(1 / 12)
    assert ag["psnr_vs_fp32"] == psnr(b, a)


def test_error_levels_of_8_bit_images_equal_those_of_their_float_copies():
    """The int16 path for uint8 images gives the float path's levels (on every pair of values)."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    b[0, :, :] = np.arange(256, dtype=np.uint8)[:80, None]  # every value against zero-ish
    a[0, :, :] = 0
    fast = error_levels(a, b)
    slow = error_levels(a.astype(np.float32) / np.float32(255), b.astype(np.float32) / np.float32(255))
    assert fast.dtype == np.float32 and np.array_equal(fast, slow)
    assert fast.max() == 255 and np.array_equal(fast, np.abs(a.astype(int) - b).max(axis=2))


# ---------------------------------------------------------------------------- evaluation


def _identity_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    dims = ["N", 3, "H", "W"]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["enhanced"])], "identity",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("enhanced", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def pairs():
    out = []
    for i in range(3):
        t = make_image(20 + 3 * i, 27, seed=10 + i)
        out.append((f"im{i}", np.clip(t * 0.85 + 0.02, 0, 1).astype(np.float32), t))
    return out


def test_evaluate_structure_and_agreement(pairs):
    brighten = lambda x: np.clip(x / 0.85, 0, 1).astype(np.float32)  # noqa: E731
    shifted = lambda x: np.clip(brighten(x) + 2 / 255, 0, 1).astype(np.float32)  # noqa: E731
    res = evaluate(["good", "close"], pairs, enhancers={"good": brighten, "close": shifted})
    s = res["summary"]
    assert res["models"] == ["good", "close"] and res["count"] == 3
    assert set(s) == {"input", "good", "close"}
    assert s["input"]["psnr"] == pytest.approx(np.mean([psnr(i, t) for _, i, t in pairs]))
    assert s["good"]["psnr"] > s["input"]["psnr"] and s["good"]["ssim"] > s["input"]["ssim"]
    assert "agreement_with_good" not in s["good"]
    # "close" is "good" shifted up by 2 levels (less where it clips at white): no pixel is more than
    # 2 levels off, so its PSNR is at least that of a uniform 2-level error (plus one float32 ulp at 1)
    ag = s["close"]["agreement_with_good"]
    assert ag["max_levels"] == 2 and ag["psnr_vs_fp32"] >= 20 * math.log10(1 / (2 / 255 + 2 ** -23))
    assert [r["name"] for r in res["images"]] == ["im0", "im1", "im2"]
    row = res["images"][1]
    assert set(row) == {"name", "input", "good", "close"}
    assert row["close"]["agreement_with_good"]["max_levels"] == 2
    table = format_table(res)
    assert "input" in table and "good" in table and "vs good" in table
    text = json.dumps(jsonable(res), allow_nan=False)
    assert json.loads(text)["summary"]["good"]["psnr"] == pytest.approx(s["good"]["psnr"])


def test_evaluate_identical_models_give_inf_agreement_serialised_as_null(pairs):
    ident = lambda x: x  # noqa: E731
    res = evaluate(["a", "b"], pairs, enhancers={"a": ident, "b": ident})
    assert res["summary"]["b"]["agreement_with_a"]["psnr_vs_fp32"] == math.inf
    assert res["summary"]["a"]["psnr"] == res["summary"]["input"]["psnr"]
    assert json.loads(json.dumps(jsonable(res)))["summary"]["b"]["agreement_with_a"]["psnr_vs_fp32"] is None
    assert "inf" in format_table(res)


def test_evaluate_rejects_bad_arguments(pairs):
    f = {"a": lambda x: x}
    with pytest.raises(QatieError):
        evaluate([], pairs, enhancers=f)
    with pytest.raises(QatieError, match="twice"):
        evaluate(["a", "a"], pairs, enhancers=f)
    with pytest.raises(QatieError, match="reserved"):
        evaluate(["input"], pairs, enhancers={"input": lambda x: x})
    with pytest.raises(QatieError):
        evaluate(["a"], [], enhancers=f)
    with pytest.raises(QatieError, match="differ"):
        evaluate(["a"], [("x", np.zeros((4, 4, 3), np.float32), np.zeros((4, 5, 3), np.float32))], enhancers=f)


def test_load_enhancer_torch_checkpoint(tmp_path, pairs):
    import torch

    from qatie.model.checkpoint import save_checkpoint
    from qatie.model.network import build_model

    torch.manual_seed(0)
    model = build_model(8)
    torch.nn.init.normal_(model.delta.weight, std=0.05)
    path = save_checkpoint(tmp_path / "m.pt", model)
    enhance = load_enhancer(str(path), threads=1)
    img = pairs[0][1]
    out = enhance(img)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(img.transpose(2, 0, 1)[None].copy()))[0].permute(1, 2, 0).numpy()
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    assert not np.array_equal(out, img)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_enhancer(str(tmp_path / "missing.pt"))


def test_load_enhancer_onnx_and_evaluate_against_torch(tmp_path, pairs):
    from qatie.model.checkpoint import save_checkpoint
    from qatie.model.network import build_model

    onnx_path = _identity_onnx(tmp_path / "identity.onnx")
    enhance = load_enhancer(str(onnx_path), threads=1)
    img = pairs[1][1]
    np.testing.assert_array_equal(enhance(img), img)
    pt = save_checkpoint(tmp_path / "fresh.pt", build_model(8))  # a fresh model is the identity too
    res = evaluate([str(pt), str(onnx_path)], pairs, threads=1)
    s = res["summary"]
    assert s[str(pt)]["psnr"] == s["input"]["psnr"] == s[str(onnx_path)]["psnr"]
    assert s[str(onnx_path)][f"agreement_with_{pt}"]["max_levels"] == 0
    with pytest.raises(ModelFileError):
        load_enhancer(str(tmp_path / "nope.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="bad.onnx"):
        load_enhancer(str(bad))
