"""INT8 sidecars (the JSON beside each INT8 .onnx: every quantized tensor's scale, zero point
and float range), the labels models get from them, and the network stage a tensor belongs to.
Torch-free: the app and the analysis read sidecars on the inference path."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

from qatie.errors import ModelFileError, QatieError

#: Network stages in forward order, and the QPoint / conv name prefixes that belong to them.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input", ("q_input",)),
    ("encoder 1 (full→½)", ("enc1",)),
    ("refine S/2", ("ref_s2",)),
    ("encoder 2", ("enc2",)),
    ("refine S/4", ("ref_s4",)),
    ("bottleneck S/8", ("q_pool", "bottleneck")),
    ("fusion S/4", ("up4", "fuse4", "ref_f4")),
    ("fusion S/2", ("up2", "fuse2", "ref_f2")),
    ("output", ("up1", "delta", "q_delta", "q_delta_phases", "q_output")),
)
STAGE_NAMES = tuple(s for s, _ in STAGES)


def stage_of(name: str) -> str:
    """Human name of the network stage of a QPoint (`ref_s2.q.t_act`) or conv (`up1.conv`)."""
    head = name.split(".", 1)[0].split("/", 1)[0]
    for stage, prefixes in STAGES:
        if head in prefixes:
            return stage
    return "other"


def sidecar_path(onnx_path) -> Path:
    """Where a model's sidecar lives: beside it, same name, `.json`."""
    return Path(onnx_path).with_suffix(".json")


def read_sidecar(model) -> dict:
    """The sidecar of an INT8 model: `model` is the .onnx path, the .json path or the dict."""
    if isinstance(model, Mapping):
        return dict(model)
    p = Path(model)
    side = p if p.suffix.lower() == ".json" else sidecar_path(p)
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{p}: no quantization sidecar {side.name} next to it (is it an INT8 qatie model?)") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{side}: unreadable quantization sidecar ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), list):
        raise ModelFileError(f"{side}: not a qatie quantization sidecar (no 'tensors' list)")
    return data


def model_label(path, sidecar: dict | None = None) -> str:
    """Short label of an INT8 model: 'ptq' / 'qat' from the sidecar's source, else the file stem."""
    src = str((sidecar or {}).get("source", ""))
    if src.startswith("ptq"):
        return "ptq"
    if src.startswith("qat"):
        return "qat"
    return re.sub(r"[^A-Za-z0-9_]+", "_", Path(path).stem).strip("_").lower() or "int8"


def labels_for(paths: Sequence, sidecars: Sequence[dict], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != len(paths):
            raise QatieError(f"{len(labels)} labels for {len(paths)} INT8 models")
        if len(set(labels)) != len(labels):
            raise QatieError(f"labels must differ: {labels}")
        return labels
    out: list[str] = []
    for p, s in zip(paths, sidecars):
        lab = model_label(p, s)
        if lab in out:  # two PTQ models: fall back to file stems, then numbering
            lab = model_label(p, None)
        base, i = lab, 2
        while lab in out:
            lab, i = f"{base}_{i}", i + 1
        out.append(lab)
    return out

