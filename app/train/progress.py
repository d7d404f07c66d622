"""What the Train tab shows while a run goes: the one progress line (stage, step, time elapsed and
left at the measured speed) and the live loss / validation-PSNR curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: What a QAT step (fake quantization and a teacher pass) costs in FP32 steps at the Train tab's
#: defaults, on one torch thread (`python -m app.measure --qat-cost`): 2.2 on a lightly loaded 2-core AMD EPYC
#: (AVX2), 5.5 on the same machine under load (~7): the per-step overhead of fake quantization grows
#: more with load than the convolutions do. The time left before QAT starts is given as this range;
#: once QAT runs, its own measured speed.
QAT_STEP_COST_RANGE = (2.2, 5.5)
#: The budget counts a QAT step at the top of the range.
QAT_STEP_COST = QAT_STEP_COST_RANGE[1]

def plot_curves(points: list[dict], fp32_steps: int, total_steps: int, path: Path) -> str:
    """Loss (left) and validation PSNR of the model vs the unprocessed input (right), FP32 then QAT
    on one step axis (matplotlib, object API: no shared pyplot state between sessions)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from app.render import save_png

    fig = Figure(figsize=(9.6, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    colours = {"FP32": "#1f77b4", "QAT": "#2ca02c"}
    for stage, colour in colours.items():
        pts = [p for p in points if p["stage"] == stage]
        if pts:
            steps = np.array([p["step"] for p in pts])
            loss = np.array([p["loss"] for p in pts])
            ax_loss.plot(steps, loss, color=colour, alpha=0.35, lw=0.8)
            k = max(1, min(25, len(loss) // 10))  # running mean over k steps
            if len(loss) >= k > 1:
                smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
                ax_loss.plot(steps[k - 1:], smooth, color=colour, lw=1.8, label=f"{stage} (mean of {k})")
            else:
                ax_loss.plot(steps, loss, color=colour, lw=1.8, label=stage)
    series = validation_series(points)
    several = len({name for _, name in series if name}) > 1
    markers = {}
    for (stage, name), pts in series.items():
        marker = markers.setdefault(name, "os^dv"[len(markers) % 5])
        suffix = f" · {name}" if several else ""
        if stage == "input":  # drawn over the model's lines, thin, so neither hides the other
            ax_val.plot(*zip(*pts), "--", color="#7f7f7f", lw=1.2, zorder=3, label="unprocessed input" + suffix)
        else:
            ax_val.plot(*zip(*pts), marker + "-", color=colours[stage], ms=4, label=f"{stage} model" + suffix)
    for ax, title, ylabel in ((ax_loss, "Training loss", "loss"),
                              (ax_val, "Validation PSNR (dB)", "PSNR vs clean (dB)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, max(1, total_steps))
        ax.grid(alpha=0.3)
        if fp32_steps and total_steps > fp32_steps:
            ax.axvline(fp32_steps, color="#999999", lw=0.8, ls=":")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    if not points:
        ax_loss.text(0.5, 0.5, "waiting for the first step…", ha="center", va="center", transform=ax_loss.transAxes)
    fig.tight_layout()
    fig.canvas.draw()
    return save_png(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), path)


def validation_series(points: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """One line per (stage, validation set) — and per set for the unprocessed input (stage
    "input") — each in step order: points from two validation sets never join into one zigzag."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for p in points:
        for name, v in (p.get("val") or {}).items():
            out.setdefault((p["stage"], name), []).append((p["step"], v["psnr"]))
            inputs = out.setdefault(("input", name), [])
            if not inputs or inputs[-1][0] != p["step"]:
                inputs.append((p["step"], v["input_psnr"]))
    return {k: sorted(v) for k, v in out.items()}


def _mmss(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def progress_md(stage: str, latest, now: float, elapsed: float, qat_steps: int) -> str:
    """The Train tab's one progress line: stage, step i of n, time elapsed and — once two steps
    have been seen — the time left in this stage at the speed measured so far (and, during FP32,
    the QAT stage's estimate from that speed: a QAT step costs `QAT_STEP_COST_RANGE` FP32 steps)."""
    line = f"**{stage}** · {_mmss(elapsed)} elapsed"
    if latest is None:
        return line
    kind, step, steps, (first_step, t_first) = latest
    line = f"**{stage}** · step {step} of {steps} ({100 * step / max(1, steps):.0f}%) · {_mmss(elapsed)} elapsed"
    if step > first_step and now > t_first:
        rate = (step - first_step) / (now - t_first)  # steps per second
        line += f" · about {_mmss((steps - step) / rate)} left in this stage ({rate:.2f} steps/s)"
        if kind == "fp32" and qat_steps:
            lo, hi = (qat_steps * cost / rate for cost in QAT_STEP_COST_RANGE)
            line += f"; then {qat_steps} QAT steps, about {_mmss(lo)}–{_mmss(hi)}"
    return line
