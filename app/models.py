"""Model sets (FP32 + PTQ-INT8 + QAT-INT8) and their ONNX Runtime sessions. No torch here.

A *model set* is three ONNX files. The shipped set (`checkpoints/`) is always offered; sets
trained in the Train tab live in that browser session's `gr.State` as plain dicts
`{key: {"label": str, "paths": {role: path}}}` and are resolved here; single files can also be
uploaded to replace one role. Sessions come from `qatie.runtime.get_enhancer` (one per file per
process, shared by every user); uploaded files get a small LRU of their own, keyed by content,
so a stream of uploads cannot grow memory without bound.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qatie import runtime as rt
from qatie.errors import ModelFileError
from qatie.report import sha256

from . import config

log = logging.getLogger("qatie.app")

ROLES = ("fp32", "ptq", "qat")
ROLE_LABELS = {"fp32": "FP32", "ptq": "PTQ-INT8", "qat": "QAT-INT8"}
SHIPPED_KEY = "shipped"


@dataclass
class ModelSet:
    key: str
    label: str
    paths: dict[str, Path]
    sources: dict[str, str] = field(default_factory=dict)  # role → "shipped" / "session" / "upload"

    def signature(self) -> str:
        """Changes whenever any file changes (used to key cached example results)."""
        parts = []
        for role in ROLES:
            p = self.paths[role]
            try:
                st = p.stat()
                parts.append(f"{role}:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{role}:{p}:missing")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def shipped_paths() -> dict[str, Path]:
    return {role: rt.REPO_ROOT / rel for role, rel in rt.SHIPPED_MODELS.items()}


def shipped_set() -> ModelSet:
    return ModelSet(SHIPPED_KEY, "Shipped models (checkpoints/)", shipped_paths(), {r: "shipped" for r in ROLES})


def shipped_missing() -> list[str]:
    """Shipped model files that do not exist (empty when all three are there)."""
    return [str(p.relative_to(rt.REPO_ROOT)) for p in shipped_paths().values() if not p.is_file()]


def choices(session_sets: dict | None) -> list[tuple[str, str]]:
    """Dropdown choices (label, key): the shipped set, then this session's trained sets."""
    out = [(shipped_set().label, SHIPPED_KEY)]
    for key, entry in (session_sets or {}).items():
        out.append((entry["label"], key))
    return out


def resolve_set(key: str | None, session_sets: dict | None) -> ModelSet:
    key = key or SHIPPED_KEY
    if key == SHIPPED_KEY:
        missing = shipped_missing()
        if missing:
            raise ModelFileError(
                "the shipped models are not in this copy of the app (missing: " + ", ".join(missing)
                + "). Train a set in the Train tab, or upload three .onnx files under 'Use your own models'."
            )
        return shipped_set()
    entry = (session_sets or {}).get(key)
    if entry is None:
        raise ModelFileError(
            f"unknown model set {key!r}: choose the shipped models or a set trained in this browser session "
            "(trained sets live only as long as the session that made them)"
        )
    paths = {role: Path(entry["paths"][role]) for role in ROLES}
    for role, p in paths.items():
        if not p.is_file():
            raise ModelFileError(f"the {ROLE_LABELS[role]} model of {entry['label']!r} is gone ({p}); train it again")
    return ModelSet(key, entry["label"], paths, {r: "session" for r in ROLES})


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------

_UPLOADED: "OrderedDict[str, rt.OnnxEnhancer]" = OrderedDict()
_UPLOADED_LOCK = threading.Lock()
_UPLOADED_MAX = 9  # three sets


_file_sha = sha256  # one file-hash helper (qatie.report, also used for the manifest)


def clean_model_error(msg: str, path: Path) -> str:
    """The runtime's message without the upload's temporary path and ORT's C++ source locations."""
    msg = msg.replace(f"ONNX model {path} ", "").replace(str(path), "the file")
    msg = re.sub(r"\s*/onnxruntime_src/\S+", "", msg)
    msg = re.sub(r"\s*onnxruntime::\S.*?(?=\)$|$)", "", msg)
    return msg


