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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qatie import runtime as rt
from qatie.errors import ModelFileError
from qatie.util import LRU, sha256

from . import config

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

def _cost_mb(enh: rt.OnnxEnhancer) -> float:
    """Estimated resident memory of a cached session: weights (also prepacked) + runtime."""
    return 3 * enh.size_bytes / 1e6 + 8


#: Uploaded and session-trained models, least recently used dropped first, under a memory budget
#: (the one left is kept even when alone over it: it is the one being used).
_UPLOADED = LRU(max_items=64, max_bytes=config.UPLOAD_CACHE_MB, size=_cost_mb)


def clean_model_error(msg: str, path: Path) -> str:
    """The runtime's message without the upload's temporary path and ORT's C++ source locations."""
    msg = msg.replace(f"ONNX model {path} ", "").replace(str(path), "the file")
    msg = re.sub(r"\s*/onnxruntime_src/\S+", "", msg)
    msg = re.sub(r"\s*onnxruntime::\S.*?(?=\)$|$)", "", msg)
    msg = re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+[\w.+-]*", "<path>", msg)  # any other absolute path
    return msg


# --------------------------------------------------------------------------------------------
# Uploaded models are data: what they may contain, checked before ONNX Runtime sees them
# --------------------------------------------------------------------------------------------

#: Operators qatie's exporter emits (checkpoints/*.onnx and qatie/export.py, qatie/graph_opt.py),
#: plus a few element-wise or layout ops a re-export might use. Nothing that loops (Loop, Scan,
#: If) or allocates by a computed shape (ConstantOfShape, Expand, Tile, Range, Resize, …).
ALLOWED_OPS = frozenset({
    ("", op) for op in (
        "Conv", "Tanh", "Mul", "Add", "Sub", "Div", "InstanceNormalization", "LeakyRelu", "Relu", "Sigmoid",
        "Clip", "Concat", "Split", "Slice", "MaxPool", "Pad", "Transpose", "Reshape", "Unsqueeze", "Squeeze",
        "Shape", "Gather", "Constant", "Identity", "DepthToSpace", "SpaceToDepth", "Cast",
        "QuantizeLinear", "DequantizeLinear")
} | {("com.microsoft", "QLinearSigmoid")})
#: Element-wise custom ops: same output shape as their first input (for the shape check).
_ELEMENTWISE_CUSTOM = {("com.microsoft", "QLinearSigmoid")}
MAX_NODES = 4000
#: Operators that may run on constants alone (weights stored as int8 and dequantized, reshaped):
#: cheap, one pass over their input. Anything else on constants only is refused.
FOLDABLE_OK = frozenset({"DequantizeLinear", "QuantizeLinear", "Identity", "Reshape", "Transpose", "Unsqueeze",
                         "Squeeze", "Cast", "Shape", "Gather", "Slice", "Concat", "Split"})
