"""Run exported QATIE ONNX models (FP32 or INT8 QDQ) in ONNX Runtime — without torch.

This module is the inference path of the app and the benchmark, so it must never import torch
(directly or through `qatie.model.network`). It owns:

* `session_options` — the one place ORT threading / optimisation settings are chosen;
* `OnnxEnhancer` — load a model (clear `ModelFileError` for anything wrong with the file), run
  any image size (padding via `qatie.padding`), and run huge photos tile by tile with feathered
  seams so memory stays bounded;
* `measure_latency` — the one place latency is measured;
* `peak_rss_mb` — the process's peak resident memory;
* `get_enhancer` — a thread-safe cache so each model is loaded once per process;
* `resolve_onnx` — the shipped model names (`fp32`, `ptq`, `qat`) and their files.

The ONNX graph takes `image`, float32 N×3×H×W in [0,1], with H and W multiples of 8 and ≥ 16;
the network's own padding is NOT in the graph, so every call here pads with `pad_nchw` and
crops back with `crop`.
"""
from __future__ import annotations

import collections
import math
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from qatie.errors import ModelFileError, QatieError
from qatie.padding import crop, pad_nchw
from qatie.paths import REPO_ROOT, SHIPPED_MODELS  # noqa: F401 — `rt.REPO_ROOT` / `rt.SHIPPED_MODELS` for callers

INPUT_NAME = "image"

_QUANT_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
     "MatMulInteger", "DynamicQuantizeLinear"}
)


# --------------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------------

def resolve_onnx(name_or_path: str | os.PathLike) -> Path:
    """Map a shipped name (`fp32`, `ptq`, `qat`) or a path to an existing .onnx file.

    Raises `ModelFileError` naming the file when a shipped model has not been exported yet, and
    listing the valid names when the argument is neither a shipped name nor an existing file.
    """
    text = os.fspath(name_or_path)
    if text in SHIPPED_MODELS:
        path = REPO_ROOT / SHIPPED_MODELS[text]
        if not path.is_file():
            raise ModelFileError(
                f"shipped model {text!r} is missing: {path} does not exist "
                "(export the ONNX models first, or pass the path of an .onnx file)"
            )
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelFileError(f"model file {path} is not a regular file")
    names = ", ".join(f"{k} ({v})" for k, v in SHIPPED_MODELS.items())
    raise ModelFileError(
        f"model {text!r} not found: it is neither an existing .onnx file nor a shipped model name; "
        f"valid names are {names}"
    )


def _graph_has_quant_ops(path: Path) -> bool:
    """True when the graph (or a subgraph/function) holds QuantizeLinear/DequantizeLinear-type ops."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency; fall back to a byte scan
        data = path.read_bytes()
        return any(op.encode() in data for op in ("QuantizeLinear", "DequantizeLinear"))
    model = onnx.load(str(path), load_external_data=False)

    def graph_has(graph) -> bool:
        for node in graph.node:
            if node.op_type in _QUANT_OPS:
                return True
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH and graph_has(attr.g):
                    return True
                if attr.type == onnx.AttributeProto.GRAPHS and any(graph_has(g) for g in attr.graphs):
                    return True
        return False

    return graph_has(model.graph) or any(
        node.op_type in _QUANT_OPS for f in model.functions for node in f.node
    )


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------

def session_options(threads: int = 2, optimized_model_path: str | None = None,
                    arena: bool = True) -> ort.SessionOptions:
    """ORT session options used everywhere: `threads` intra-op threads, no spinning, full opt.
    `arena=False` (untrusted or rarely used models): no memory arena and no memory pattern, so
    the memory a run took goes back when it ends instead of staying reserved by the session."""
    if not isinstance(threads, int) or threads < 1:
        raise QatieError(f"threads must be an integer ≥ 1, got {threads!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads burn the (few, shared) cores they should compute on: measured
    # faster and far less noisy on a 2-core machine with spinning off.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: no "removing unused initializer" chatter in the app
    if optimized_model_path:
        so.optimized_model_filepath = os.fspath(optimized_model_path)
    if not arena:
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    return so


#: The RunOptions `OnnxEnhancer` runs in this context use: (sessions with an arena, without one).
_RUN_OPTIONS: ContextVar[tuple | None] = ContextVar("qatie_run_options", default=None)


@contextmanager
def run_options_scope(options: ort.RunOptions, no_arena: ort.RunOptions | None = None):
    """Runs started inside this block use `options` (`no_arena` for sessions made with
    arena=False: arena settings such as shrinkage are an error there): a watchdog that sets
    `terminate` on them stops the runs (ORT then raises) — a real deadline on inference."""
    token = _RUN_OPTIONS.set((options, no_arena or options))
    try:
        yield options
    finally:
        _RUN_OPTIONS.reset(token)


def _as_image_float(image: np.ndarray, what: str = "image") -> np.ndarray:
    """H×W×3 float32 in [0,1]; uint8 is scaled by 1/255."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise QatieError(f"{what} must be an H×W×3 RGB array, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise QatieError(f"{what} is empty (shape {image.shape})")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(image.dtype, np.floating):
        raise QatieError(f"{what} must be float in [0,1] or uint8, got dtype {image.dtype}")
    return image.astype(np.float32, copy=False)


