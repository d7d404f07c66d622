"""The INT8 path: one QuantSpec for PTQ and QAT, faithful export, integer kernels, parity."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qatie.errors import CheckpointError
from qatie.export.sidecar import sidecar_path
from qatie.export.to_onnx import export_fp32, export_int8
from qatie.model.quant import (CALIBRATION_METHODS, act_qparams, calibrate, current_ranges, free_points,
                         prepare_qat, quant_params)
from qatie.runtime.enhancer import OnnxEnhancer

from conftest import (REPO_ROOT, assert_close, conv_counts, graph_counts, make_image, non_saturating_weights,
                      optimized_nodes, random_model)
from tolerances import TOLERANCES

SCALE_REL = TOLERANCES["float32_scale_in_sidecar"]["rel"]

CKPT = REPO_ROOT / "checkpoints"
shipped = pytest.mark.skipif(not (CKPT / "qat.pt").exists(), reason="shipped checkpoints absent")


def calib_images(n=3, size=48):
    return [make_image(size, size + 8, seed=i) for i in range(n)]


def optimized_ops(path, tmp_path) -> Counter:
    return Counter(n.op_type for n in optimized_nodes(path, tmp_path))


@pytest.fixture(scope="module")
def small_int8(tmp_path_factory):
    """A random width-8 model, its minmax ranges, INT8 export (weights in −64…64: exact on every
    CPU, see `non_saturating_weights`) and FP32 export."""
    d = tmp_path_factory.mktemp("int8")
    m = random_model()
    ranges = calibrate(m, calib_images(), "minmax")
    with non_saturating_weights():
        int8 = export_int8(m, ranges, d / "m.onnx", source="ptq-minmax")
    return m, ranges, int8, export_fp32(m, d / "f.onnx")


def test_minmax_ranges_are_the_observed_extremes():
    m = random_model()
    seen = {}
    for qp in free_points(m):
        qp.hook = (lambda name: lambda x: seen.setdefault(name, []).append((float(x.min()), float(x.max()))) or x)(qp.qname)
    with torch.no_grad():
        for img in calib_images():
            m(torch.from_numpy(img.transpose(2, 0, 1).copy())[None])
    for qp in free_points(m):
        qp.hook = None
    ranges = calibrate(m, calib_images(), "minmax")
    for name, obs in seen.items():
        assert ranges[name] == pytest.approx((min(o[0] for o in obs), max(o[1] for o in obs)),
                                              rel=TOLERANCES["float32_copy"]["rel"], abs=TOLERANCES["float32_copy"]["abs"])


def test_each_method_gives_the_range_it_promises():
    m = random_model()
    # 99 % rather than the default 99.99 %: these few tiny images have too few values for 0.005 % tails.
    got = {meth: calibrate(m, calib_images(), meth, percentile=99.0) for meth in CALIBRATION_METHODS}
    narrower = 0
    for name, (lo, hi) in got["minmax"].items():
        for meth in ("percentile", "entropy"):
            plo, phi = got[meth][name]
            assert lo <= plo <= phi <= hi, (meth, name)  # bin edges of a histogram over exactly [lo, hi]
        narrower += got["percentile"][name] != (lo, hi)
    assert narrower > len(got["minmax"]) // 2, "percentile should clip most tensors' tails"
    assert got["entropy"] != got["minmax"]
    from qatie.cli import main as cli  # the CLI's choices (kept torch-free) are exactly these methods
    assert cli.CALIBRATION_METHODS == CALIBRATION_METHODS


def test_sidecar_matches_the_onnx_qdq_nodes(small_int8):
    """Every QPoint is in the sidecar with its parameters, and the graph holds it: `q_tensor` is a
    uint8 tensor made by its QuantizeLinear, by a tanh lookup table with the matching parameters
    or by uint8 copies (graph_opt), and `dq_tensor`, where one is left, dequantizes exactly it."""
    m, ranges, path, _ = small_int8
    side = json.loads(sidecar_path(path).read_text())
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    assert sorted(t["name"] for t in side["tensors"]) == sorted(qp.qname for qp in m.qpoints())
    params = quant_params(m, ranges)
    made_by = Counter()
    for t in side["tensors"]:
        assert (t["scale"], t["zero_point"]) == pytest.approx(params[t["name"]])
        node = producer[t["q_tensor"]]
        # a narrow conv padded to more channels (graph_opt.pad_narrow_convs), sliced back
        padded = node.op_type == "Slice" and producer[node.input[0]].op_type == "QuantizeLinear"
        made_by["padded, sliced back" if padded else node.op_type] += 1
        if node.op_type == "QuantizeLinear":
            assert (float(inits[node.input[1]]), int(inits[node.input[2]])) == (pytest.approx(t["scale"], rel=SCALE_REL), t["zero_point"])
        elif node.op_type == "QLinearSigmoid":  # tanh(x) = 2σ(2x) − 1 at half the scale, zero point − n
            n = round(1 / t["scale"])
            assert float(inits[node.input[3]]) * 2 == pytest.approx(t["scale"], rel=SCALE_REL) and t["scale"] == pytest.approx(1 / n)
            assert int(inits[node.input[4]]) == t["zero_point"] - n
        elif not padded:
            assert node.op_type in ("Concat", "Reshape", "Transpose", "Slice"), node.op_type
        if t["dq_tensor"]:
            dq = producer[t["dq_tensor"]]
            assert dq.op_type == "DequantizeLinear" and dq.input[0] == t["q_tensor"]
            assert (float(inits[dq.input[1]]), int(inits[dq.input[2]])) == (pytest.approx(t["scale"], rel=SCALE_REL), t["zero_point"])
    # the tanh tables; the uint8 copies (refine and fuse concats, the up-convs' interleaves, the
    # interleave (then crop) of delta computed on up1's phases); channels of a wider tensor: up1's
    # phases (one merged conv), delta's phases (padded 12 → 16) — counted from the network
    counts = graph_counts(m)
    copies = made_by["Concat"] + made_by["Reshape"] + made_by["Transpose"] + made_by["Slice"]
    assert made_by["QLinearSigmoid"] == counts["tanh_tables"] and copies == counts["uint8_copies"], made_by
    assert sum(bool(t.get("channels")) for t in side["tensors"]) == counts["phase_slices"]
    pinned = {t["name"]: (t["scale"], t["zero_point"]) for t in side["tensors"] if t["name"] in ("q_input", "q_output")}
    assert pinned == {"q_input": (pytest.approx(1 / 255), 0), "q_output": (pytest.approx(1 / 255), 0)}
    assert len(side["weights"]) == conv_counts()["onnx"]  # each up-conv as its 2×2 phase convs


def test_every_conv_runs_as_an_integer_kernel(small_int8, tmp_path):
    _, _, path, fp32_path = small_int8
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    # the network's convs, each up-conv as its phase convs; in INT8, up1's phases merged into one
    counts = conv_counts()
    assert sum(n.op_type == "Conv" for n in onnx.load(str(fp32_path)).graph.node) == counts["onnx"]
    assert n_conv == counts["int8"]
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == n_conv and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops


def assert_random_sim_matches_ort(sim, onnx_path):
    """Torch fake-quant `sim` vs ORT running its INT8 export, on one odd-sized image. Call it
    inside `non_saturating_weights` (the export too): a random model's full-range weights
    saturate ONNX Runtime's AVX2 pair sums (tens of levels, tests/test_int8_path.py)."""
    img = make_image(40, 56, seed=9)
    with torch.no_grad():
        ys = sim(torch.from_numpy(img.transpose(2, 0, 1).copy())[None])[0].permute(1, 2, 0).numpy()
    yo = OnnxEnhancer(onnx_path, threads=1).enhance(img)
    diff = np.abs(np.round(ys * 255) - np.round(yo * 255))
    tol = TOLERANCES["random_sim_vs_ort"]
    assert diff.max() <= tol["max_levels"] and diff.mean() <= tol["mean_levels"], (diff.max(), diff.mean())


