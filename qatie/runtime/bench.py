"""Latency benchmark: FP32 vs INT8 ONNX models (and the authors' TFLite model) on this CPU.

Fairness rules, because the numbers are only worth what the method is:

* Timing goes through `qatie.runtime.enhancer.measure_latency` (the one place latency is measured), one
  call per model per round.
* Rounds are interleaved: every round runs every model once, in an order rotated each round,
  so a noisy neighbour or thermal drift hits all models alike instead of whichever ran last.
* All models get the same fixed-seed, image-like input (smooth gradients + mild noise).
* Peak RSS is measured per (model, size) in a fresh subprocess that loads only that model and
  runs one image: `ru_maxrss` is a process-lifetime high-water mark, so measuring it in the
  benchmark process itself would report the largest model for every row.
* ONNX timing covers `OnnxEnhancer.run_nchw` (float32 NCHW in → pad, run, crop, clip → out).
  The TFLite reference is timed as set_tensor + invoke + get_tensor on an input already in the
  model's input type (for the int8 model that is uint8 − 128, what an app decoding 8-bit
  images does for free); its float output conversion is not timed.

No torch anywhere; onnxruntime is imported by `qatie.runtime.enhancer`, ai_edge_litert lazily.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qatie.runtime import enhancer as rt
from qatie.runtime.cpu import machine_summary
from qatie.errors import ModelFileError, QatieError
from qatie.paths import REPO_ROOT
from qatie.util import parse_size  # noqa: F401 — `bench.parse_size` for callers

REFERENCE_NAME = "reference_tflite"
_PKG_PARENT = REPO_ROOT  # the folder holding the qatie package (a worker's PYTHONPATH)


# --------------------------------------------------------------------------------------------
# Inputs and helpers
# --------------------------------------------------------------------------------------------

def make_input(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A fixed, image-like 1×3×H×W float32 array in [0,1]: smooth gradients, a soft wave, noise."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    r = 0.15 + 0.6 * yy + 0.1 * xx
    g = 0.2 + 0.5 * xx + 0.1 * yy * xx
    b = 0.5 + 0.3 * np.sin(2 * np.pi * (2.0 * xx + yy))
    img = np.empty((1, 3, height, width), dtype=np.float32)
    for c, plane in enumerate((r, g, b)):  # one float32 plane at a time: bounded memory at 12 MP
        noise = rng.standard_normal((height, width), dtype=np.float32)
        noise *= 0.03
        noise += plane
        np.clip(noise, 0.0, 1.0, out=img[0, c])
    return img


def _size_str(h: int, w: int) -> str:
    return f"{h}x{w}"


def _mb(n_bytes: int) -> float:
    return n_bytes / (1024.0 * 1024.0)


def machine_info(threads: Optional[int] = None) -> dict:
    """The machine a benchmark ran on; `cpu`, `threads` and `int8_path` (which MLAS integer
    kernels produced the INT8 numbers, `qatie.runtime.cpu`) first."""
    import onnxruntime as ort

    info = machine_summary(threads)
    info |= {
        "cpu_count": os.cpu_count(),
        "cpu_model": info["cpu"],
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


# --------------------------------------------------------------------------------------------
# The TFLite reference
# --------------------------------------------------------------------------------------------

class _TFLiteFile:
    """A TFLite model — the authors' file, or QATIE's own LiteRT export: fixed input shape, read
    from the interpreter (XNNPACK, LiteRT's default CPU kernels)."""

    def __init__(self, path: str | os.PathLike, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise QatieError(
                "timing the TFLite reference needs the ai_edge_litert package: pip install ai-edge-litert"
            ) from exc
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"TFLite reference model {p} does not exist")
        if p.stat().st_size == 0:
            raise ModelFileError(f"TFLite reference model {p} is empty (0 bytes)")
        try:
            self.interp = Interpreter(model_path=str(p), num_threads=threads)
            self.interp.allocate_tensors()
        except Exception as exc:
            raise ModelFileError(f"TFLite reference model {p} could not be loaded: {exc}") from exc
        self.path = p
        self.size_bytes = p.stat().st_size
        inp = self.interp.get_input_details()[0]
        self._in = inp
        self._out = self.interp.get_output_details()[0]
        shape = [int(s) for s in inp["shape"]]
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ModelFileError(f"TFLite reference model {p} has input shape {shape}, expected 1×H×W×3 or 1×3×H×W")
        self.nhwc = shape[3] == 3
        self.height, self.width = (shape[1], shape[2]) if self.nhwc else (shape[2], shape[3])
        self.dtype = np.dtype(inp["dtype"])

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        """Convert the shared float NCHW input to the model's input layout and type (untimed)."""
        x = x_nchw.transpose(0, 2, 3, 1) if self.nhwc else x_nchw
        if np.issubdtype(self.dtype, np.integer):
            scale, zero = self._in["quantization"]
            info = np.iinfo(self.dtype)
            q = np.round(x / scale) + zero
            x = np.clip(q, info.min, info.max)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def runner(self, x_prepared: np.ndarray) -> Callable[[], np.ndarray]:
        interp, i_idx, o_idx = self.interp, self._in["index"], self._out["index"]

        def run() -> np.ndarray:
            interp.set_tensor(i_idx, x_prepared)
            interp.invoke()
            return interp.get_tensor(o_idx)

        return run


# --------------------------------------------------------------------------------------------
# Peak memory, per (model, size), in a fresh process
# --------------------------------------------------------------------------------------------

def _probe_main(kind: str, path: str, height: int, width: int, threads: int) -> None:
    baseline = rt.peak_rss_mb()
    x = make_input(height, width)
    if kind == "onnx":
        enh = rt.OnnxEnhancer(path, threads=threads)
        enh.run_nchw(x)
    else:
        ref = _TFLiteFile(path, threads)
        ref.runner(ref.prepare(x))()
    print(json.dumps({"peak_rss_mb": rt.peak_rss_mb(), "baseline_rss_mb": baseline}))


def _probe_peak_rss(kind: str, path: Path, height: int, width: int, threads: int, timeout: float = 600.0) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PKG_PARENT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "qatie.runtime.bench", "--_probe", kind, str(path), str(height), str(width), str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"peak_rss_mb": None, "error": f"memory probe timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"peak_rss_mb": None, "error": f"memory probe failed (rc {proc.returncode}): {tail[0][:300]}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"peak_rss_mb": None, "error": f"memory probe printed no result: {proc.stdout[-200:]!r}"}


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------