#: At a probe size, no tensor may hold more than this many times the input's *bytes* (the shipped
#: width-32 network: 10.7× in elements, less in bytes since most are uint8), and all of them
#: together not more than this (shipped: 204×).
MAX_TENSOR_RATIO = 24.0
MAX_TOTAL_RATIO = 1024.0
#: Two probe sizes that differ in height, width and aspect: a tensor that grows faster than the
#: image in either direction (a Reshape by a computed row count, say) shows as a different ratio.
PROBE_SIZES = ((64, 96), (112, 48))
PROBE_DEADLINE_S = 10.0
#: Bytes per element of the tensor types an uploaded model may compute with (numbers only: a STRING
#: tensor's size is not bounded by its shape, ~34 bytes an element and more).
TENSOR_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _shape_ratios(model, h: int, w: int) -> tuple[float, float]:
    """(largest tensor, sum of all tensors) in bytes / the float32 input's bytes, by ONNX shape
    inference at 1×3×h×w. ModelFileError if any tensor's size cannot be worked out statically or
    its type is not a number type (`TENSOR_BYTES`)."""
    import copy

    from onnx import helper, shape_inference

    m = copy.deepcopy(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, h, w)):
        d.ClearField("dim_param")
        d.dim_value = v
    for n in m.graph.node:  # ONNX cannot infer contrib ops: element-wise ones keep their input's shape
        if (n.domain, n.op_type) in _ELEMENTWISE_CUSTOM:
            n.CopyFrom(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
    try:
        m = shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelFileError(f"its tensor shapes cannot be worked out ({type(exc).__name__})") from None
    known = {v.name: v for v in list(m.graph.value_info) + list(m.graph.output)}
    n_in = 3 * h * w * 4
    biggest = total = 0
    for node in m.graph.node:
        for out in node.output:
            v = known.get(out)
            shape = v.type.tensor_type.shape if v is not None else None
            if shape is None or not v.type.tensor_type.HasField("shape") or \
                    any(not d.HasField("dim_value") for d in shape.dim):
                raise ModelFileError(f"the size of tensor {out[:80]!r} ({node.op_type}) depends on computed values; "
                                     "qatie models have sizes that follow the input's")
            size = TENSOR_BYTES.get(v.type.tensor_type.elem_type)
            if size is None:
                raise ModelFileError(f"tensor {out[:80]!r} ({node.op_type}) is not a number type; qatie models "
                                     "compute with numbers only")
            for d in shape.dim:
                size *= max(0, d.dim_value)
            biggest, total = max(biggest, size), total + size
    return biggest / n_in, total / n_in


def check_onnx(path: Path) -> None:
    """Refuse (ModelFileError, message without the label) a file that is not a qatie-like model:
    too big, external data, subgraphs or functions, operators outside `ALLOWED_OPS`, too many
    nodes, or tensors larger than a qatie network's at the probe sizes. Runs before ORT loads it."""
    import onnx

    size = path.stat().st_size
    if size > config.MAX_MODEL_MB * 1e6:
        raise ModelFileError(f"the file is {size / 1e6:.0f} MB; models here are limited to {config.MAX_MODEL_MB:g} MB "
                             "(qatie's are about 1–4 MB)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise ModelFileError("not a readable ONNX model (the file is truncated, corrupt or another format)") from None
    g = model.graph
    if model.functions:
        raise ModelFileError("it defines ONNX functions; qatie models do not")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer):
        raise ModelFileError("it keeps weights in external data files; upload a single self-contained .onnx")
    if len(g.node) > MAX_NODES:
        raise ModelFileError(f"it has {len(g.node)} operators; qatie models have under {MAX_NODES}")
    bad = sorted({(n.domain or "") + ("." if n.domain else "") + n.op_type for n in g.node
                  if ((n.domain if n.domain != "ai.onnx" else ""), n.op_type) not in ALLOWED_OPS})
    if bad:
        raise ModelFileError("it uses operators this app does not run for uploaded models: " + ", ".join(bad[:8])
                             + ". Only what qatie's exporter emits is accepted (no loops, no shape-computed allocations)")
    for n in g.node:
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or a.ref_attr_name:
                raise ModelFileError(f"operator {n.op_type} carries a subgraph; qatie models have none")
    constant = {i.name for i in g.initializer} | {""}
    for n in g.node:  # ONNX Runtime folds these while creating the session: before any deadline
        if n.op_type != "Constant" and not (n.input and all(i in constant for i in n.input)):
            continue  # reads the image
        if n.op_type != "Constant" and n.op_type not in FOLDABLE_OK:
            raise ModelFileError(f"operator {n.op_type} computes on constants only (ONNX Runtime would run it while "
                                 "loading the model, outside any time limit); qatie models compute on the image")
        constant.update(n.output)
    if len(g.input) < 1 or len(g.input[0].type.tensor_type.shape.dim) != 4:
        raise ModelFileError("its input is not an N×3×H×W image tensor")
    ratios = [_shape_ratios(model, h, w) for h, w in PROBE_SIZES]
    (big0, tot0), (big1, tot1) = ratios
    worst = max(big0, big1)
    if worst > MAX_TENSOR_RATIO or max(tot0, tot1) > MAX_TOTAL_RATIO:
        raise ModelFileError(f"its intermediate tensors are too large (up to {worst:.0f}× the input image; "
                             f"this app runs models up to {MAX_TENSOR_RATIO:g}×)")
    if abs(big1 - big0) > 0.05 * worst + 0.5 or abs(tot1 - tot0) > 0.05 * max(tot0, tot1) + 0.5:
        raise ModelFileError(f"its intermediate tensors grow faster than the image (largest {big0:.1f}× the input at "
                             f"{PROBE_SIZES[0][1]}×{PROBE_SIZES[0][0]}, {big1:.1f}× at {PROBE_SIZES[1][1]}×"
                             f"{PROBE_SIZES[1][0]}): a large photo would make them too large")


def probe(enh: rt.OnnxEnhancer) -> None:
    """One small run with a deadline: the output must be the input's shape, 3 channels, finite."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 3, *PROBE_SIZES[1]), dtype=np.float32)
    options = ort.RunOptions()
    timer = threading.Timer(PROBE_DEADLINE_S, lambda: setattr(options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        y = enh.session.run(None, {rt.INPUT_NAME: x}, options)[0]
    except Exception as exc:
        if options.terminate:
            raise ModelFileError(f"a {x.shape[3]}×{x.shape[2]} test image took over {PROBE_DEADLINE_S:g} s") from None
        raise ModelFileError("a small test image could not be run: "
                             + clean_model_error(str(exc).strip().splitlines()[0][:300] if str(exc).strip() else
                                                 type(exc).__name__, enh.path)) from None
    finally:
        timer.cancel()
    y = np.asarray(y)
    if y.ndim != 4 or y.shape[1] != 3:
        raise ModelFileError(f"for a 1×3×{x.shape[2]}×{x.shape[3]} image it returns shape {tuple(y.shape)}; "
                             "an enhancer must return 3 channels (RGB)")
    if y.shape != x.shape:
        raise ModelFileError(f"for a {x.shape[3]}×{x.shape[2]} image it returns {y.shape[3]}×{y.shape[2]}; "
                             "an enhancer must return the input's size")
    if y.dtype.kind != "f":
        raise ModelFileError(f"its output is {y.dtype}, not float")
    if not np.isfinite(y).all():
        raise ModelFileError("its output contains NaN or infinite values")


def uploaded_enhancer(path: str | Path, label: str) -> rt.OnnxEnhancer:
    """Load a user-uploaded (or session-trained) .onnx file: checked (`check_onnx`), loaded
    without a memory arena, probed (`probe`), kept in an LRU cache under `config.UPLOAD_CACHE_MB`.
    ModelFileError with a clear message if it is not a usable model."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{label}: the uploaded file is missing")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{label}: the uploaded model file is empty")
    key = f"{sha256(path)}:{config.THREADS}"
    enh = _UPLOADED.get(key)
    if enh is not None:
        return enh
    try:
        check_onnx(path)
        enh = rt.OnnxEnhancer(path, threads=config.THREADS, arena=False)
        probe(enh)
    except ModelFileError as exc:
        raise ModelFileError(f"{label}: {clean_model_error(str(exc), path)}") from None
    _UPLOADED.put(key, enh)
    return enh


