"""Model sets (FP32 + PTQ-INT8 + QAT-INT8) and their ONNX Runtime sessions. No torch here.

A *model set* is three ONNX files. The shipped set (`checkpoints/`) is always offered; sets
trained in the Train tab live in that browser session's `gr.State` as plain dicts
`{key: {"label": str, "paths": {role: path}}}` and are resolved here; single files can also be
uploaded to replace one role. Sessions come from `qatie.runtime.enhancer.get_enhancer` (one per file per
process, shared by every user); uploaded files get a small LRU of their own, keyed by content,
so a stream of uploads cannot grow memory without bound.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qatie.runtime import enhancer as rt
from qatie.errors import ModelFileError

from app import config

log = logging.getLogger("qatie.app")

ROLES = ("fp32", "ptq", "qat")
ROLE_LABELS = {"fp32": "FP32", "ptq": "PTQ-INT8", "qat": "QAT-INT8"}
SHIPPED_KEY = "shipped"
PAPER_KEY = "paper"
#: The built-in sets: key → (label, shipped model name per role). The paper set is the authors'
#: released network imported into QATIE (docs/paper_model.md): it visibly enhances photos, so the
#: app opens with it; the restoration set (noise, blur, JPEG) is QATIE's own.
BUILTIN_SETS = {
    PAPER_KEY: ("The paper's network (authors' weights: DPED photo enhancement)",
                {"fp32": "paper", "ptq": "paper-ptq", "qat": "paper-qat"}),
    SHIPPED_KEY: ("QATIE restoration models (noise, blur, JPEG)", {"fp32": "fp32", "ptq": "ptq", "qat": "qat"}),
}
#: What each built-in set does, in one line (the notice says which set a result shows).
BUILTIN_BLURBS = {
    PAPER_KEY: "the paper authors' network (DPED: iPhone photo → DSLR look)",
    SHIPPED_KEY: "QATIE's restoration models (noise, blur, JPEG)",
}


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


def shipped_paths(key: str = SHIPPED_KEY) -> dict[str, Path]:
    return {role: rt.REPO_ROOT / rt.SHIPPED_MODELS[name] for role, name in BUILTIN_SETS[key][1].items()}


def shipped_set(key: str = SHIPPED_KEY) -> ModelSet:
    return ModelSet(key, BUILTIN_SETS[key][0], shipped_paths(key), {r: "shipped" for r in ROLES})


def shipped_missing(key: str = SHIPPED_KEY) -> list[str]:
    """A built-in set's model files that do not exist (empty when all three are there)."""
    return [str(p.relative_to(rt.REPO_ROOT)) for p in shipped_paths(key).values() if not p.is_file()]


def default_set() -> str:
    """The set the app opens with: the paper's network when its files are there."""
    return PAPER_KEY if not shipped_missing(PAPER_KEY) else SHIPPED_KEY


def choices(session_sets: dict | None) -> list[tuple[str, str]]:
    """Dropdown choices (label, key): the built-in sets present, then this session's trained sets."""
    out = [(label, key) for key, (label, _) in BUILTIN_SETS.items() if key == SHIPPED_KEY or not shipped_missing(key)]
    for key, entry in (session_sets or {}).items():
        out.append((entry["label"], key))
    return out


def resolve_set(key: str | None, session_sets: dict | None) -> ModelSet:
    key = key or default_set()
    if key in BUILTIN_SETS:
        missing = shipped_missing(key)
        if missing:
            raise ModelFileError(
                "the shipped models are not in this copy of the app (missing: " + ", ".join(missing)
                + "). Train a set in the Train tab, or upload three .onnx files under 'Use your own models'."
            )
        return shipped_set(key)
    entry = (session_sets or {}).get(key)
    if entry is None:
        raise ModelFileError(
            f"unknown model set {key!r}: choose the shipped models or a set trained in this browser session "
            "(trained sets live only as long as the session that made them)"
        )
    paths = {role: Path(entry["paths"][role]) for role in ROLES}
    for role, p in paths.items():
        if not p.is_file():
            raise ModelFileError(f"the {ROLE_LABELS[role]} model of {entry['label']!r} is gone; train it again")
    return ModelSet(key, entry["label"], paths, {r: "session" for r in ROLES})


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------

