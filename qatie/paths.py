"""Where things are: the repository root, the shipped model files, the build cache."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Shipped model names → files relative to the repository root.
SHIPPED_MODELS: dict[str, str] = {
    "fp32": "checkpoints/fp32.onnx",
    "ptq": "checkpoints/int8_ptq.onnx",
    "qat": "checkpoints/int8_qat.onnx",
    # the paper authors' network (imported from their TFLite release; docs/paper_model.md)
    "paper": "checkpoints/paper_fp32.onnx",
    "paper-ptq": "checkpoints/paper_int8_ptq.onnx",
    "paper-qat": "checkpoints/paper_int8_qat.onnx",
}


def cache_dir(cache=None) -> Path:
    """Where built models are cached: `cache`, else $QATIE_CACHE_DIR, else <tmp>/qatie-cache."""
    d = Path(cache or os.environ.get("QATIE_CACHE_DIR") or Path(tempfile.gettempdir()) / "qatie-cache")
    d.mkdir(parents=True, exist_ok=True)
    return d