def enhancers(model_set: ModelSet, overrides: dict[str, tuple[str, str]] | None = None) -> dict[str, rt.OnnxEnhancer]:
    """One shared session per role; `overrides` maps role → (uploaded path, original name).
    Built-in sets use the runtime's process-wide cache; session-trained and uploaded files are
    checked and kept in the bounded LRU here (they come and go with sessions)."""
    out = {}
    for role in ROLES:
        if overrides and role in overrides:
            path, name = overrides[role]
            out[role] = uploaded_enhancer(path, f"uploaded {ROLE_LABELS[role]} model {name!r}")
        elif model_set.key in BUILTIN_SETS:  # the repository's own files: trusted, shared, with an arena
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
_warm_state = {"started": False, "seconds": None, "error": None, "set": None}


def _warm_up(size: tuple[int, int]) -> None:
    t0 = time.perf_counter()
    try:
        key = default_set()  # the set the page opens with
        _warm_state["set"] = key
        if shipped_missing(key):
            return
        from .guard import shrinking_options

        x = np.random.default_rng(0).random((*size, 3), dtype=np.float32)
        for role in ROLES:
            enh = rt.get_enhancer(shipped_paths(key)[role], threads=config.THREADS)
            enh.enhance(x[:64, :64])
        # One pass at about a megapixel (kernels prepacked, pages touched once), the arena handed
        # back afterwards as every app run does (app.guard.SHRINK).
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


def exactness_warning(role: str, path: str | Path, name: str, deployed_u8: np.ndarray, run) -> str | None:
    """The notice line's warning for an uploaded INT8 model whose weights can saturate the 16-bit
    pair sums of CPUs without VNNI (every model QATIE writes is pair-safe: `qatie.pair_safety`);
    None for a safe one. Where this CPU's kernels do saturate, the model is run once more on
    exact kernels (`run(enhancer)` → uint8 output, as the comparison ran it) and the warning
    gives how far the output shown is from its exact integer result, measured on this photo."""
    from qatie import int8_reference as ref
    from qatie.cpu import int8_exact, int8_path

    measured = None
    try:
        pairs = ref.saturable_pairs(path)
    except ValueError:  # a conv form the check does not model: exactness_note says so
        pairs = None
    if pairs and not int8_exact(int8_path()):
        exact_u8 = run(ref.exact_enhancer(path, config.THREADS))
        measured = ref.levels_apart(deployed_u8.astype(np.float32) / 255, exact_u8.astype(np.float32) / 255)
    note = ref.exactness_note(path, measured, pairs=pairs)
    return f"⚠️ **Uploaded {ROLE_LABELS[role]} model {name.replace('`', '')!r}**: {note}" if note else None
