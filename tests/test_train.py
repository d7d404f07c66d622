"""Training: a short run learns (lower loss, beats the identity on held-out photos), schedule,
loss, checkpoints (bit-exact round trip, weights_only, clear errors), exact resume, DDP."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import assert_close, cli_env
from qatie.model import checkpoint as ckpt_mod
from qatie.model.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from qatie.data.datasets import sample_images
from qatie.data.degrade import DegradationConfig, degrade, seed_for
from qatie.errors import CheckpointError, QatieError
from qatie.imageio import write_image
from qatie.train.losses import LOSSES, cosine_loss, l1_loss, outlier_loss, paper_loss, psnr_y_loss
from qatie.metrics import psnr
from qatie.model.network import build_model
from qatie.train.loop import TrainConfig, lr_at, train
from tolerances import TOLERANCES

# A light, learnable degradation: underexposure, a colour cast, lower contrast; no noise/blur/JPEG.
LIGHT = DegradationConfig(p_clean=0.0, p_mild=0.0, p_tone=1.0, p_tone_each=1.0, exposure_stops=(-0.8, -0.5),
                          wb_gain=(0.92, 0.97), gamma=(1.0, 1.0), contrast=(0.85, 0.95),
                          saturation=(1.0, 1.0), p_blur=0.0, p_noise=0.0, p_jpeg=0.0)

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle_left")
HELD_OUT = "chelsea"  # never trained on (motorcycle_right is left out: the same scene as _left)


def _model_output(model, img):
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        return model.eval()(x)[0].permute(1, 2, 0).numpy()


def test_short_training_lowers_loss_and_beats_identity(tmp_path):
    photos = sample_images(TRAIN_PHOTOS + (HELD_OUT,))
    inp_dir, tgt_dir = tmp_path / "in", tmp_path / "tgt"
    for name in TRAIN_PHOTOS:
        t = photos[name][::2, ::2]  # half size: still photo-like, quicker to load
        write_image(tgt_dir / f"{name}.png", t)
        write_image(inp_dir / f"{name}.png", degrade(t, seed_for(name, 0), LIGHT))
    cfg = TrainConfig(data=[f"pairs:{inp_dir},{tgt_dir}"], width=8, steps=150, batch_size=4, patch=48,
                      lr=2e-3, warmup_steps=10, val_every=1000, checkpoint_every=1000, seed=0, loss="l1")
    losses = []
    summary = train(cfg, tmp_path / "run", progress=lambda e: losses.append(e["loss"]))
    assert summary["steps_done"] == 150 and len(losses) == 150
    tol = TOLERANCES["short_training"]
    drop = np.mean(losses[-20:]) / np.mean(losses[:20])  # the last 20 steps' mean loss over the first 20's
    assert drop < tol["loss_ratio_max"], drop
    model = load_model(tmp_path / "run" / "last.pt")
    # Held-out photo, degraded with different draws: crops the model has never seen.
    clean = photos[HELD_OUT]
    gains = []
    for k, (y, x) in enumerate([(0, 0), (100, 200), (200, 380), (60, 120)]):
        tgt = np.ascontiguousarray(clean[y:y + 96, x:x + 64])
        inp = degrade(tgt, seed_for(f"held{k}", 1), LIGHT)
        gains.append(psnr(_model_output(model, inp), tgt) - psnr(inp, tgt))
    # The fresh model is exactly the identity (delta conv = 0): it must have learnt to do better.
    print(f"loss: last 20 steps / first 20 = {drop:.3f}; held-out PSNR gains (dB): {np.round(gains, 2).tolist()}")
    assert np.mean(gains) > tol["held_out_gain_min_db"], gains
    assert min(gains) > 0.0, gains


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(100, cfg) == pytest.approx(1e-5)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_config_rejects_unknown_options():
    with pytest.raises(QatieError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_degradation_overrides_reach_the_sampler(tmp_path):
    from qatie.train.loop import degradation_config

    cfg = TrainConfig(degradation={"p_clean": 1.0, "jpeg_quality": [60, 70]})
    d = degradation_config(cfg)
    assert d.p_clean == 1.0 and d.jpeg_quality == (60, 70) and d.p_noise == DegradationConfig().p_noise
    with pytest.raises(QatieError, match="bogus"):
        degradation_config(TrainConfig(degradation={"bogus": 1}))
    # p_clean = 1: every training input is its target, so a run starts (and stays) at zero L1 loss.
    run = TrainConfig(data=["samples"], width=4, steps=2, batch_size=2, patch=32, loss="l1", val_every=1000,
                      checkpoint_every=1000, degradation={"p_clean": 1.0})
    losses = []
    train(run, tmp_path / "run", progress=lambda e: losses.append(e["loss"]))
    assert losses[0] < TOLERANCES["zero_loss_abs"], losses


def test_validation_has_a_tones_right_set_that_punishes_regrading():
    from qatie.data.datasets import load_source
    from qatie.train.loop import validation_sets, val_score, evaluate_sets

    cfg = TrainConfig(data=["samples"], val_limit=3)
    sets = validation_sets(cfg, [load_source("samples")])
    assert set(sets) == {"samples", "samples · tones right"}
    assert all(len(v) == 3 for v in sets.values())

    class Brighten(torch.nn.Module):  # re-grades every photo, as a harmful enhancer does
        def forward(self, x):
            return torch.clamp(x * 1.08, 0, 1)

    val = evaluate_sets(Brighten(), sets, torch.device("cpu"))
    right = val["samples · tones right"]
    assert right["psnr"] < right["input_psnr"]
    assert val_score(val, []) < val_score(evaluate_sets(torch.nn.Identity(), sets, torch.device("cpu")), [])


def test_losses():
    t = torch.rand(2, 3, 16, 16)
    o = (t + 0.05 * torch.randn_like(t)).clamp(0, 1)
    assert float(paper_loss(o, t)) == pytest.approx(
        float(2 * psnr_y_loss(o, t) + cosine_loss(o, t) + outlier_loss(o, t)))
    # identical images: MSE 0, so PSNR is capped by the epsilon, 10·log10(1/1e-10) = 100 dB → (50 − 100)/100
    assert float(psnr_y_loss(t, t)) == pytest.approx((50 - 10 * math.log10(1 / 1e-10)) / 100)
    assert_close(float(cosine_loss(t, t)), 0.0, "zero_loss_abs")
    assert float(l1_loss(o, t)) == pytest.approx(float((o - t).abs().mean()))
    assert set(LOSSES) == {"paper", "l1"}
    o.requires_grad_(True)
    paper_loss(o, t).backward()
    assert torch.isfinite(o.grad).all()


def test_unknown_loss_is_an_error(tmp_path):
    with pytest.raises(QatieError, match="loss"):
        train(TrainConfig(data=["samples"], width=8, steps=1, loss="l3"), tmp_path)


# ---------------------------------------------------------------------------- checkpoints


class NotAllowed:
    """Any class: unpickling it would run code, so weights_only loading must refuse it."""


def test_checkpoint_round_trip_bit_exact(tmp_path):
    torch.manual_seed(1)
    model = build_model(8, "no_fusion_refiner")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, config={"width": 8}, step=7)
    assert not list(path.parent.glob(".*tmp"))
    raw = torch.load(path, weights_only=True)  # plain torch can read it safely
    assert raw["format"] == ckpt_mod.FORMAT and raw["step"] == 7
    ck = read_checkpoint(path)
    assert ck["model"] == {"width": 8, "variant": "no_fusion_refiner"}
    back = model_from_checkpoint(ck)
    ref, got = model.state_dict(), back.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), load_model(path)(x))


def test_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt_mod.FORMAT, "payload": NotAllowed()}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)


def test_checkpoint_wrong_width_names_file(tmp_path):
    path = save_checkpoint(tmp_path / "w8.pt", build_model(8))
    ck = torch.load(path, weights_only=True)
    ck["model"]["width"] = 16
    wrong = tmp_path / "claims_w16.pt"
    torch.save(ck, wrong)
    with pytest.raises(CheckpointError) as err:
        load_model(wrong)
    assert str(wrong) in str(err.value) and "width-16" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"hello", b"PK\x03\x04 truncated zip"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="x.pt"):
        load_model(path)


def test_checkpoint_without_marker_and_missing(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": build_model(8).state_dict()}, path)
    with pytest.raises(CheckpointError, match="format marker"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "absent.pt")


# ---------------------------------------------------------------------------- resume


def _resume_cfg(**kw):
    return TrainConfig(data=["samples"], width=8, steps=8, batch_size=2, patch=32, lr=2e-3,
                       warmup_steps=2, val_every=4, checkpoint_every=1000, seed=3, **kw)


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path):
    """8 steps in one go == 4 steps, stop, resume for 4: batches are a function of (seed, step),
    the schedule of step, and last.pt carries the Adam state."""
    cfg = _resume_cfg()
    whole = train(cfg, tmp_path / "whole")
    done = []
    train(cfg, tmp_path / "split", progress=lambda e: done.append(e["step"]), should_stop=lambda: len(done) >= 4)
    first = read_checkpoint(tmp_path / "split" / "last.pt")
    assert first["step"] == 4 and "optimizer" in first
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert resumed["steps_done"] == whole["steps_done"] == 8
    a = read_checkpoint(tmp_path / "whole" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    assert resumed["final_loss"] == whole["final_loss"]
    assert [h["step"] for h in resumed["history"]] == [4, 8]


# ---------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "qatie.cli.main", "train", "--data", "samples", "--width", "8", "--steps", "4",
           "--batch-size", "4", "--patch", "32", "--threads", "1", "--device", "cpu", "--out", str(out)]
    env = cli_env()
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "last.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_done"] == 4
    assert math.isfinite(summary["final_loss"])
    assert read_checkpoint(out / "last.pt")["step"] == 4
