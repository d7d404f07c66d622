"""Checkpoints: plain state dicts plus JSON-able metadata, written atomically, read with
`torch.load(weights_only=True)` so loading never unpickles code."""
from __future__ import annotations

from pathlib import Path

import torch

from qatie.errors import CheckpointError
from qatie.model.network import QATIENet, build_model
from qatie.provenance import current_command
from qatie.model.quant import SPEC, load_quant_state, prepare_qat, ranges_from_state
from qatie.util import atomic_write

FORMAT = "qatie-checkpoint-v1"


def save_checkpoint(path, model: QATIENet, kind: str = "fp32", **extra) -> Path:
    """Write {format, kind, model, state_dict, **extra} to `path` via a temp file and rename."""
    payload = {
        "format": FORMAT,
        "kind": kind,
        "model": {"width": model.width, "variant": model.variant},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "command": current_command(),
        **extra,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


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


def model_from_qat_checkpoint(ckpt: dict, label: str = "checkpoint") -> QATIENet:
    """A QAT checkpoint → the armed model in eval mode (the torch simulation of its INT8 model)."""
    if "quant" not in ckpt:
        raise CheckpointError(f"{label}: a QAT checkpoint without quantization ranges")
    state = ckpt["quant"]
    version = (state.get("spec") or {}).get("version", 1)
    if version not in SPEC.compatible_versions:
        raise CheckpointError(f"{label}: made for QuantSpec version {version}, this qatie uses version {SPEC.version} "
                              "(its quantization points differ); re-run `qatie qat` from the FP32 checkpoint")
    weights = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("fake_quants.")}
    model = model_from_checkpoint({**ckpt, "state_dict": weights}, label)
    prepare_qat(model, ranges_from_state(state), learnable=bool(state.get("learnable", False)))
    load_quant_state(model, state)
    return model.eval()


def load_model(path) -> QATIENet:
    """FP32 network from an FP32 or QAT checkpoint (a QAT checkpoint comes back with its fake
    quantizers armed, i.e. simulating the INT8 model)."""
    ckpt = read_checkpoint(path)
    if ckpt.get("kind") == "qat":
        return model_from_qat_checkpoint(ckpt, str(path))
    return model_from_checkpoint(ckpt, str(path)).eval()


def release_copy(src, dst) -> Path:
    """Copy a training checkpoint without its optimizer state and history (what gets shipped)."""
    ckpt = read_checkpoint(src)
    for key in ("optimizer", "history"):
        ckpt.pop(key, None)
    return atomic_write(dst, lambda tmp: torch.save(ckpt, tmp))