def uploaded_enhancer(path: str | Path, label: str) -> rt.OnnxEnhancer:
    """Load a user-uploaded .onnx file (ModelFileError with a clear message if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{label}: the uploaded file is missing")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{label}: the uploaded model file is empty")
    key = f"{_file_sha(path)}:{config.THREADS}"
    with _UPLOADED_LOCK:
        enh = _UPLOADED.get(key)
        if enh is not None:
            _UPLOADED.move_to_end(key)
            return enh
    try:
        enh = rt.OnnxEnhancer(path, threads=config.THREADS)
    except ModelFileError as exc:
        raise ModelFileError(f"{label}: {clean_model_error(str(exc), path)}") from None
    with _UPLOADED_LOCK:
        _UPLOADED[key] = enh
        while len(_UPLOADED) > _UPLOADED_MAX:
            _UPLOADED.popitem(last=False)
    return enh


def enhancers(model_set: ModelSet, overrides: dict[str, tuple[str, str]] | None = None) -> dict[str, rt.OnnxEnhancer]:
    """One shared session per role; `overrides` maps role → (uploaded path, original name).
    Shipped models use the runtime's process-wide cache; session-trained and uploaded files the
    bounded LRU here (they come and go with sessions)."""
    out = {}
    for role in ROLES:
        if overrides and role in overrides:
            path, name = overrides[role]
            out[role] = uploaded_enhancer(path, f"uploaded {ROLE_LABELS[role]} model {name!r}")
        elif model_set.key == SHIPPED_KEY:
            out[role] = rt.get_enhancer(model_set.paths[role], threads=config.THREADS)
        else:
            out[role] = uploaded_enhancer(model_set.paths[role], f"{ROLE_LABELS[role]} model of {model_set.label!r}")
    return out


def file_mb(enhancer: rt.OnnxEnhancer) -> float:
    return enhancer.size_bytes / 1e6


def sidecar(path: Path) -> dict | None:
    """The INT8 model's QuantSpec sidecar (`<model>.json`), if present and readable."""
    side = Path(path).with_suffix(".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Warm-up: sessions are created once, in the background, so the page is up at once
# --------------------------------------------------------------------------------------------

WARM = threading.Event()
_warm_started = threading.Lock()
_warm_state = {"started": False, "seconds": None, "error": None}


def _warm_up(size: tuple[int, int]) -> None:
    t0 = time.perf_counter()
    try:
        if shipped_missing():
            return
        x = np.random.default_rng(0).random((*size, 3), dtype=np.float32)
        for role in ROLES:
            enh = rt.get_enhancer(shipped_paths()[role], threads=config.THREADS)
            enh.enhance(x[:64, :64])
        # One pass at about a megapixel grows ORT's arena to working size, so the first user's
        # photo is timed on a warm session, not on memory allocation.
        for role in ROLES:
            rt.get_enhancer(shipped_paths()[role], threads=config.THREADS).enhance(x)
    except Exception as exc:  # never kill the app: compare will report the real error
        _warm_state["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("warm-up failed: %s", _warm_state["error"])
    finally:
        _warm_state["seconds"] = round(time.perf_counter() - t0, 2)
        WARM.set()


def start_warm_up(size: tuple[int, int] = (768, 1024)) -> None:
    """Load the shipped sessions and run them once, in a daemon thread (idempotent)."""
    with _warm_started:
        if _warm_state["started"]:
            return
        _warm_state["started"] = True
    threading.Thread(target=_warm_up, args=(size,), name="qatie-warm-up", daemon=True).start()


def wait_warm(timeout: float = 60.0) -> None:
    """Block until warm-up is done (it is only waited on by the first compare)."""
    if _warm_state["started"]:
        WARM.wait(timeout)


def warm_state() -> dict:
    return dict(_warm_state)
