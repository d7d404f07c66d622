"""Charts of the analysis: SQNR per tensor, one tensor's histogram against its INT8 grids, and
the mixed-precision trade-off. matplotlib's object API only (no pyplot state shared between
the app's sessions)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from qatie.export.sidecar import STAGE_NAMES
from qatie.analysis.sqnr import sqnr_keys, worst_layers

COLORS = {"ptq": "#e4812f", "qat": "#3a78b5"}
_EXTRA_COLORS = ("#55a868", "#8172b3", "#937860", "#da8bc3")


def _color(label: str, i: int) -> str:
    return COLORS.get(label, _EXTRA_COLORS[i % len(_EXTRA_COLORS)])


def _short(name: str) -> str:
    return name.replace(".q.", ".").replace(".q_", ".")


SQNR_PLOT_CAP = 60.0  # dB: taller bars (e.g. the exact input) are cut here and labelled


def plot_sqnr(rows_or_result, worst: int = 5, title: str | None = None, labels: Sequence[str] | None = None,
              show_range: bool = True):
    """Bar chart of SQNR per quantized tensor: each INT8 model side by side, tensors grouped by
    network stage (shaded bands, labelled), the `worst` lowest per model outlined in red and
    named. Bars over `SQNR_PLOT_CAP` are cut and labelled; infinite SQNR (identical to FP32)
    gets no bar, a '∞' mark instead. `show_range` adds each tensor's range-only SQNR as a short
    dark tick (where the tick is far above the bar, the error came from upstream). → Figure."""
    from matplotlib.figure import Figure

    rows = rows_or_result["layers"] if isinstance(rows_or_result, dict) else rows_or_result
    labels = list(labels or sqnr_keys(rows))
    fig = Figure(figsize=(max(10.0, 0.17 * len(rows) + 2), 5.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    n = max(1, len(labels))
    width = 0.8 / n
    xs = np.arange(len(rows))
    finite = [r.get(f"{key}_{lab}_db") for r in rows for lab in labels for key in ("sqnr", "range_sqnr")]
    finite = [min(v, SQNR_PLOT_CAP) for v in finite if v is not None and math.isfinite(v)]
    top = (max(finite) if finite else 40.0) + 8
    bottom = min(0.0, min(finite) - 2) if finite else 0.0
    start = 0
    for i in range(1, len(rows) + 1):  # stage bands
        if i == len(rows) or rows[i]["stage"] != rows[start]["stage"]:
            k = STAGE_NAMES.index(rows[start]["stage"]) if rows[start]["stage"] in STAGE_NAMES else 0
            if k % 2 == 0:
                ax.axvspan(start - 0.5, i - 0.5, color="0.93", zorder=0)
            ax.text((start + i - 1) / 2, top - 0.5, rows[start]["stage"], ha="center", va="top", fontsize=7,
                    color="0.3", rotation=0 if i - start > 6 else 90)
            start = i
    worst_all: set[str] = set()
    for j, lab in enumerate(labels):
        col = f"sqnr_{lab}_db"
        vals = np.array([r.get(col) if r.get(col) is not None else np.nan for r in rows], dtype=float)
        fin = np.isfinite(vals)
        shown = np.minimum(vals, SQNR_PLOT_CAP)
        pos = xs - 0.4 + width * (j + 0.5)
        bad = set(worst_layers(rows, lab, worst))
        edge = ["#c00000" if r["name"] in bad else "none" for r in rows]
        ax.bar(pos[fin], (shown - bottom)[fin], width, bottom=bottom, color=_color(lab, j),
               edgecolor=[e for e, f in zip(edge, fin) if f], linewidth=1.4, label=lab.upper(), zorder=2)
        for x, v in zip(pos[fin], vals[fin]):
            if v > SQNR_PLOT_CAP:
                ax.text(x, SQNR_PLOT_CAP, f"{v:.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
        for x in pos[np.isposinf(vals)]:
            ax.text(x, bottom + 0.5, "∞", ha="center", va="bottom", fontsize=7, color=_color(lab, j))
        if show_range:
            rv = np.array([r.get(f"range_sqnr_{lab}_db") if r.get(f"range_sqnr_{lab}_db") is not None else np.nan
                           for r in rows], dtype=float)
            ok = np.isfinite(rv)
            ax.scatter(pos[ok], np.minimum(rv, SQNR_PLOT_CAP)[ok], marker="_", s=28, linewidths=1.5, color="0.15",
                       zorder=3, label="range only" if j == 0 else None)
        worst_all.update(bad)
    for i, r in enumerate(rows):  # name each highlighted tensor once, above its tallest bar
        if r["name"] in worst_all:
            vals = [r.get(f"sqnr_{lab}_db") for lab in labels]
            vals = [min(v, SQNR_PLOT_CAP) for v in vals if v is not None and math.isfinite(v)]
            if vals:
                ax.annotate(_short(r["name"]), (i, max(vals)), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6.5, color="#c00000", rotation=90)
    if len(rows) <= 40:
        ax.set_xticks(xs)
        ax.set_xticklabels([_short(r["name"]) for r in rows], rotation=90, fontsize=6)
    else:  # a hundred names at 6 pt cannot be read: numbers in network order, the worst named above
        step = 10
        ax.set_xticks(xs[::step])
        ax.set_xticklabels([str(i) for i in xs[::step]], fontsize=8)
        ax.set_xlabel("tensor number, in network order (stages shaded; the lowest named above their bars)", fontsize=8)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_ylim(bottom, top)
    ax.set_ylabel("SQNR vs FP32 (dB, higher = closer)")
    ax.grid(axis="y", alpha=0.3, zorder=1)
    ax.legend(loc="lower left", fontsize=8, ncol=n + 1, title=f"red outline: {worst} lowest", title_fontsize=7)
    ax.set_title(title or "Quantization noise per tensor on this image (INT8 vs FP32)", fontsize=10)
    return fig



def plot_histogram(hist: dict, title: str | None = None):
    """Draw `activation_histogram`'s result: the FP32 value histogram (log count) with each
    INT8 model's quantization grid [min, max] as a shaded span and its step in the legend;
    values outside a range (clipped) show past its edges. → Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    edges = np.asarray(hist["edges"])
    counts = np.asarray(hist["counts"], dtype=float)
    ax.stairs(np.where(counts > 0, counts, np.nan), edges, fill=True, color="0.45", alpha=0.8, label="FP32 values")
    ax.set_yscale("log")
    ymax = max(1.0, counts.max()) * 3
    for i, r in enumerate(hist["ranges"]):
        c = _color(r["label"], i)
        ax.axvspan(r["grid_min"], r["grid_max"], color=c, alpha=0.12, zorder=0)
        clip = r["clipped_low"] + r["clipped_high"]
        lab = (f"{r['label'].upper()}: [{r['grid_min']:.3g}, {r['grid_max']:.3g}], step {r['step']:.3g}, "
               f"{r['levels_used']} levels used" + (f", {100 * clip:.2g}% clipped" if clip else ""))
        for x in (r["grid_min"], r["grid_max"]):
            ax.axvline(x, color=c, lw=1.6, ls="-" if i == 0 else "--", label=lab if x == r["grid_min"] else None)
    v = hist["values"]
    ax.axvline(v["p0.01"], color="0.2", lw=0.8, ls=":")
    ax.axvline(v["p99.99"], color="0.2", lw=0.8, ls=":", label="FP32 0.01 / 99.99 percentiles")
    ax.set_ylim(0.8, ymax)
    ax.set_xlabel(f"{hist['name']} value (FP32, this image: {v['count']:,} values)")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or f"{hist['name']} — {hist['stage']}: where the INT8 grid sits", fontsize=10)
    return fig


def plot_trade_off(rows: list[dict], title: str | None = None):
    """PSNR vs FP32 (y) against latency (x) for each K, annotated; FP32's latency as a dashed
    line. → Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    pts = [r for r in rows if r["K"] is not None and math.isfinite(r["psnr_vs_fp32"])]
    ax.plot([r["latency_ms"] for r in pts], [r["psnr_vs_fp32"] for r in pts], "o-", color="#e4812f")
    for r in pts:
        ax.annotate(f"K={r['K']}", (r["latency_ms"], r["psnr_vs_fp32"]), xytext=(4, 4), textcoords="offset points",
                    fontsize=8)
    fp = next((r for r in rows if r["K"] is None), None)
    if fp is not None:
        ax.axvline(fp["latency_ms"], color="0.3", ls="--", lw=1)
        ax.annotate("FP32", (fp["latency_ms"], ax.get_ylim()[0]), xytext=(3, 4), textcoords="offset points",
                    fontsize=8, color="0.3")
    ax.set_xlabel("latency (ms, median, this machine)")
    ax.set_ylabel("PSNR vs FP32 output (dB)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Mixed precision: K most sensitive convs kept float", fontsize=10)
    return fig