def test_int8_onnx_equals_the_torch_simulation_on_a_random_model(small_int8):
    m, ranges, path, _ = small_int8
    with non_saturating_weights():  # the export's weight levels
        sim = prepare_qat(random_model(), ranges).eval()
        assert_random_sim_matches_ort(sim, path)


def test_qat_ranges_move_during_training_and_export_uses_them(tmp_path):
    m = random_model()
    ranges = calibrate(m, calib_images(), "minmax")
    prepare_qat(m, ranges).train()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    for i in range(3):
        x = torch.from_numpy(make_image(32, 32, seed=20 + i).transpose(2, 0, 1).copy())[None] * 1.5
        loss = (m(x) - x.clamp(0, 1)).abs().mean()
        opt.zero_grad(), loss.backward(), opt.step()
    moved = current_ranges(m)
    assert sum(moved[k] != pytest.approx(ranges[k]) for k in ranges) > len(ranges) // 2
    path = export_int8(m.eval(), moved, tmp_path / "q.onnx", source="qat")
    side = {t["name"]: t for t in json.loads(sidecar_path(path).read_text())["tensors"]}
    name = next(iter(moved))
    scale, zp = act_qparams(torch.tensor(moved[name][0]), torch.tensor(moved[name][1]))
    assert side[name]["scale"] == pytest.approx(float(scale)) and side[name]["zero_point"] == int(zp)