class OnnxEnhancer:
    """An exported QATIE model loaded in ONNX Runtime (CPU).

    Attributes: `path` (Path), `name` (file stem), `size_bytes`, `is_int8` (QDQ graph),
    `threads`, `session`.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 2, optimized_model_path: str | None = None,
                 arena: bool = True):
        self.path = Path(path)
        self.name = self.path.stem
        self.threads = threads
        p = self.path
        if not p.exists():
            raise ModelFileError(f"ONNX model {p} does not exist")
        if not p.is_file():
            raise ModelFileError(f"ONNX model {p} is not a regular file")
        self.size_bytes = p.stat().st_size
        if self.size_bytes == 0:
            raise ModelFileError(f"ONNX model {p} is empty (0 bytes); re-export or re-download it")
        self.arena = arena
        options = session_options(threads, optimized_model_path, arena=arena)
        try:
            self.session = ort.InferenceSession(str(p), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own pybind exception types (Fail, InvalidProtobuf, …)
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"ONNX model {p} could not be loaded — the file is truncated, corrupt or not an ONNX "
                f"model ({type(exc).__name__}: {detail[:300]})"
            ) from exc
        self._check_signature()
        try:
            self.is_int8 = _graph_has_quant_ops(p)
        except Exception as exc:  # ORT accepted it, so this is very unlikely
            raise ModelFileError(f"ONNX model {p} could not be parsed by onnx: {exc}") from exc
        self._output_name = self.session.get_outputs()[0].name

    def _check_signature(self) -> None:
        p = self.path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = [i.name for i in inputs]
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelFileError(
                f"ONNX model {p} is not a qatie model: expected one input named {INPUT_NAME!r}, "
                f"found {names}"
            )
        inp = inputs[0]
        if inp.type != "tensor(float)":
            raise ModelFileError(f"ONNX model {p} is not a qatie model: input {INPUT_NAME!r} is {inp.type}, expected tensor(float)")
        shape = inp.shape
        if shape is None or len(shape) != 4:
            raise ModelFileError(
                f"ONNX model {p} is not a qatie model: input {INPUT_NAME!r} has shape {shape}, "
                "expected rank 4 (N×3×H×W)"
            )
        if isinstance(shape[1], int) and shape[1] != 3:
            raise ModelFileError(f"ONNX model {p} is not a qatie model: input has {shape[1]} channels, expected 3")
        if not outputs or outputs[0].shape is None or len(outputs[0].shape) != 4:
            out_shape = outputs[0].shape if outputs else None
            raise ModelFileError(
                f"ONNX model {p} is not a qatie model: output shape {out_shape}, expected rank 4 (N×3×H×W)"
            )

    def __repr__(self) -> str:
        kind = {True: "int8", False: "fp32"}.get(getattr(self, "is_int8", None), "?")
        return f"OnnxEnhancer({str(self.path)!r}, {kind}, threads={self.threads})"

    # -- inference ----------------------------------------------------------------------------

    def run_nchw(self, x: np.ndarray) -> np.ndarray:
        """N×3×H×W float32 in [0,1] → same shape in [0,1]; any H, W ≥ 1 (padded and cropped)."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise QatieError(f"input must be N×3×H×W, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        padded, plan = pad_nchw(x)
        scoped = _RUN_OPTIONS.get()
        y = self.session.run([self._output_name], {INPUT_NAME: np.ascontiguousarray(padded)},
                             scoped[0 if self.arena else 1] if scoped else None)[0]
        y = np.ascontiguousarray(crop(y, plan), dtype=np.float32)  # no copy when nothing was padded
        return np.clip(y, 0.0, 1.0, out=y)  # in place: one full-size allocation and pass fewer

    def enhance(self, image: np.ndarray) -> np.ndarray:
        """One H×W×3 image (float in [0,1], or uint8) → H×W×3 float32 in [0,1], whole image at once."""
        img = _as_image_float(image)
        y = self.run_nchw(img.transpose(2, 0, 1)[None])
        return np.ascontiguousarray(y[0].transpose(1, 2, 0))

    def enhance_tiled(self, image: np.ndarray, tile: int = 512, overlap: int = 32) -> np.ndarray:
        """Enhance a large H×W×3 image tile by tile, blending seams with linear weight ramps.

        Tiles are `tile`×`tile` (smaller when the image is), spaced evenly so neighbours overlap
        by at least `overlap` pixels. In each overlap the two tiles' outputs are mixed with
        weights ramping linearly from one to the other, so there is no visible seam. Memory is
        bounded by one tile's activations plus the H×W×3 float32 output, whatever the image size.
        Images no larger than one tile run whole (identical to `enhance`).
        """
        img = _as_image_float(image)
        _check_tiling(tile, overlap)
        h, w, _ = img.shape
        if h <= tile and w <= tile:
            return self.enhance(img)
        return run_tiled(lambda t: self.run_nchw(t.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0), img, tile, overlap)