def enhancers(model_set: ModelSet, overrides: dict[str, tuple[str, str]] | None = None) -> dict:
    """One enhancer per role; `overrides` maps role → (uploaded path, original name). Built-in
    sets use the runtime's process-wide sessions; uploaded and session-trained files run in one
    worker of the box (`app.boundary.model_check.BoxedEnhancer`), which `close_enhancers` ends."""
    from app.boundary.box import Box
    from app.boundary.model_check import boxed_enhancer

    out, box = {}, None
    try:
        for role in ROLES:
            if model_set.key in BUILTIN_SETS and not (overrides and role in overrides):
                # the repository's own files: trusted, shared, with an arena
                out[role] = rt.get_enhancer(model_set.paths[role], threads=config.THREADS)
                continue
            box = box or Box("Running the uploaded model")
            if overrides and role in overrides:
                path, name = overrides[role]
                label = f"uploaded {ROLE_LABELS[role]} model {name!r}"
            else:
                path, label = model_set.paths[role], f"{ROLE_LABELS[role]} model of {model_set.label!r}"
            out[role] = boxed_enhancer(path, label, box)
    except BaseException:
        if box is not None:
            box.close()
        raise
    return out


def close_enhancers(enhancers: dict | None) -> None:
    """End the worker of a request's uploaded models (its memory goes with it)."""
    for enh in (enhancers or {}).values():
        box = getattr(enh, "box", None)
        if box is not None:
            box.close()


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
_warm_state = {"started": False, "seconds": None, "error": None, "set": None}


def _warm_up(size: tuple[int, int]) -> None:
    t0 = time.perf_counter()
    try:
        key = default_set()  # the set the page opens with
        _warm_state["set"] = key
        if shipped_missing(key):
            return
        from app.boundary.guard import shrinking_options

        x = np.random.default_rng(0).random((*size, 3), dtype=np.float32)
        for role in ROLES:
            enh = rt.get_enhancer(shipped_paths(key)[role], threads=config.THREADS)
            enh.enhance(x[:64, :64])
        # One pass at about a megapixel (kernels prepacked, pages touched once), the arena handed
        # back afterwards as every app run does (app.boundary.guard.SHRINK).
        with rt.run_options_scope(shrinking_options()):
            for role in ROLES:
                rt.get_enhancer(shipped_paths(key)[role], threads=config.THREADS).enhance(x)
    except Exception as exc:  # never kill the app: compare will report the real error
        _warm_state["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("warm-up failed: %s", _warm_state["error"])
    finally:
        _warm_state["seconds"] = round(time.perf_counter() - t0, 2)
        WARM.set()


def start_warm_up(size: tuple[int, int] = (768, 1024)) -> None:
    """Load the default set's sessions and run them once, in a daemon thread (idempotent)."""
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


def exactness_warning(role: str, name: str, enhancer, deployed_u8: np.ndarray, image_u8: np.ndarray,
                      tiled: bool) -> str | None:
    """The notice line's warning for an uploaded INT8 model whose weights can saturate the 16-bit
    pair sums of CPUs without VNNI (every model QATIE writes is pair-safe: `qatie.model.pair_safety`);
    None for a safe one. Where this CPU's kernels do saturate, the worker runs the model once more
    on exact kernels and the warning gives how far the output shown is from its exact integer
    result, measured on this photo (`app.boundary.model_check.exactness`)."""
    note = enhancer.exactness_note(deployed_u8, image_u8, tiled)
    return f"⚠️ **Uploaded {ROLE_LABELS[role]} model {name.replace('`', '')!r}**: {note}" if note else None