@pytest.mark.slow
def test_qat_inherits_the_fp32_data_mix_and_distillation_keeps_it_near_fp32(tmp_path):
    from qatie.model.checkpoint import read_checkpoint, save_checkpoint
    from qatie.metrics import psnr
    from qatie.quantize.qat import run_qat
    from qatie.model.checkpoint import model_from_qat_checkpoint

    fp32 = tmp_path / "fp32.pt"
    mix = {"loss": "l1", "global_crops": 0.5, "degradation": {"p_tone": 0.25}}
    save_checkpoint(fp32, random_model(), kind="fp32", config=mix)
    outs = {}
    for d in (0.0, 1.0):
        path = run_qat(fp32, tmp_path / f"qat{d}.pt", data=["samples"], steps=12, lr=2e-3, distill=d, batch_size=2,
                       patch=32, num_calib=2, val_every=1000, threads=1)
        cfg = read_checkpoint(path)["config"]
        assert {k: cfg[k] for k in mix} == mix and cfg["distill"] == d
        outs[d] = model_from_qat_checkpoint(read_checkpoint(path), "qat").eval()
    img = make_image(48, 64, seed=3)
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        ref, plain, distilled = (m(x)[0].permute(1, 2, 0).numpy() for m in (random_model(), outs[0.0], outs[1.0]))
    # Same steps and data: matching the teacher keeps the INT8 model closer to full precision.
    assert psnr(distilled, ref) > psnr(plain, ref) + 1.0, (psnr(distilled, ref), psnr(plain, ref))


