"""Training loop shared by FP32 training and QAT fine-tuning.

Adam, linear warm-up then cosine decay, gradient clipping, validation every N steps, atomic
checkpoints (last.pt every `checkpoint_every` steps, best.pt on validation gain) and exact
resume: batches are a function of (seed, step, rank), the schedule a function of step.
Runs on CPU or CUDA, and data-parallel under `torchrun` (DDP; gloo on CPU).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from qatie.model import checkpoint as ckpt_mod
from qatie.config import TrainConfig
from qatie.data.datasets import PatchSampler, load_source, Source
from qatie.data.degrade import DEFAULT as DEFAULT_DEGRADATION, DegradationConfig
from qatie.errors import QatieError
from qatie.train.losses import LOSSES
from qatie.metrics import psnr, ssim
from qatie.model.network import build_model

VAL_CROP = 768  # validation images are centre-cropped to at most this many pixels a side


def degradation_config(cfg: TrainConfig) -> DegradationConfig:
    """The training degradation: the default mix with the config's overrides."""
    unknown = set(cfg.degradation) - set(DegradationConfig.__dataclass_fields__)
    if unknown:
        raise QatieError(f"unknown degradation fields: {', '.join(sorted(unknown))}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.degradation.items()}
    return replace(DEFAULT_DEGRADATION, **fields)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def validation_sets(cfg: TrainConfig, sources: list[Source]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Fixed (input, target) images: each clean source's validation split degraded at seed 0 as
    the test split is (whole photos, up to VAL_CROP pixels a side), and the same photos with only
    noise/blur/JPEG and correct tones (`… · tones right`): a model that re-grades good photos
    loses there, so best.pt cannot be one that does harm. Plus the extra `val_data` pair sets."""
    from qatie.data.datasets import EVAL_DEGRADATION
    from qatie.data.degrade import degrade, seed_for

    tones_right = replace(EVAL_DEGRADATION, p_tone=0.0)
    sets = {}
    for spec, src in zip(cfg.data, sources):
        if src.synthetic:
            val = load_source(spec, part="val") if spec.startswith("clean:") else src
            items, right = [], []
            for name, t in list(zip(val.names, val.targets))[: cfg.val_limit]:
                t = _center(t.astype(np.float32) / 255.0)
                items.append((degrade(t, seed_for(name, 0), EVAL_DEGRADATION), t))
                right.append((degrade(t, seed_for(name, 0), tones_right), t))
            sets[spec] = items
            sets[f"{spec} · tones right"] = right
    for spec in cfg.val_data:
        src = load_source(spec, part="val")
        sets[spec] = [(_center(a.astype(np.float32) / 255), _center(b.astype(np.float32) / 255))
                      for a, b in list(zip(src.inputs, src.targets))[: cfg.val_limit]]
    return sets


def _center(a: np.ndarray, size: int = VAL_CROP) -> np.ndarray:
    h, w = a.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(a[y:y + size, x:x + size])


@torch.no_grad()
def evaluate_sets(model, sets, device) -> dict:
    """Mean PSNR/SSIM of the model and of the untouched input on each validation set."""
    model.eval()
    out = {}
    for name, items in sets.items():
        p, s, p_in, s_in = [], [], [], []
        for inp, tgt in items:
            x = torch.from_numpy(inp.transpose(2, 0, 1)[None].copy()).to(device)
            y = model(x)[0].permute(1, 2, 0).cpu().numpy()
            p.append(psnr(y, tgt)), s.append(ssim(y, tgt)), p_in.append(psnr(inp, tgt)), s_in.append(ssim(inp, tgt))
        out[name] = {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)),
                     "input_psnr": float(np.mean(p_in)), "input_ssim": float(np.mean(s_in))}
    model.train()
    return out


def val_score(val: dict, monitored: list[str]) -> float:
    """Mean PSNR gain over the input on the training sources' validation splits: the number
    best.pt is picked by. `val_data` sets (`monitored`) are logged but never used to select."""
    gains = [v["psnr"] - v["input_psnr"] for k, v in val.items() if k not in monitored]
    return float(np.mean(gains)) if gains else 0.0


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def train(cfg: TrainConfig, out_dir, resume: bool = False, model=None, kind: str = "fp32",
          extra_state: Optional[Callable[[], dict]] = None, teacher: Optional[torch.nn.Module] = None,
          progress: Optional[Callable[[dict], None]] = None,
          should_stop: Optional[Callable[[], bool]] = None) -> dict:
    """Train `model` (a fresh network of cfg.width/variant if None) and write checkpoints to out_dir.

    `kind` and `extra_state` let QAT reuse this loop: its checkpoints carry the quantizer state;
    with `teacher` (the frozen FP32 model) and cfg.distill > 0 the loss also pulls the output
    towards the teacher's, so the INT8 model learns to agree with full precision.
    `progress` receives {step, steps, loss, lr, elapsed_s[, val]} dicts; `should_stop` cancels.
    Returns a summary dict (also written to out_dir/summary.json).
    """
    out_dir = Path(out_dir)
    rank, world = _dist_info()
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.manual_seed(cfg.seed)
    loss_fn = _loss_of(cfg, teacher)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
    sources = [load_source(s, part="train") for s in cfg.data]
    sampler = PatchSampler(sources, cfg.patch, degradation_config(cfg), cfg.global_crops)
    if model is None:
        model = build_model(cfg.width, cfg.variant)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, history, best = 0, [], -float("inf")
    last = out_dir / "last.pt"
    if resume and last.exists():
        ck = ckpt_mod.read_checkpoint(last)
        model.load_state_dict(ck["state_dict"])
        if "optimizer" in ck:
            opt.load_state_dict(ck["optimizer"])
        step, history, best = int(ck["step"]), list(ck.get("history", [])), float(ck.get("best_score", best))
        if kind == "qat" and "quant" in ck:
            from qatie.model.quant import load_quant_state

            load_quant_state(model, ck["quant"])
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    val_sets = validation_sets(cfg, sources) if rank == 0 else {}
    per_rank = max(1, cfg.batch_size // world)
    started, t0 = step, time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    def save(path, **kw):
        extra = {"quant": extra_state()} if extra_state else {}
        ckpt_mod.save_checkpoint(path, model, kind=kind, config=cfg.to_dict(), step=step,
                                 history=history, best_score=best, **extra, **kw)

    model.train()
    loss_val = float("nan")
    while step < cfg.steps:
        if should_stop is not None and should_stop():
            break
        inp, tgt = sampler.batch(per_rank, cfg.seed, step, rank)
        x = torch.from_numpy(inp).to(device).contiguous(memory_format=torch.channels_last)
        t = torch.from_numpy(tgt).to(device).contiguous(memory_format=torch.channels_last)
        lr = lr_at(step, cfg)
        loss_val = _optimizer_step(net, model, opt, loss_fn, teacher, cfg, x, t, lr)
        step += 1
        event = {"step": step, "steps": cfg.steps, "loss": loss_val, "lr": lr, "elapsed_s": time.time() - t0}
        if rank == 0 and (step % cfg.val_every == 0 or step == cfg.steps):
            event["val"] = evaluate_sets(model, val_sets, device)
            score = val_score(event["val"], cfg.val_data)
            history.append({"step": step, "loss": loss_val, "val": event["val"], "score": score})
            if score > best:
                best = score
                save(out_dir / "best.pt")
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save(last, optimizer=opt.state_dict())
        if rank == 0:
            with open(out_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(event) + "\n")
            if progress is not None:
                progress(event)
    if rank == 0 and step > started and (step % cfg.checkpoint_every) and step != cfg.steps:
        save(last, optimizer=opt.state_dict())  # cancelled: keep what was trained
    if distributed:
        torch.distributed.barrier()
    summary = {"steps_done": step, "steps": cfg.steps, "final_loss": loss_val, "best_score": best,
               "wall_s": time.time() - t0, "history": history, "world_size": world,
               "data": [s.describe() for s in sources]}
    if rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _loss_of(cfg: TrainConfig, teacher) -> Callable:
    """The loss function the recipe names, after checking the distillation options."""
    if cfg.loss not in LOSSES:
        raise QatieError(f"unknown loss {cfg.loss!r}: choose {', '.join(LOSSES)}")
    if cfg.distill and teacher is None:
        raise QatieError("distill > 0 needs a teacher model (it is a QAT option: qatie qat --distill)")
    if not 0.0 <= cfg.distill <= 1.0:
        raise QatieError(f"distill must be in [0, 1], got {cfg.distill}")
    return LOSSES[cfg.loss]


def _optimizer_step(net, model, opt, loss_fn, teacher, cfg: TrainConfig, x, t, lr: float) -> float:
    """One step at learning rate `lr`: the loss against the targets, mixed with the loss against
    the teacher's output by `cfg.distill`; returns the loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    y = net(x)
    loss = loss_fn(y, t) if cfg.distill < 1 else 0.0
    if cfg.distill:
        with torch.no_grad():
            y_teacher = teacher(x)
        loss = (1 - cfg.distill) * loss + cfg.distill * loss_fn(y, y_teacher)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return float(loss.detach())
