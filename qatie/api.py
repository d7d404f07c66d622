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

from pathlib import Path
from typing import Callable

import numpy as np

from qatie.errors import QatieError


def load(name_or_path, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """An enhancer (H×W×3 float [0,1] → the same) for a shipped name (`fp32`, `ptq`, `qat`,
    `paper`, `paper-ptq`, `paper-qat`), an `.onnx` file (ONNX Runtime) or a `.pt` checkpoint
    (torch: FP32, or a QAT checkpoint's INT8 simulation)."""
    from qatie.runtime.enhancer import load_enhancer

    return load_enhancer(name_or_path, threads=threads)


def train_fp32(config, out, resume: bool = False, progress=None) -> Path:
    """FP32 training (`qatie train`): `config` is a `TrainConfig`, a dict of its fields or a JSON
    file (of its fields, or a run recipe such as configs/restoration.json). Returns the run's best
    checkpoint."""
    from qatie.train.loop import TrainConfig, train

    if isinstance(config, (str, Path)):
        config = TrainConfig.load(config)
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


def export_tflite(model, out, size: str = "1920x1080") -> Path:
    """`qatie export --format tflite`: a shipped INT8 model name (`paper-qat`, …) or an INT8 .onnx →
    a LiteRT INT8 file with QATIE's own scales, for one input size (HEIGHTxWIDTH; docs/litert.md)."""
    from qatie.export.to_tflite import export_tflite as write

    return write(model, out, size)


def run_recipe(recipe, steps=None, say: Callable[[str], None] = print) -> dict[str, Path]:
    """`qatie run`: every step of a `RunRecipe` (or its JSON file) in order — or only `steps`
    (names from `qatie.config.RUN_STEPS`) — each writing the file the next one reads. Training
    and QAT resume from their run folders, so an interrupted run continues. Returns the files."""
    from qatie.config import RUN_STEPS, RunRecipe

    if not isinstance(recipe, RunRecipe):
        recipe = RunRecipe.load(recipe)
    wanted = list(RUN_STEPS) if steps is None else list(steps)
    unknown = [s for s in wanted if s not in RUN_STEPS]
    if unknown:
        raise QatieError(f"unknown run steps {', '.join(unknown)}: choose from {', '.join(RUN_STEPS)}")
    files = recipe.files()
    files["fp32_pt"].parent.mkdir(parents=True, exist_ok=True)
    for step, what in recipe.plan():
        if step in wanted:
            say(f"[{recipe.name}] {step}: {what}")
            _RUN_STEP[step](recipe, files)
    return files


def _run_fp32(recipe, files) -> None:
    if recipe.import_tflite:
        from qatie.paper.tflite import save_import

        save_import(recipe.import_tflite, files["fp32_pt"])
        return
    from qatie.model.checkpoint import release_copy

    best = train_fp32(recipe.train_configs()[0], recipe.work_path("fp32"), resume=True)
    release_copy(best, files["fp32_pt"])


def _run_qat(recipe, files) -> None:
    from qatie.model.checkpoint import release_copy

    last = files["fp32_pt"]
    for i, cfg in enumerate(recipe.qat_configs(), start=1):
        out = recipe.work_path(f"qat{i}").with_suffix(".pt")
        last = finetune_qat(last, out, config=cfg, resume=True, run_dir=recipe.work_path(f"qat{i}"))
    release_copy(last, files["qat_pt"])


_RUN_STEP = {
    "fp32": _run_fp32,
    "fp32_onnx": lambda recipe, files: export_onnx(files["fp32_pt"], files["fp32_onnx"]),
    "ptq": lambda recipe, files: calibrate_ptq(files["fp32_pt"], files["ptq_onnx"], config=recipe.ptq_configs()[0]),
    "qat": _run_qat,
    "qat_onnx": lambda recipe, files: export_onnx(files["qat_pt"], files["qat_onnx"]),
}