@pytest.mark.slow
def test_learnable_qat_from_entropy_ranges_exports_what_it_learned(tmp_path):
    """The shipped recipe's path: ranges start from entropy calibration, are learned (LSQ), and
    the INT8 export runs what the fake-quant simulation ran (weights in −64…64 so that ONNX
    Runtime computes the exact integer result on every CPU)."""
    from qatie.model.checkpoint import read_checkpoint, save_checkpoint
    from qatie.quantize.ptq import calibration_images
    from qatie.quantize.qat import export_checkpoint, run_qat
    from qatie.model.checkpoint import model_from_qat_checkpoint

    with non_saturating_weights():  # trained, simulated and exported with weights in −64…64
        fp32 = tmp_path / "fp32.pt"
        save_checkpoint(fp32, random_model(), kind="fp32", config={"loss": "l1"})
        start = calibrate(random_model(), calibration_images("samples", 2, 0), "entropy")
        frozen = model_from_qat_checkpoint(read_checkpoint(run_qat(  # lr 0: the ranges it starts from
            fp32, tmp_path / "qat0.pt", data=["samples"], steps=2, lr=0.0, learnable=True, calib_method="entropy",
            batch_size=2, patch=32, num_calib=2, val_every=1000, threads=1)), "qat0")
        for name, fq in frozen.fake_quants.items():
            if fq.learnable:
                lo, hi = start[name.replace("__", ".")]
                scale, zp = act_qparams(torch.tensor(lo), torch.tensor(hi), fq.tanh_lut)
                assert fq.qparams()[0].item() == pytest.approx(scale.item(), rel=TOLERANCES["float32_copy"]["rel"], abs=TOLERANCES["float32_copy"]["abs"]) and fq.qparams()[1].item() == zp.item()
        path = run_qat(fp32, tmp_path / "qat.pt", data=["samples"], steps=6, lr=1e-3, learnable=True, distill=1.0,
                       calib_method="entropy", batch_size=2, patch=32, num_calib=2, val_every=1000, threads=1)
        ckpt = read_checkpoint(path)
        assert ckpt["learnable"] is True and ckpt["calib"]["method"] == "entropy"
        sim = model_from_qat_checkpoint(ckpt, "qat").eval()
        learned = current_ranges(sim)
        assert set(learned) == set(start)
        assert sum(learned[k] != pytest.approx(start[k], rel=TOLERANCES["learned_range_moved_rel"]) for k in start) > len(start) // 2
        onnx_path = export_checkpoint(path, tmp_path / "qat.onnx")
        assert_random_sim_matches_ort(sim, onnx_path)


@pytest.mark.slow
def test_qat_continues_from_a_qat_checkpoint(tmp_path):
    """A finished QAT checkpoint continues from its own weights and ranges (no recalibration),
    distilled from the FP32 source it records; the step count adds up."""
    from qatie.model.checkpoint import read_checkpoint, save_checkpoint
    from qatie.errors import CheckpointError
    from qatie.quantize.qat import run_qat
    from qatie.model.checkpoint import model_from_qat_checkpoint

    fp32 = tmp_path / "fp32.pt"
    save_checkpoint(fp32, random_model(), kind="fp32", config={"loss": "l1"})
    first = run_qat(fp32, tmp_path / "a.pt", data=["samples"], steps=4, lr=1e-3, learnable=True, distill=1.0,
                    batch_size=2, patch=32, num_calib=2, val_every=1000, threads=1)
    # lr 0: nothing moves, so the continued model is the first one exactly (not a recalibrated one)
    same = run_qat(first, tmp_path / "b.pt", data=["samples"], steps=2, lr=0.0, learnable=True, distill=1.0,
                   batch_size=2, patch=32, val_every=1000, threads=1)
    a, b = (model_from_qat_checkpoint(read_checkpoint(p), "q") for p in (first, same))
    ra, rb = current_ranges(a), current_ranges(b)  # (float32 round trips through scale/zero point)
    assert ra.keys() == rb.keys() and all(rb[k] == pytest.approx(ra[k], rel=TOLERANCES["float32_copy"]["rel"], abs=TOLERANCES["float32_copy"]["abs"]) for k in ra)
    weights = [k for k in a.state_dict() if not k.startswith("fake_quants.")]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in weights)
    for name, fq in a.fake_quants.items():  # the quantizers in use (their stored lo/hi may differ in form)
        (sa, za), (sb, zb) = fq.qparams(), b.fake_quants[name].qparams()
        assert torch.allclose(sa, sb, rtol=TOLERANCES["float32_copy"]["rel"]) and torch.equal(za, zb), name
    ckpt = read_checkpoint(same)
    assert ckpt["steps"] == 6 and ckpt["source_checkpoint"] == str(fp32)
    assert ckpt["calib"]["continued_from"] == "a.pt" and ckpt["calib"]["steps_before"] == 4
    with pytest.raises(CheckpointError, match="--learnable"):
        run_qat(first, tmp_path / "c.pt", data=["samples"], steps=1, learnable=False, batch_size=2, patch=32)


