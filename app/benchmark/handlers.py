"""The Benchmark tab: latency vs resolution of FP32 / PTQ-INT8 / QAT-INT8 on this machine.

Timing goes through `qatie.runtime.bench.run_benchmark` (interleaved rounds, rotated order, the one
latency helper) one resolution at a time, so the plot fills in as it runs. Where `ai-edge-litert`
is installed, each INT8 model's LiteRT export (QATIE's own scales, written once per size into the
cache folder) is timed in the same rounds: rows "… on LiteRT". No torch.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from qatie.runtime import bench

from app import config, models, outputs, render
from app.boundary import guard
from app.compare.litert import available as litert_available  # LiteRT rows can be timed
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
LITERT_SUFFIX = " on LiteRT"
log = logging.getLogger("qatie.app")


def row_name(r: dict) -> str:
    """A result row's model as the table and plot name it: "PTQ-INT8", "PTQ-INT8 on LiteRT"."""
    name = models.ROLE_LABELS.get(r["role"], r["role"])
    return name + LITERT_SUFFIX if r.get("kind") == "litert" else name


def _series(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """(role, name, on LiteRT) of each model timed, in the table's order: the three, then the INT8 ones on LiteRT."""
    seen = {(r["role"], r.get("kind") == "litert") for r in rows}
    return [(role, models.ROLE_LABELS[role] + (LITERT_SUFFIX if lite else ""), lite)
            for lite in (False, True) for role in models.ROLES if (role, lite) in seen]


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
    for role, name, lite in _series(rows):
        rr = sorted((r for r in rows if row_name(r) == name), key=lambda r: r["mp"])
        x = [r["mp"] for r in rr]
        y = [r["median_ms"] for r in rr]
        lo = [r["median_ms"] - r["min_ms"] for r in rr]
        hi = [r["max_ms"] - r["median_ms"] for r in rr]
        ax.errorbar(x, y, yerr=[lo, hi], marker="s" if lite else "o", linestyle="--" if lite else "-", capsize=3,
                     color=COLORS[role], label=name)
    ax.set_xlabel("image size (megapixels)")
    ax.set_ylabel("latency, ms (median; bars: min–max)")
    ax.set_title(f"{_runtimes(rows)} on this CPU, {threads} thread(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.canvas.draw()
    return render.save_png(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), path)


def _bars(fig, ax, rows: list[dict], threads: int, path) -> str:
    """One bar per model (median, with min–max), its milliseconds and ratio to FP32 written on it."""
    rr = [r for _, name, _ in _series(rows) for r in rows if row_name(r) == name]
    x = np.arange(len(rr))
    med = [r["median_ms"] for r in rr]
    err = [[r["median_ms"] - r["min_ms"] for r in rr], [r["max_ms"] - r["median_ms"] for r in rr]]
    ax.bar(x, med, yerr=err, capsize=4, color=[COLORS.get(r["role"], "#7f7f7f") for r in rr], width=0.6,
           hatch=["//" if r.get("kind") == "litert" else "" for r in rr], edgecolor="white")
    for xi, r in zip(x, rr):
        ax.text(xi, r["median_ms"] / 2, f"{r['median_ms']:.0f} ms\n{r['ratio_to_fp32']:.2f}× FP32", ha="center",
                va="center", color="white", fontsize=10 if len(rr) <= 3 else 9, fontweight="bold",
                bbox={"facecolor": COLORS.get(r["role"], "#7f7f7f"), "edgecolor": "none", "pad": 1})
    ax.set_xticks(x, [row_name(r).replace(LITERT_SUFFIX, "\non LiteRT") for r in rr])
    ax.set_ylabel("latency, ms (median; bars: min–max)")
    ax.set_title(f"{rr[0]['size']} — {_runtimes(rows)} on this CPU, {threads} thread(s)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.canvas.draw()
    return render.save_png(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), path)


def _runtimes(rows: list[dict]) -> str:
    return "ONNX Runtime and LiteRT" if any(r.get("kind") == "litert" for r in rows) else "ONNX Runtime"


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
    return (f"⚠️ **This machine was busy while timing:** {row_name(r)} at "
            f"{r['size']} ranged from {r['min_ms']:.0f} to {r['max_ms']:.0f} ms ({100 * worst:.0f}% of its median). "
            "Other work shared the CPU, so the ratios between the models are unreliable; run again when it is "
            "quieter, or with more runs.")


COLUMNS = ["Model", "Size (H×W)", "Median ms", "Min ms", "Max ms", "× FP32", "File MB"]


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=COLUMNS)


