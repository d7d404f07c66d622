"""Checkpoints: plain state dicts plus JSON-able metadata, written atomically, read with
`torch.load(weights_only=True)` so loading never unpickles code."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import CheckpointError
from .model import QATIENet, build_model
from .provenance import current_command

FORMAT = "qatie-checkpoint-v1"


def save_checkpoint(path, model: QATIENet, kind: str = "fp32", **extra) -> Path:
    """Write {format, kind, model, state_dict, **extra} to `path` via a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "kind": kind,
        "model": {"width": model.width, "variant": model.variant},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "command": current_command(),
        **extra,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path) -> dict:
    """Load and validate a checkpoint file; CheckpointError with the reason if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, truncation, unsafe globals
        raise CheckpointError(f"{path}: not a readable qatie checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a qatie checkpoint (missing format marker {FORMAT!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict, label: str = "checkpoint") -> QATIENet:
    """Build the network the checkpoint describes and load its FP32 weights (strictly)."""
    spec = ckpt.get("model", {})
    try:
        model = build_model(int(spec["width"]), spec.get("variant", "full"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{label}: bad model description {spec!r} ({e})") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{label}: weights do not fit a width-{spec.get('width')} "
                              f"{spec.get('variant', 'full')} network ({str(e).splitlines()[0][:200]})") from None
    return model


def load_model(path) -> QATIENet:
    """FP32 network from an FP32 or QAT checkpoint (a QAT checkpoint comes back with its fake
    quantizers armed, i.e. simulating the INT8 model)."""
    ckpt = read_checkpoint(path)
    if ckpt.get("kind") == "qat":
        from .quant import model_from_qat_checkpoint

        return model_from_qat_checkpoint(ckpt, str(path))
    return model_from_checkpoint(ckpt, str(path)).eval()


def release_copy(src, dst) -> Path:
    """Copy a training checkpoint without its optimizer state and history (what gets shipped)."""
    ckpt = read_checkpoint(src)
    for key in ("optimizer", "history"):
        ckpt.pop(key, None)
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, dst)
    return dst