def test_learnable_ranges_get_gradients():
    m = random_model()
    prepare_qat(m, calibrate(m, calib_images(), "minmax"), learnable=True).train()
    x = torch.from_numpy(make_image(32, 32).transpose(2, 0, 1).copy())[None]
    (m(x) - x).abs().mean().backward()
    grads = [fq.scale.grad for fq in m.fake_quants.values() if fq.learnable]
    assert grads and any(g is not None and g.abs().item() > 0 for g in grads)


def test_inference_fake_quant_is_torchs_op_bit_for_bit():
    """The no-gradient fast path gives exactly what torch's fake-quant ops give, for every kind
    of quantizer (moving average, learned, learned tanh point), ties to even included."""
    from qatie.model.quant import FakeQuant, fake_quant_inference

    g = torch.Generator().manual_seed(0)
    for scale, zp in ((0.0234, 131), (1 / 255, 0), (0.5, 255), (3.7, 7)):
        ties = (torch.arange(-300, 300, dtype=torch.float32) + 0.5) * scale  # x/scale on a .5: round half to even
        x = torch.cat([torch.randn(4096, generator=g) * 200 * scale, ties])
        want = torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
        got = fake_quant_inference(x, torch.tensor(scale), torch.tensor(zp))
        assert torch.equal(got, want), (scale, zp, (got - want).abs().max())
    x = torch.randn(2, 3, 17, 19, generator=g) * 2
    for fq in (FakeQuant(-1.5, 2.5), FakeQuant(-1.5, 2.5, learnable=True), FakeQuant(-0.3, 0.9, learnable=True, tanh_lut=True)):
        if fq.learnable:
            with torch.no_grad():
                fq.scale.mul_(1.013), fq.zero_point.add_(0.4)  # learned values between the grid's
        fq.eval()
        with torch.no_grad():
            fast = fq(x)
        assert torch.equal(fast, fq(x.clone().requires_grad_(True)).detach()), fq


def test_ptq_refuses_a_qat_checkpoint_and_wrong_width(tmp_path):
    from qatie.model.checkpoint import save_checkpoint
    from qatie.quantize.ptq import run_ptq

    m = prepare_qat(random_model(), calibrate(random_model(), calib_images(1), "minmax"))
    from qatie.model.quant import quant_state

    save_checkpoint(tmp_path / "q.pt", m, kind="qat", quant=quant_state(m))
    with pytest.raises(CheckpointError, match="FP32"):
        run_ptq(tmp_path / "q.pt", tmp_path / "x.onnx", calib="samples", num_calib=1)
    ck = torch.load(tmp_path / "q.pt", weights_only=True)
    ck["model"]["width"] = 16
    torch.save(ck, tmp_path / "bad.pt")
    from qatie.model.checkpoint import load_model

    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")


# ------------------------------------------------------------- the shipped models