def _table(rows: list[dict]) -> pd.DataFrame:
    out = []
    order = [name for _, name, _ in _series(rows)]
    for r in sorted(rows, key=lambda r: (r["mp"], order.index(row_name(r)) if row_name(r) in order else len(order))):
        out.append({"Model": row_name(r), "Size (H×W)": r["size"],
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


def run(model_set, session_sets=None, sizes=None, threads=2, runs=3, litert=True, request: gr.Request = None):
    """Time the three models of a set at each chosen size (and, with `litert` where ai-edge-litert is
    installed, the INT8 ones' LiteRT exports); streams the plot, the table and a status line."""
    try:
        with slots.one_per_session(request, "A benchmark"), slots.heavy_slot(request, "The benchmark"):
            for update in _run(model_set, session_sets, sizes, threads, runs, bool(litert) and litert_available()):
                yield outputs.as_slots(BENCH_OUTPUTS, update)
    except (slots.BusyError, slots.SlotWaitError) as exc:
        raise gr.Error(str(exc), title="One request at a time") from None


def _run(model_set, session_sets, sizes, threads, runs, litert=False):
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
    left_out = ""  # why the LiteRT rows are missing, when they could not be timed
    paths = {role: str(model_set.paths[role]) for role in models.ROLES}
    config.prune(out_dir, 20)  # earlier plots: Gradio keeps its own copies
    deadline = guard.Deadline(config.BENCH_DEADLINE_S, "The benchmark", shrink=False)  # timed as `qatie bench`
    try:
        for i, (h, w) in enumerate(sorted(sizes, key=lambda s: s[0] * s[1])):
            yield {"status": f"Timing {w}×{h} ({i + 1}/{len(sizes)}): 1 warm-up + {runs} interleaved runs per model"
                             + (" (the INT8 ones on LiteRT too)" if litert else "") + "…"}
            res, note = _time_size(paths, h, w, threads, runs, litert, deadline)
            if note:  # the other sizes are timed without LiteRT too
                litert, left_out = False, note
            rows += _rows(res, model_set, h, w)
            plot = _plot(rows, threads, out_dir / f"bench_{uuid.uuid4().hex[:8]}.png")
            yield {"plot": plot, "table": _table(rows), "status": f"Timed {i + 1}/{len(sizes)} sizes."}
        m = res.get("machine", {}) if rows else {}
        yield {"plot": plot, "table": _table(rows),
               "status": (f"Done: {model_set.label}, {threads} thread(s), median of {runs} run(s) after 1 warm-up, "
                          f"onnxruntime {m.get('onnxruntime', '?')}, {m.get('cpu_model') or 'CPU'} "
                          f"({config.effective_cpus()} usable cores), INT8 kernels: {m.get('int8_path', '?')}."
                          + (LITERT_NOTE.format(version=_litert_version())
                             if any(r["kind"] == "litert" for r in rows) else "") + left_out
                          + ("\n\n" + busy_warning(rows) if busy_warning(rows) else ""))}
    finally:
        deadline.cancel()


#: The status line's words on the LiteRT rows.
LITERT_NOTE = (" \"… on LiteRT\": each INT8 model written to LiteRT (the phone runtime) with QATIE's own scales, "
               "one file per size, run by ai-edge-litert {version} (XNNPACK) on the same threads.")


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "?"


def _time_size(paths: dict, h: int, w: int, threads: int, runs: int, litert: bool, deadline) -> tuple[dict, str]:
    """One size's `run_benchmark` result (with the LiteRT rows when asked), and a note when the
    LiteRT exports could not be written or run (the size is then timed without them)."""
    def timed(with_litert: bool) -> dict:
        with deadline.onnx():
            return bench.run_benchmark([paths[r] for r in models.ROLES], [(h, w)], threads=threads, runs=runs,
                                       warmup=1, measure_memory=False, litert=with_litert)

    try:
        try:
            return timed(litert), ""
        except guard.DeadlineError:
            raise
        except Exception as exc:
            if not litert:
                raise
            log.warning("benchmark: LiteRT rows left out: %s: %s", type(exc).__name__, exc)
            note = (f"\n\nThe LiteRT rows are left out: these models could not run on LiteRT ({type(exc).__name__}: "
                    f"{guard.public_text(str(exc))[:200]}).")
            return timed(False), note
    except Exception as exc:
        raise user_error(exc, "benchmarking") from None


def _rows(res: dict, model_set: models.ModelSet, h: int, w: int) -> list[dict]:
    """`run_benchmark`'s rows with the role each timed (a LiteRT row: the role of the model it was written from)."""
    role_of = {str(model_set.paths[r].resolve()): r for r in models.ROLES}
    onnx_role = {r["model"]: role_of.get(str(Path(r["path"]).resolve()), r["model"])
                 for r in res["results"] if r["kind"] == "onnx"}
    out = []
    for r in res["results"]:
        r = dict(r)
        if r["kind"] == "litert":
            r["role"] = onnx_role.get(r["model"].removesuffix("@litert"), r["model"])
        else:
            r["role"] = onnx_role.get(r["model"], r["model"])
        r["mp"] = h * w / 1e6
        out.append(r)
    return out
