"""The Benchmark tab: latency vs resolution of FP32 / PTQ-INT8 / QAT-INT8 on this machine.

Timing goes through `qatie.runtime.bench.run_benchmark` (interleaved rounds, rotated order, the one
latency helper) one resolution at a time, so the plot fills in as it runs. No torch.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from qatie.runtime import bench

from app import config, models, outputs, render
from app.boundary import guard
from app.boundary import slots
from app.compare.handlers import user_error

SIZES = {
    "256×256": (256, 256),
    "512×512": (512, 512),
    "1280×720 (720p)": (720, 1280),
    "1920×1080 (1080p)": (1080, 1920),
}
DEFAULT_SIZES = ["256×256", "512×512", "1280×720 (720p)"]
COLORS = {"fp32": "#1f77b4", "ptq": "#d62728", "qat": "#2ca02c"}


def thread_choices() -> list[int]:
    n = config.effective_cpus()
    return sorted({1, 2, 4, n} & set(range(1, n + 1))) or [1]


def _plot(rows: list[dict], threads: int, path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if len({r["mp"] for r in rows}) == 1:  # one size: a line through one point says nothing; bars do
        return _bars(fig, ax, rows, threads, path)
    for role in models.ROLES:
        rr = sorted((r for r in rows if r["role"] == role), key=lambda r: r["mp"])
        if not rr:
            continue
        x = [r["mp"] for r in rr]
        y = [r["median_ms"] for r in rr]
        lo = [r["median_ms"] - r["min_ms"] for r in rr]
        hi = [r["max_ms"] - r["median_ms"] for r in rr]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=COLORS[role], label=models.ROLE_LABELS[role])
    ax.set_xlabel("image size (megapixels)")
    ax.set_ylabel("latency, ms (median; bars: min–max)")
    ax.set_title(f"ONNX Runtime on this CPU, {threads} thread(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.canvas.draw()
    return render.save_png(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), path)


def _bars(fig, ax, rows: list[dict], threads: int, path) -> str:
    """One bar per model (median, with min–max), its milliseconds and ratio to FP32 written on it."""
    rr = [r for role in models.ROLES for r in rows if r["role"] == role]
    x = np.arange(len(rr))
    med = [r["median_ms"] for r in rr]
    err = [[r["median_ms"] - r["min_ms"] for r in rr], [r["max_ms"] - r["median_ms"] for r in rr]]
    ax.bar(x, med, yerr=err, capsize=4, color=[COLORS.get(r["role"], "#7f7f7f") for r in rr], width=0.6)
    for xi, r in zip(x, rr):
        ax.text(xi, r["median_ms"] / 2, f"{r['median_ms']:.0f} ms\n{r['ratio_to_fp32']:.2f}× FP32", ha="center",
                va="center", color="white", fontsize=10, fontweight="bold")
    ax.set_xticks(x, [models.ROLE_LABELS.get(r["role"], r["role"]) for r in rr])
    ax.set_ylabel("latency, ms (median; bars: min–max)")
    ax.set_title(f"{rr[0]['size']} — ONNX Runtime on this CPU, {threads} thread(s)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.canvas.draw()
    return render.save_png(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), path)


#: A model's min–max spread above this share of its median means the runs did not see the same
#: machine (other users, other jobs): its ratios to FP32 are then not to be trusted.
BUSY_SPREAD = 0.25


def busy_warning(rows: list[dict]) -> str:
    """A warning when the timings' min–max spread shows a busy machine (empty when they are steady)."""
    spreads = [((r["max_ms"] - r["min_ms"]) / r["median_ms"], r) for r in rows if r.get("median_ms")]
    if not spreads:
        return ""
    worst, r = max(spreads, key=lambda t: t[0])
    if worst <= BUSY_SPREAD:
        return ""
    return (f"⚠️ **This machine was busy while timing:** {models.ROLE_LABELS.get(r['role'], r['role'])} at "
            f"{r['size']} ranged from {r['min_ms']:.0f} to {r['max_ms']:.0f} ms ({100 * worst:.0f}% of its median). "
            "Other work shared the CPU, so the ratios between the models are unreliable; run again when it is "
            "quieter, or with more runs.")


COLUMNS = ["Model", "Size (H×W)", "Median ms", "Min ms", "Max ms", "× FP32", "File MB"]


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=COLUMNS)