def parity_images():
    from qatie.data.datasets import EVAL_DEGRADATION, sample_images
    from qatie.data.degrade import degrade, seed_for

    out = []
    for name, img in sample_images().items():
        h, w = img.shape[:2]
        t = img[(h - 256) // 2:(h - 256) // 2 + 256, (w - 256) // 2:(w - 256) // 2 + 256]
        out.append((degrade(t, seed_for(name, 0), EVAL_DEGRADATION), t))
    return out


@shipped
def test_shipped_int8_models_use_integer_kernels(tmp_path):
    for name in ("int8_ptq.onnx", "int8_qat.onnx"):
        ops = optimized_ops(CKPT / name, tmp_path)
        assert ops["QLinearConv"] == conv_counts()["int8"] and ops["Conv"] == 0 and ops["QLinearConcat"] == 0, (name, ops)


@shipped
def test_shipped_fp32_onnx_matches_torch_on_odd_sizes():
    from qatie.model.checkpoint import load_model

    m = load_model(CKPT / "fp32.pt")
    ort_model = OnnxEnhancer(CKPT / "fp32.onnx", threads=1)
    for h, w in ((1, 1), (17, 31), (45, 64)):
        img = make_image(h, w, seed=h)
        with torch.no_grad():
            yt = m(torch.from_numpy(img.transpose(2, 0, 1).copy())[None])[0].permute(1, 2, 0).numpy()
        assert_close(ort_model.enhance(img), yt, "fp32_onnx_vs_torch")


@shipped
def test_simulation_equals_deployment_for_the_shipped_qat_model():
    """torch fake-quant (qat.pt) vs ONNX Runtime INT8 (int8_qat.onnx) on degraded photos."""
    from qatie.model.checkpoint import load_model
    from qatie.metrics import agreement, psnr, ssim

    tol = TOLERANCES["qat_sim_vs_ort"]
    sim = load_model(CKPT / "qat.pt")
    ort_model = OnnxEnhancer(CKPT / "int8_qat.onnx", threads=1)
    rows = []
    for inp, tgt in parity_images():
        with torch.no_grad():
            ys = sim(torch.from_numpy(inp.transpose(2, 0, 1).copy())[None])[0].permute(1, 2, 0).numpy()
        yo = ort_model.enhance(inp)
        rows.append((psnr(ys, tgt), psnr(yo, tgt), ssim(ys, tgt), ssim(yo, tgt), agreement(yo, ys)))
    d_psnr = abs(np.mean([r[0] for r in rows]) - np.mean([r[1] for r in rows]))
    d_ssim = abs(np.mean([r[2] for r in rows]) - np.mean([r[3] for r in rows]))
    agree = min(r[4]["psnr_vs_fp32"] for r in rows)
    max_lv = max(r[4]["max_levels"] for r in rows)
    mean_lv = np.mean([r[4]["mean_levels"] for r in rows])
    print(f"sim vs ORT: ΔPSNR {d_psnr:.4f} dB, ΔSSIM {d_ssim:.5f}, agreement ≥ {agree:.2f} dB, "
          f"max {max_lv:.0f} levels, mean {mean_lv:.3f} levels")
    assert d_psnr <= tol["metric_psnr_db"] and d_ssim <= tol["metric_ssim"]
    assert agree >= tol["agreement_psnr_min_db"]
    assert max_lv <= tol["max_levels"] and mean_lv <= tol["mean_levels"]


def test_a_model_is_traced_once_per_state_and_the_cache_changes_nothing(tmp_path):
    """Exporting one model several times (keep-float sets) reuses its trace; the files are the
    ones a fresh trace gives, and any change to the model's state traces it again."""
    import qatie.export.to_onnx as ex

    m = random_model()
    ranges = calibrate(m, calib_images(), "minmax")
    ex._TRACES.clear()
    calls = []
    real = ex._trace_uncached
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "_trace_uncached", lambda *a: calls.append(1) or real(*a))
        first = export_int8(m, ranges, tmp_path / "a.onnx", source="t").read_bytes()
        again = export_int8(m, ranges, tmp_path / "b.onnx", source="t").read_bytes()
        export_int8(m, ranges, tmp_path / "kf.onnx", source="t", keep_float={"delta"})
        assert len(calls) == 1 and again == first
        ex._TRACES.clear()
        assert export_int8(m, ranges, tmp_path / "c.onnx", source="t").read_bytes() == first  # as traced afresh
        with torch.no_grad():
            m.delta.bias.add_(0.01)
        changed = export_int8(m, ranges, tmp_path / "d.onnx", source="t").read_bytes()
        assert len(calls) == 3 and changed != first
