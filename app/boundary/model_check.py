"""Uploaded models are data: what they may contain, checked before ONNX Runtime sees them, and
where they run — in the box (`app.boundary.box`), never in the server process.

* `check_onnx` (a static check of the file: operators, sizes, types, constants) and `probe` (one
  small run) decide whether a file is a qatie-like enhancer. Both run inside a worker, with the
  session creation, so a file that slips past the static check (ONNX Runtime folding a huge
  constant while loading, a tensor the check under-estimates) meets the worker's memory and
  time limits, not the server's.
* `BoxedEnhancer` is what the comparison runs for such a file: the `OnnxEnhancer` interface
  (`enhance`, `enhance_tiled`) forwarded to the request's worker, which keeps the session for
  the request's later runs. Its latency is measured inside the worker.

Torch-free; a worker imports this module on its first model.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np

from qatie.runtime import enhancer as rt
from qatie.errors import ModelFileError

from app import config

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

#: Operators qatie's exporter emits (checkpoints/*.onnx and qatie/export/to_onnx.py, qatie/export/graph_opt.py),
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


# --------------------------------------------------------------------------------------------
# In the worker: sessions of uploaded files, created under the worker's limits
# --------------------------------------------------------------------------------------------

_SESSIONS: dict[str, rt.OnnxEnhancer] = {}


def _session(path: str, threads: int) -> rt.OnnxEnhancer:
    enh = _SESSIONS.get(path)
    if enh is None:
        try:
            enh = rt.OnnxEnhancer(path, threads=threads, arena=False)  # no arena: a run's memory goes back
        except ModelFileError as exc:
            raise ModelFileError(clean_model_error(str(exc), Path(path))) from None
        _SESSIONS[path] = enh
    return enh


def validate(path: str, threads: int) -> dict:
    """Worker job: static check, session, probe. Returns what the server keeps about the file."""
    check_onnx(Path(path))
    enh = _session(path, threads)
    probe(enh)
    return {"is_int8": bool(enh.is_int8), "size_bytes": int(enh.size_bytes)}


def enhance(path: str, image: np.ndarray, threads: int, tile: int | None, overlap: int) -> tuple[np.ndarray, float]:
    """Worker job: one pass (whole, or tiled when `tile`) → (H×W×3 float32 output, ms)."""
    enh = _session(path, threads)
    t0 = time.perf_counter()
    y = enh.enhance(image) if tile is None else enh.enhance_tiled(image, tile=tile, overlap=overlap)
    return y, (time.perf_counter() - t0) * 1000.0


def exactness(path: str, deployed_u8: np.ndarray, image: np.ndarray, threads: int, tile: int | None,
              overlap: int) -> str | None:
    """Worker job: `qatie.runtime.int8_reference.exactness_note` for the file, measured on this photo where
    this CPU's kernels saturate its weights (an exact-kernel run of the same input)."""
    from qatie.runtime import int8_reference as ref
    from qatie.runtime.cpu import int8_exact, int8_path
    from qatie.imageio import to_uint8

    measured = None
    try:
        pairs = ref.saturable_pairs(path)
    except ValueError:  # a conv form the check does not model: exactness_note says so
        pairs = None
    if pairs and not int8_exact(int8_path()):
        exact = ref.exact_enhancer(path, threads)
        y = exact.enhance(image) if tile is None else exact.enhance_tiled(image, tile=tile, overlap=overlap)
        measured = ref.levels_apart(deployed_u8.astype(np.float32) / 255, to_uint8(y).astype(np.float32) / 255)
    return ref.exactness_note(path, measured, pairs=pairs)


# --------------------------------------------------------------------------------------------
# In the server
# --------------------------------------------------------------------------------------------

#: Files that passed `validate`, by content hash (a few numbers each: bounded by count).
_VALID: dict[str, dict] = {}
_VALID_LOCK = threading.Lock()
MAX_VALID = 256
#: Seconds a worker may take to check, load and probe a new file (its session is created here).
VALIDATE_DEADLINE_S = 30.0


class BoxedEnhancer:
    """An uploaded model, run in a request's worker. `OnnxEnhancer`'s interface for the compare
    pipeline; `last_ms` is the last pass's time measured inside the worker."""

    arena = False

    def __init__(self, path: Path, box, info: dict, threads: int):
        self.path = Path(path)
        self.name = self.path.stem
        self.box = box
        self.threads = threads
        self.is_int8 = info["is_int8"]
        self.size_bytes = info["size_bytes"]
        self.last_ms: float | None = None

    def _seconds(self):
        from app.boundary.guard import active_deadline

        deadline = active_deadline()
        if deadline is None:
            return config.COMPARE_DEADLINE_S, None
        return deadline.remaining(), deadline.error()

    def _call(self, fn, *args):
        seconds, error = self._seconds()
        return self.box.call(fn, str(self.path), *args, seconds=seconds, timeout_error=error)

    def enhance(self, image: np.ndarray) -> np.ndarray:
        y, self.last_ms = self._call(enhance, np.asarray(image), self.threads, None, 0)
        return self._checked(y, image)

    def enhance_tiled(self, image: np.ndarray, tile: int = 512, overlap: int = 32) -> np.ndarray:
        y, self.last_ms = self._call(enhance, np.asarray(image), self.threads, int(tile), int(overlap))
        return self._checked(y, image)

    def exactness_note(self, deployed_u8: np.ndarray, image: np.ndarray, tiled: bool) -> str | None:
        tile = config.TILE if tiled else None
        return self._call(exactness, deployed_u8, image, self.threads, tile, config.TILE_OVERLAP)

    @staticmethod
    def _checked(y, image) -> np.ndarray:
        shape = np.asarray(image).shape
        if not isinstance(y, np.ndarray) or y.shape != shape or y.dtype != np.float32:
            raise ModelFileError("the uploaded model's worker returned no image of the input's size")
        return y


def boxed_enhancer(path: str | Path, label: str, box) -> BoxedEnhancer:
    """An uploaded (or session-trained) .onnx file, checked in `box`'s worker the first time its
    contents are seen (`validate`), then run there. ModelFileError with a clear message if it is
    not a usable model."""
    from qatie.util import sha256

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{label}: the uploaded file is missing")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{label}: the uploaded model file is empty")
    if path.stat().st_size > config.MAX_MODEL_MB * 1e6:
        raise ModelFileError(f"{label}: the file is {path.stat().st_size / 1e6:.0f} MB; models here are limited to "
                             f"{config.MAX_MODEL_MB:g} MB (qatie's are about 1–4 MB)")
    key = f"{sha256(path)}:{config.THREADS}"
    with _VALID_LOCK:
        info = _VALID.get(key)
    if info is None:
        from app.boundary.guard import DeadlineError

        too_slow = DeadlineError(f"{label} took over {VALIDATE_DEADLINE_S:.0f} s to check and load; models here "
                                 "must load in seconds (qatie's take well under one)")
        try:
            info = box.call(validate, str(path), config.THREADS, seconds=VALIDATE_DEADLINE_S, timeout_error=too_slow)
        except ModelFileError as exc:
            raise ModelFileError(f"{label}: {clean_model_error(str(exc), path)}") from None
        info = {"is_int8": bool(info["is_int8"]), "size_bytes": int(info["size_bytes"])}
        with _VALID_LOCK:
            if len(_VALID) >= MAX_VALID:
                _VALID.pop(next(iter(_VALID)))
            _VALID[key] = info
    return BoxedEnhancer(path, box, info, config.THREADS)