def _table(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        out.append({"Model": models.ROLE_LABELS[r["role"]], "Size (H×W)": r["size"],
                    "Median ms": round(r["median_ms"], 1), "Min ms": round(r["min_ms"], 1),
                    "Max ms": round(r["max_ms"], 1), "× FP32": round(r["ratio_to_fp32"], 2),
                    "File MB": round(Path(r["path"]).stat().st_size / 1e6, 2)})  # 10⁶ bytes, as in Compare
    return pd.DataFrame(out, columns=COLUMNS)


def files_md(model_set: models.ModelSet) -> str:
    lines = ["| Model | File | Size (MB) | Quantized tensors |", "|---|---|---:|---:|"]
    for role in models.ROLES:
        p = model_set.paths[role]
        size = f"{p.stat().st_size / 1e6:.2f}" if p.is_file() else "missing"
        side = models.sidecar(p) if role != "fp32" else None
        nq = "—"
        if side:
            tensors, weights = side.get("tensors"), side.get("weights")
            if isinstance(tensors, (list, dict)):
                nq = f"{len(tensors)} activations" + (f", {len(weights)} weights" if isinstance(weights, (list, dict)) else "")
        lines.append(f"| {models.ROLE_LABELS[role]} | `{p.name}` | {size} | {nq} |")
    return "\n".join(lines)


def files_for(model_set, session_sets=None) -> str:
    """The file table of a model set (a message instead when it cannot be resolved)."""
    try:
        return files_md(models.resolve_set(model_set, session_sets))
    except Exception as exc:
        return f"*{exc}*"


#: The Benchmark event's outputs, by name (`app.outputs`).
BENCH_OUTPUTS = ("plot", "table", "status")


def run(model_set, session_sets=None, sizes=None, threads=2, runs=3, request: gr.Request = None):
    """Time the three models of a set at each chosen size; streams the plot, the table and a status line."""
    try:
        with slots.one_per_session(request, "A benchmark"), slots.heavy_slot(request, "The benchmark"):
            for update in _run(model_set, session_sets, sizes, threads, runs):
                yield outputs.as_slots(BENCH_OUTPUTS, update)
    except (slots.BusyError, slots.SlotWaitError) as exc:
        raise gr.Error(str(exc), title="One request at a time") from None


def _run(model_set, session_sets, sizes, threads, runs):
    try:
        model_set = models.resolve_set(model_set, session_sets)
        unknown = [s for s in (sizes or []) if s not in SIZES]
        if unknown:
            raise gr.Error(f"Unknown size(s) {unknown}: choose from {list(SIZES)}.")
        sizes = [SIZES[s] for s in (sizes or [])]
        if not sizes:
            raise gr.Error("Pick at least one image size.")
        threads = int(threads)
        runs = int(runs)
        if threads < 1 or threads > config.effective_cpus():
            raise gr.Error(f"Threads must be between 1 and {config.effective_cpus()} on this machine.")
        if not 1 <= runs <= 10:
            raise gr.Error("Runs must be between 1 and 10.")
    except Exception as exc:
        raise user_error(exc, "setting up the benchmark") from None
    out_dir = config.work_dir("bench")
    rows: list[dict] = []
    paths = {role: str(model_set.paths[role]) for role in models.ROLES}
    role_of = {str(model_set.paths[r].resolve()): r for r in models.ROLES}
    config.prune(out_dir, 20)  # earlier plots: Gradio keeps its own copies
    deadline = guard.Deadline(config.BENCH_DEADLINE_S, "The benchmark", shrink=False)  # timed as `qatie bench`
    try:
        for i, (h, w) in enumerate(sorted(sizes, key=lambda s: s[0] * s[1])):
            yield {"status": f"Timing {w}×{h} ({i + 1}/{len(sizes)}): 1 warm-up + {runs} interleaved runs per model…"}
            try:
                with deadline.onnx():
                    res = bench.run_benchmark([paths[r] for r in models.ROLES], [(h, w)], threads=threads, runs=runs,
                                              warmup=1, measure_memory=False)
            except Exception as exc:
                raise user_error(exc, "benchmarking") from None
            for r in res["results"]:
                r = dict(r)
                r["role"] = role_of.get(str(Path(r["path"]).resolve()), r["model"])
                r["mp"] = h * w / 1e6
                rows.append(r)
            plot = _plot(rows, threads, out_dir / f"bench_{uuid.uuid4().hex[:8]}.png")
            yield {"plot": plot, "table": _table(rows), "status": f"Timed {i + 1}/{len(sizes)} sizes."}
        m = res.get("machine", {}) if rows else {}
        yield {"plot": plot, "table": _table(rows),
               "status": (f"Done: {model_set.label}, {threads} thread(s), median of {runs} run(s) after 1 warm-up, "
                          f"onnxruntime {m.get('onnxruntime', '?')}, {m.get('cpu_model') or 'CPU'} "
                          f"({config.effective_cpus()} usable cores), INT8 kernels: {m.get('int8_path', '?')}."
                          + ("\n\n" + busy_warning(rows) if busy_warning(rows) else ""))}
    finally:
        deadline.cancel()
