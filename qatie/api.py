"""The Python API: the pipeline's stages as calls that read like the CLI (`qatie train | ptq | qat
| export | enhance`), each a thin wrapper on the stage's module, so Python, the CLI and the app
run one code path. (Their names differ from the stage modules', `qatie.train.loop` and so on, which
they would otherwise shadow.)

    import qatie
    best = qatie.train_fp32({"data": ["samples"], "width": 16, "steps": 300}, "runs/demo")
    int8 = qatie.calibrate_ptq(best, "runs/demo/ptq.onnx", method="entropy")
    qatie.export_onnx(qatie.finetune_qat(best, "runs/demo/qat.pt", steps=100), "runs/demo/qat.onnx")
    enhance = qatie.load("runs/demo/qat.onnx")     # or a shipped name: "paper-qat"
    out = enhance(photo)                            # H×W×3 float [0, 1] → the same
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from qatie.errors import QatieError


def load(name_or_path, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """An enhancer (H×W×3 float [0,1] → the same) for a shipped name (`fp32`, `ptq`, `qat`,
    `paper`, `paper-ptq`, `paper-qat`), an `.onnx` file (ONNX Runtime) or a `.pt` checkpoint
    (torch: FP32, or a QAT checkpoint's INT8 simulation)."""
    from qatie.analysis.evaluate import load_enhancer

    return load_enhancer(name_or_path, threads=threads)


def train_fp32(config, out, resume: bool = False, progress=None) -> Path:
    """FP32 training (`qatie train`): `config` is a `TrainConfig`, a dict of its fields or a JSON
    file (configs/fp32_c32.json is the shipped recipe). Returns the run's best checkpoint."""
    from qatie.train.loop import TrainConfig, train

    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise QatieError(f"train_fp32: expected a TrainConfig, a dict or a JSON file, got {type(config).__name__}")
    train(config, out, resume=resume, progress=progress)
    return Path(out) / "best.pt"


def calibrate_ptq(checkpoint, out, **options) -> Path:
    """Post-training quantization (`qatie ptq`) of an FP32 checkpoint → INT8 ONNX + sidecar.
    Options as `qatie.quantize.ptq.run_ptq` (method, calib, num_calib, percentile, seed, keep_float, …)."""
    from qatie.quantize.ptq import run_ptq

    return run_ptq(checkpoint, out, **options)


def finetune_qat(checkpoint, out, **options) -> Path:
    """Quantization-aware fine-tuning (`qatie qat`) of an FP32 checkpoint (or continuing a QAT
    one) → QAT checkpoint. Options as `qatie.quantize.qat.run_qat` (data, steps, lr, learnable, distill, …)."""
    from qatie.quantize.qat import run_qat

    return run_qat(checkpoint, out, **options)


def export_onnx(checkpoint, out) -> Path:
    """`qatie export`: an FP32 checkpoint → FP32 ONNX, a QAT checkpoint → INT8 ONNX + sidecar."""
    from qatie.quantize.qat import export_checkpoint

    return export_checkpoint(checkpoint, out)