def _check_tiling(tile, overlap) -> None:
    if not isinstance(tile, int) or tile < 16:
        raise QatieError(f"tile must be an integer ≥ 16, got {tile!r}")
    if not isinstance(overlap, int) or overlap < 0 or 2 * overlap > tile:
        raise QatieError(f"overlap must be an integer in [0, tile/2] = [0, {tile // 2}], got {overlap!r}")


def run_tiled(fn: Callable[[np.ndarray], np.ndarray], img: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """`fn` (an H×W×3 tile → its H×W×3 output) over a large H×W×3 float image in overlapping
    `tile`×`tile` tiles (smaller when the image is), blended with linear ramps (`enhance_tiled`).
    Also what runs a fixed-size model, such as the authors' 100×100 TFLite one, on any photo."""
    run = TiledRun(img, tile, overlap)
    run.work(fn)
    return run.result()


class TiledRun:
    """One image's tiles, shareable between workers: each `work(fn)` call (a thread with its own
    model instance) takes tiles until none are left, and `result()` gives the blended image.
    Tiles are blended in a fixed order whoever ran them — a finished tile waits until every
    earlier one is in — so the output does not depend on how the work was shared, and memory
    stays one output plus the few tiles finished out of turn."""

    def __init__(self, img: np.ndarray, tile: int, overlap: int):
        _check_tiling(tile, overlap)
        h, w, _ = img.shape
        self.img = img
        self.ys, self.xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
        self.th, self.tw = min(tile, h), min(tile, w)
        self.wy, self.wx = _axis_weights(self.ys, self.th), _axis_weights(self.xs, self.tw)
        self.out = np.zeros((h, w, 3), dtype=np.float32)
        self.count = len(self.ys) * len(self.xs)
        self._todo = collections.deque(range(self.count))
        self._finished: dict[int, np.ndarray] = {}
        self._blended = 0
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # a tile blended, or the run cancelled
        self._cancelled = False

    def work(self, fn: Callable[[np.ndarray], np.ndarray]) -> int:
        """Run `fn` on tiles until none are left; returns how many this call ran. A tile `fn`
        raised on stays undone (`cancel` then releases whoever `wait`s)."""
        ran = 0
        while True:
            try:
                k = self._todo.popleft()
            except IndexError:
                break
            y0, x0 = self.ys[k // len(self.xs)], self.xs[k % len(self.xs)]
            res = fn(np.ascontiguousarray(self.img[y0:y0 + self.th, x0:x0 + self.tw]))  # th×tw×3
            ran += 1
            with self._lock:
                self._finished[k] = res
                self._blend_ready()
                self._settled.notify_all()
        return ran

    def wait(self) -> bool:
        """Block until every tile is blended (True) or the run was cancelled (False): what a
        worker that ran out of tiles waits for while another finishes its last one."""
        with self._settled:
            self._settled.wait_for(lambda: self._blended in (self.count, -1) or self._cancelled)
            return self._blended in (self.count, -1)

    def cancel(self) -> None:
        """Leave the tiles not yet started (workers stop after their current one)."""
        self._todo.clear()
        with self._settled:
            self._cancelled = True
            self._settled.notify_all()

    def _blend_ready(self) -> None:
        while self._blended in self._finished:
            k = self._blended
            res = self._finished.pop(k)
            i, j = divmod(k, len(self.xs))
            y0, x0 = self.ys[i], self.xs[j]
            weight = self.wy[i][:, None] * self.wx[j][None, :]
            self.out[y0:y0 + self.th, x0:x0 + self.tw] += res * weight[..., None]
            self._blended += 1

    def result(self) -> np.ndarray:
        """The blended image (once every tile is in; a second call returns the same array)."""
        if self._blended == -1:
            return self.out
        if self._blended != self.count:
            raise QatieError(f"tiled run incomplete: {self._blended} of {self.count} tiles blended")
        h, w, _ = self.out.shape
        # The weights are separable on a grid, so their sum is the outer product of the 1-D sums.
        self.out /= _axis_weight_sum(self.ys, self.wy, h)[:, None, None]
        self.out /= _axis_weight_sum(self.xs, self.wx, w)[None, :, None]
        np.clip(self.out, 0.0, 1.0, out=self.out)
        self._blended = -1
        return self.out


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length min(tile, n) covering [0, n), evenly spaced, neighbours
    overlapping by at least `overlap` pixels."""
    if n <= tile:
        return [0]
    count = math.ceil((n - overlap) / (tile - overlap))
    count = max(count, 2)
    return [round(i * (n - tile) / (count - 1)) for i in range(count)]


def _axis_weights(starts: list[int], size: int) -> list[np.ndarray]:
    """1-D blending weight of each tile: 1 inside, linear ramps over the overlap with neighbours.

    Over an overlap of length L the leading ramp is (k+1)/(L+1) and the trailing one
    (L-k)/(L+1), so two overlapping tiles' weights sum to exactly 1 there.
    """
    weights = []
    for i, s in enumerate(starts):
        wgt = np.ones(size, dtype=np.float32)
        if i > 0:
            lead = starts[i - 1] + size - s
            if lead > 0:
                wgt[:lead] = np.minimum(wgt[:lead], np.arange(1, lead + 1, dtype=np.float32) / (lead + 1))
        if i + 1 < len(starts):
            trail = s + size - starts[i + 1]
            if trail > 0:
                ramp = np.arange(trail, 0, -1, dtype=np.float32) / (trail + 1)
                wgt[size - trail:] = np.minimum(wgt[size - trail:], ramp)
        weights.append(wgt)
    return weights


def _axis_weight_sum(starts: list[int], weights: list[np.ndarray], n: int) -> np.ndarray:
    total = np.zeros(n, dtype=np.float32)
    for s, wgt in zip(starts, weights):
        total[s:s + len(wgt)] += wgt
    return total


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

_CACHE: dict[tuple[str, int, int], OnnxEnhancer] = {}
_CACHE_LOCK = threading.Lock()


def get_enhancer(path: str | os.PathLike, threads: int = 2) -> OnnxEnhancer:
    """A shared `OnnxEnhancer` for `path` (or a shipped name), created once per process.

    Keyed by (absolute path, mtime, threads): re-exporting a model file makes the next call load
    the new file (and drops the stale session). Safe to call from several threads.
    """
    resolved = resolve_onnx(path).resolve()
    try:
        mtime = resolved.stat().st_mtime_ns
    except OSError as exc:
        raise ModelFileError(f"ONNX model {resolved} cannot be read: {exc}") from exc
    key = (str(resolved), mtime, threads)
    with _CACHE_LOCK:
        enhancer = _CACHE.get(key)
        if enhancer is None:
            enhancer = OnnxEnhancer(resolved, threads=threads)
            for stale in [k for k in _CACHE if k[0] == key[0] and k[2] == threads]:
                del _CACHE[stale]
            _CACHE[key] = enhancer
        return enhancer


#: What every loaded model is to its callers: H×W×3 float32 [0, 1] → the same.
Enhancer = Callable[[np.ndarray], np.ndarray]


def load_enhancer(name_or_path: str | os.PathLike, threads: int = 2) -> Enhancer:
    """The one model loader: a `.pt`/`.pth` checkpoint (torch: FP32, or a QAT checkpoint's INT8
    simulation), an `.onnx` file or a shipped name (`fp32`, `ptq`, `qat`, `paper`, `paper-ptq`,
    `paper-qat`; ONNX Runtime, one cached session per file) → an `Enhancer`. torch is imported
    only for checkpoints. Missing or broken files raise CheckpointError / ModelFileError."""
    text = os.fspath(name_or_path)
    if text.lower().endswith((".pt", ".pth")):
        return _torch_enhancer(Path(text), threads)
    return get_enhancer(text, threads=threads).enhance


def _torch_enhancer(path: Path, threads: int) -> Enhancer:
    """A checkpoint run in torch (float32, no grad)."""
    import torch

    from qatie.model.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model(path).eval()

    def enhance(image: np.ndarray) -> np.ndarray:
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 3 or img.shape[2] != 3:
            raise QatieError(f"image must be H×W×3 RGB, got shape {img.shape}")
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            y = model(x)[0]
        return np.ascontiguousarray(y.permute(1, 2, 0).numpy(), dtype=np.float32)

    return enhance


def clear_cache() -> None:
    """Forget every cached session (tests, or to free memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------

def summarize_ms(samples_ms: list[float]) -> dict:
    """The latency summary dict for a list of per-call times in milliseconds."""
    samples = [float(s) for s in samples_ms]
    if not samples:
        raise QatieError("no latency samples to summarize")
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "runs": len(samples),
        "samples_ms": samples,
    }


def measure_latency(fn: Callable[[], object], warmup: int = 1, runs: int = 5) -> dict:
    """Call `fn` `warmup` times untimed, then `runs` times timed with `time.perf_counter`.

    Returns {median_ms, min_ms, max_ms, runs, samples_ms}. This is the one place qatie measures
    latency (the benchmark calls it with runs=1 per model per round to interleave models).
    """
    if not isinstance(warmup, int) or warmup < 0:
        raise QatieError(f"warmup must be an integer ≥ 0, got {warmup!r}")
    if not isinstance(runs, int) or runs < 1:
        raise QatieError(f"runs must be an integer ≥ 1, got {runs!r}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return summarize_ms(samples)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (2**20 bytes).

    On Linux this reads VmHWM from /proc/self/status rather than `ru_maxrss`: the kernel carries
    `ru_maxrss` across fork+exec, so a child process spawned by a big parent would report the
    parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / (1024.0 * 1024.0)


__all__ = [
    "SHIPPED_MODELS",
    "OnnxEnhancer",
    "clear_cache",
    "get_enhancer",
    "load_enhancer",
    "measure_latency",
    "peak_rss_mb",
    "resolve_onnx",
    "session_options",
    "summarize_ms",
    "tile_starts",
]