def _labels(models: list[str]) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    seen: dict[str, int] = {}
    for m in models:
        path = rt.resolve_onnx(m)
        label = os.fspath(m) if os.fspath(m) in rt.SHIPPED_MODELS else path.stem
        if label in seen:
            seen[label] += 1
            label = f"{label}#{seen[label]}"
        else:
            seen[label] = 1
        out.append((label, path))
    return out


def run_benchmark(
    models: list[str],
    sizes: list[tuple[int, int]],
    threads: int = 2,
    runs: int = 5,
    warmup: int = 1,
    reference_tflite: str | None = None,
    measure_memory: bool = True,
    progress: Optional[Callable[[str], None]] = None,
    litert: bool = False,
) -> dict:
    """Time each ONNX model (path or shipped name `fp32`/`ptq`/`qat`) at each H×W size.

    Runs are interleaved round-robin across models (and the TFLite reference, at the sizes that
    match its fixed input). Returns {"machine", "threads", "runs", "warmup", "baseline",
    "reference", "timing", "results": [row, ...]} with one row per (model, size):
    model, path, size ("HxW"), kind, is_int8, median_ms, min_ms, max_ms, runs, samples_ms,
    ratio_to_fp32 (median ÷ the baseline's median at the same size; the baseline is the model
    called/stemmed "fp32", else the first), ratio_to_reference (÷ the TFLite median at that
    size, None where it did not run), file_mb, peak_rss_mb (fresh-process peak; None when
    `measure_memory` is False or the probe failed).

    `litert`: each INT8 model also runs as its LiteRT export at each size (`qatie.export.to_tflite`,
    written into the cache folder), in the same rounds: rows `<model>@litert`, kind "litert" —
    beside the authors' file at its size, the same model on the same runtime.
    """
    sizes = _checked_request(models, sizes, runs, warmup)
    say = progress or (lambda msg: None)

    labelled = _labels(models)
    enhancers = {label: rt.OnnxEnhancer(path, threads=threads) for label, path in labelled}
    labels = [label for label, _ in labelled]
    baseline = next((l for l, p in labelled if l == "fp32" or p.stem == "fp32"), labels[0])

    ref = _TFLiteFile(reference_tflite, threads) if reference_tflite else None
    machine = machine_info(threads)
    reference_info = None
    if ref is not None or litert:
        machine["ai_edge_litert"] = _litert_version()
    if ref is not None:
        reference_info = _reference_info(ref, sizes)

    rows: list[dict] = []
    for h, w in sizes:
        lite = _litert_files(labelled, enhancers, h, w, threads, say) if litert else {}
        rows += _time_size(h, w, labels, enhancers, baseline, ref, runs, warmup, say, lite)

    if measure_memory:
        for row in rows:
            _add_peak_rss(row, threads, say)

    return {
        "machine": machine,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "baseline": baseline,
        "reference": reference_info,
        "timing": (
            "interleaved rounds, order rotated each round; onnx: OnnxEnhancer.run_nchw on float32 "
            "NCHW (pad, run, crop, clip); tflite and litert: set_tensor+invoke+get_tensor on input already in "
            "the model's dtype/layout (XNNPACK); peak_rss_mb: fresh process loading one model and running "
            "one image (includes Python + runtime import baseline, see baseline_rss_mb)"
        ),
        "results": rows,
    }


