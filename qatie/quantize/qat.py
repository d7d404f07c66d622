"""Quantization-aware training: fine-tune an FP32 checkpoint through the INT8 simulation.

Starts from the FP32 weights, arms the network with the QuantSpec's fake quantizers (ranges
initialised by calibration — `calib_method`, minmax by default — then tracked by moving averages
or learned), and runs the shared training loop at a low learning rate (the paper used 1e-5;
the shipped model: entropy-started learned ranges, distilled, 5e-5 — docs/qat.md). The result
is a checkpoint of kind "qat" holding weights and ranges; `qatie export` turns it into the INT8
ONNX model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qatie.model.checkpoint import model_from_checkpoint, model_from_qat_checkpoint, read_checkpoint, save_checkpoint
from qatie.config import QATConfig
from qatie.errors import CheckpointError
from qatie.quantize.ptq import calibration_images
from qatie.model.quant import calibrate, current_ranges, prepare_qat, quant_state
from qatie.train.loop import TrainConfig, train


def run_qat(checkpoint, out, config: QATConfig | None = None, resume: bool = False, run_dir=None, teacher=None,
            progress: Optional[Callable[[dict], None]] = None, should_stop: Optional[Callable[[], bool]] = None,
            **options) -> Path:
    """Fine-tune with fake quantization; writes `out` (the final QAT checkpoint) and a run
    folder beside it (`<out stem>_run/`: last.pt, best.pt, train_log.jsonl).

    Data mix (whole-photo crops, degradation) and loss are the FP32 model's own, so QAT sees what
    the model was trained on. `distill` > 0 also matches the frozen FP32 model's output (1: only
    that): QAT then spends its steps on agreeing with full precision rather than refitting.

    `checkpoint` may also be a finished QAT checkpoint: training continues from its weights and
    ranges (no calibration), distilled from its FP32 source (`teacher`, default the path it
    records); the result counts all steps, both runs'.

    `config` (`QATConfig`; default the shipped recipe) says how; `options` override its fields."""
    cfg_q = QATConfig.resolve(config, **options)
    steps, lr, learnable, distill, seed = cfg_q.steps, cfg_q.lr, cfg_q.learnable, cfg_q.distill, cfg_q.seed
    num_calib, calib_method = cfg_q.num_calib, cfg_q.calib_method
    out = Path(out)
    ckpt = read_checkpoint(checkpoint)
    kind = ckpt.get("kind", "fp32")
    data = list(cfg_q.data)
    if kind == "qat":  # continue a finished QAT: its weights and ranges, no new calibration
        model = model_from_qat_checkpoint(ckpt, str(checkpoint))
        was = bool(ckpt["quant"].get("learnable"))
        if learnable != was:
            raise CheckpointError(f"{checkpoint}: its ranges are {'learned' if was else 'moving averages'}; "
                                  f"continue it {'with' if was else 'without'} --learnable")
        teacher_path = teacher or ckpt.get("source_checkpoint")
        fp32_ckpt = read_checkpoint(teacher_path) if teacher_path else None
        if fp32_ckpt is None or fp32_ckpt.get("kind", "fp32") != "fp32":
            raise CheckpointError(f"{checkpoint}: continuing QAT needs its FP32 checkpoint (give --teacher)")
        source, done = str(teacher_path), int(ckpt.get("steps") or 0)
        calib = {**(ckpt.get("calib") or {}), "continued_from": Path(str(checkpoint)).name, "steps_before": done}
    elif kind == "fp32":
        model = model_from_checkpoint(ckpt, str(checkpoint)).eval()
        fp32_ckpt, source, done = ckpt, str(checkpoint), 0
        ranges = calibrate(model, calibration_images(data[0], num_calib, seed), calib_method)
        prepare_qat(model, ranges, learnable=learnable)
        calib = {"method": calib_method, "num_calib": num_calib, "data": data[0]}
    else:
        raise CheckpointError(f"{checkpoint}: QAT starts from an FP32 or a QAT checkpoint (this one is {kind!r})")
    teacher_model = model_from_checkpoint(fp32_ckpt, source).eval() if distill else None
    fp32_cfg = fp32_ckpt.get("config", {})
    cfg = TrainConfig(data=data, width=model.width, variant=model.variant, steps=steps, batch_size=cfg_q.batch_size,
                      patch=cfg_q.patch, lr=lr, min_lr=lr / 10, warmup_steps=min(50, steps // 10), seed=seed,
                      loss=fp32_cfg.get("loss", "paper"), global_crops=fp32_cfg.get("global_crops", 0.0),
                      degradation=fp32_cfg.get("degradation", {}), distill=distill,
                      val_every=min(cfg_q.val_every, steps), checkpoint_every=min(cfg_q.val_every, steps),
                      val_data=list(cfg_q.val_data), val_limit=cfg_q.val_limit, threads=cfg_q.threads)
    run_dir = Path(run_dir) if run_dir else out.with_name(out.stem + "_run")
    summary = train(cfg, run_dir, resume=resume, model=model, kind="qat", extra_state=lambda: quant_state(model),
                    teacher=teacher_model, progress=progress, should_stop=should_stop)
    model = model.cpu().eval()
    save_checkpoint(out, model, kind="qat", quant=quant_state(model), config=cfg.to_dict(),
                    source_checkpoint=source, steps=done + summary["steps_done"], wall_s=summary["wall_s"],
                    calib=calib, learnable=learnable, distill=distill, recipe=cfg_q.to_dict())
    return out


def export_checkpoint(checkpoint, out) -> Path:
    """`qatie export`: an FP32 checkpoint → FP32 ONNX; a QAT checkpoint → INT8 ONNX (+ sidecar)
    with the ranges it learned."""
    from qatie.export.to_onnx import export_fp32, export_int8

    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("kind") == "qat":
        model = model_from_qat_checkpoint(ckpt, str(checkpoint))
        meta = {"checkpoint": str(checkpoint), "steps": ckpt.get("steps"), "learnable": ckpt.get("learnable")}
        return export_int8(model, current_ranges(model), out, source="qat", meta=meta)
    return export_fp32(model_from_checkpoint(ckpt, str(checkpoint)), out)