def _checked_request(models, sizes, runs, warmup) -> list[tuple[int, int]]:
    """The sizes as (H, W); a clear error for an empty or impossible request."""
    if not models:
        raise QatieError("no models to benchmark: pass at least one .onnx path or a name (fp32, ptq, qat)")
    if not sizes:
        raise QatieError("no sizes to benchmark: pass at least one HxW size")
    sizes = [parse_size(s) if isinstance(s, str) else (int(s[0]), int(s[1])) for s in sizes]
    for h, w in sizes:
        if h < 1 or w < 1:
            raise QatieError(f"size {h}x{w} must be at least 1x1")
    if not isinstance(runs, int) or runs < 1:
        raise QatieError(f"runs must be an integer ≥ 1, got {runs!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise QatieError(f"warmup must be an integer ≥ 0, got {warmup!r}")
    return sizes


def _litert_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return None


def _reference_info(ref: "_TFLiteFile", sizes: list[tuple[int, int]]) -> dict:
    matched = [s for s in sizes if s == ref.size]
    info = {"path": str(ref.path), "size": _size_str(*ref.size), "input_dtype": str(ref.dtype),
            "timed_at": [_size_str(*s) for s in matched]}
    if not matched:
        info["note"] = f"not timed: its input is fixed at {_size_str(*ref.size)} (H×W) and no requested size matches"
    return info


def _litert_files(labelled, enhancers: dict, h: int, w: int, threads: int, say) -> dict[str, "_TFLiteFile"]:
    """{"<model>@litert": its LiteRT export at H×W} for each INT8 model (written once, cached)."""
    from qatie.paths import cache_dir
    from qatie.runtime.litert import litert_file

    out = {}
    for label, path in labelled:
        if enhancers[label].is_int8:
            say(f"{label}: LiteRT export at {_size_str(h, w)}")
            out[f"{label}@litert"] = _TFLiteFile(litert_file(path, h, w, cache_dir() / "litert"), threads)
    return out


def _time_size(h: int, w: int, labels: list[str], enhancers: dict, baseline: str, ref, runs: int, warmup: int,
               say, lite: dict | None = None) -> list[dict]:
    """One size: warm-up, then `runs` interleaved rounds (order rotated each round); one row per model."""
    x = make_input(h, w)
    lite = lite or {}
    entries: list[tuple[str, Callable[[], object]]] = [
        (label, (lambda e=enhancers[label]: e.run_nchw(x))) for label in labels
    ] + [(label, f.runner(f.prepare(x))) for label, f in lite.items()]
    if ref is not None and (h, w) == ref.size:
        entries.append((REFERENCE_NAME, ref.runner(ref.prepare(x))))
    samples: dict[str, list[float]] = {label: [] for label, _ in entries}
    say(f"{_size_str(h, w)}: warm-up ×{warmup}, then {runs} interleaved rounds of {len(entries)} models")
    for _ in range(warmup):
        for _, fn in entries:
            fn()
    n = len(entries)
    for r in range(runs):
        for label, fn in entries[r % n:] + entries[: r % n]:  # rotate the order every round
            samples[label].append(rt.measure_latency(fn, warmup=0, runs=1)["samples_ms"][0])
    stats = {label: rt.summarize_ms(s) for label, s in samples.items()}
    base_med = stats[baseline]["median_ms"]
    ref_med = stats[REFERENCE_NAME]["median_ms"] if REFERENCE_NAME in stats else None
    rows = []
    for label, _ in entries:
        st = stats[label]
        if label == REFERENCE_NAME:
            path, kind, is_int8, size_bytes = ref.path, "tflite", np.issubdtype(ref.dtype, np.integer), ref.size_bytes
        elif label in lite:
            path, kind, is_int8, size_bytes = lite[label].path, "litert", True, lite[label].size_bytes
        else:
            e = enhancers[label]
            path, kind, is_int8, size_bytes = e.path, "onnx", e.is_int8, e.size_bytes
        rows.append({
            "model": label, "path": str(path), "size": _size_str(h, w), "kind": kind, "is_int8": bool(is_int8),
            "median_ms": st["median_ms"], "min_ms": st["min_ms"], "max_ms": st["max_ms"], "runs": st["runs"],
            "samples_ms": st["samples_ms"], "ratio_to_fp32": st["median_ms"] / base_med,
            "ratio_to_reference": None if ref_med is None else st["median_ms"] / ref_med,
            "file_mb": _mb(size_bytes), "peak_rss_mb": None,
        })
    return rows


def _add_peak_rss(row: dict, threads: int, say) -> None:
    """The row's model loaded and run once in a fresh process: its peak RSS (and the baseline)."""
    h, w = parse_size(row["size"])
    say(f"peak RSS: {row['model']} at {row['size']} (fresh process)")
    kind = "tflite" if row["kind"] in ("tflite", "litert") else "onnx"
    probe = _probe_peak_rss(kind, Path(row["path"]), h, w, threads)
    row["peak_rss_mb"] = probe.get("peak_rss_mb")
    if probe.get("baseline_rss_mb") is not None:
        row["baseline_rss_mb"] = probe["baseline_rss_mb"]
    if probe.get("error"):
        row["peak_rss_error"] = probe["error"]


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """Plain aligned text table of a `run_benchmark` result."""
    rows = result.get("results", [])
    has_ref = any(r.get("ratio_to_reference") is not None for r in rows)
    base = result.get("baseline") or "fp32"
    header = ["model", "size", "median ms", "min ms", "max ms", f"x {base}"]
    if has_ref:
        header.append("x reference")
    header += ["file MB", "peak RSS MB"]
    body = []
    for r in rows:
        line = [
            r["model"], r["size"], _fmt(r["median_ms"], ".1f"), _fmt(r["min_ms"], ".1f"),
            _fmt(r["max_ms"], ".1f"), _fmt(r.get("ratio_to_fp32"), ".2f"),
        ]
        if has_ref:
            line.append(_fmt(r.get("ratio_to_reference"), ".2f"))
        line += [_fmt(r.get("file_mb"), ".2f"), _fmt(r.get("peak_rss_mb"), ".0f")]
        body.append(line)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    def render(cells):
        return "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(cells, widths))).rstrip()

    lines = [render(header), render(["-" * wd for wd in widths])] + [render(b) for b in body]
    m = result.get("machine", {})
    foot = (
        f"threads={result.get('threads')} runs={result.get('runs')} warmup={result.get('warmup')} "
        f"onnxruntime={m.get('onnxruntime')} cpus={m.get('cpu_count')} int8_path={m.get('int8_path')} "
        f"{m.get('cpu_model') or ''}".rstrip()
    )
    ref = result.get("reference")
    if ref and ref.get("note"):
        foot += f"\nreference: {ref['note']}"
    return "\n".join(lines) + "\n" + foot


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write a `run_benchmark` result as indented JSON (parent folders created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------
# The memory probe's entry point (`qatie bench` is the command line: qatie.cli.main)
# --------------------------------------------------------------------------------------------

if __name__ == "__main__":
    if sys.argv[1:2] != ["--_probe"] or len(sys.argv) != 7:
        sys.exit("python -m qatie.runtime.bench is the memory probe's entry point; benchmark with `qatie bench`")
    kind, path, h, w, threads = sys.argv[2:7]
    _probe_main(kind, path, int(h), int(w), int(threads))
