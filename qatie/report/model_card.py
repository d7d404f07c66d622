"""The model card as text: its markdown (checkpoints/MODEL_CARD.md), its tables, its plain-language
summary, and the README results block written from the same card (`qatie report --readme`).
`qatie.report.build` measures; this module only renders what it measured."""
from __future__ import annotations

import math
from pathlib import Path

from qatie.report import paper as paper_report
from qatie.errors import QatieError

LABELS = {"input": "input (degraded)", "fp32": "FP32", "ptq": "PTQ-INT8 (minmax)", "qat": "QAT-INT8",
          "ptq_percentile": "PTQ-INT8 (percentile 99.99)", "ptq_entropy": "PTQ-INT8 (entropy)"}

def tiling_table(tiling: dict) -> str:
    lines = ["| model | tile (overlap) | photos tiled | tiled vs whole PSNR dB (mean / worst) | PSNR vs target: whole → tiled |",
             "|---|---|---|---|---|"]
    for key, rows in tiling.items():
        for tile, r in rows.items():
            if not r["images"]:
                continue
            lines.append(f"| {LABELS.get(key, key)} | {tile} ({r['overlap']}) | {r['images']} | "
                         f"{r['psnr_tiled_vs_whole']:.2f} / {r['min_psnr_tiled_vs_whole']:.2f} | "
                         f"{r['psnr_vs_target_whole']:.2f} → {r['psnr_vs_target_tiled']:.2f} |")
    return "\n".join(lines)


def _f(v, spec):
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "—" if v is None or math.isnan(v) else "∞"
    return format(v, spec)


def quality_table(res: dict) -> str:
    s = res["summary"]
    lines = ["| model | PSNR dB | SSIM | Δ PSNR vs input | agreement with FP32 (PSNR dB) | max / mean error vs FP32 (levels) | pixels > 2 levels off |",
             "|---|---|---|---|---|---|---|"]
    for key in ["input"] + res["models"]:
        row = s[key]
        ag = row.get("agreement_with_fp32")
        agree = (f"{_f(ag['psnr_vs_fp32'], '.2f')} | {ag['max_levels']:.0f} / {ag['mean_levels']:.3f} | "
                 f"{100 * ag['share_over_2_levels']:.3f} %") if ag else ("reference | — | —" if key == "fp32" else "— | — | —")
        lines.append(f"| {LABELS.get(key, key)} | {row['psnr']:.2f} | {row['ssim']:.4f} | "
                     f"{row['psnr'] - s['input']['psnr']:+.2f} | {agree} |")
    return "\n".join(lines)


def bench_table(bench: dict) -> str:
    lines = ["| model | size (H×W) | median ms | min ms | max ms | × FP32 | × reference TFLite | file MB | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in bench["results"]:
        lines.append(f"| {r['model']} | {r['size']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['max_ms']:.0f} | "
                     f"{_f(r.get('ratio_to_fp32'), '.2f')} | {_f(r.get('ratio_to_reference'), '.2f')} | "
                     f"{_f(r.get('file_mb'), '.2f')} | {_f(r.get('peak_rss_mb'), '.0f')} |")
    return "\n".join(lines)


def _tone_sections(card: dict) -> list[str]:
    parts = []
    if card.get("tone_oracle"):
        o = card["tone_oracle"]
        parts.append(f"Context for the FP32 goal: had every synthetic input's tone errors been undone perfectly (same "
                     f"noise, blur and JPEG), its PSNR would be {o['tones_undone_psnr']:.2f} dB instead of "
                     f"{o['input_psnr']:.2f} dB (**{o['gain_db']:+.2f} dB**): tone errors are most of what separates the "
                     "input from the target there. The shipped model is trained to leave tones alone (every mix with tone "
                     "errors taught it to re-grade real photos: table below), so it forgoes that share; its gains come from "
                     "noise, blur and JPEG.\n")
    if len(card.get("target_tones") or {}) > 1:
        rows = "\n".join(f"| {k} | {v['luma_p1']:.3f} | {v['luma_p99']:.3f} | {v['luma_mean']:.3f} | {v['saturation']:.3f} |"
                         for k, v in card["target_tones"].items())
        parts.append("Tones of the *targets* of each set (mean over photos). A model that learns to undo synthetic "
                     "tone errors moves photos towards the first row; where real targets sit lower (darker highlights, "
                     "less saturated), that correction re-grades correct photos:\n\n"
                     "| set | luma 1st pct | luma 99th pct | mean luma | mean saturation |\n|---|---|---|---|---|\n"
                     f"{rows}\n")
    return parts


def _goals_table(card: dict) -> str:
    return ("| set | goal | measured | met |\n|---|---|---|---|\n" +
            "\n".join(f"| {g['set']} | {g['goal']} | {g['value']} | {'yes' if g['met'] else '**no**'} |"
                       for g in card["goals"]) + "\n")


def render_markdown(card: dict, figure: Path | None) -> str:
    parts = [f"# QATIE model card\n\nGenerated {card['generated']} by `{card['command']}` "
             f"({card['wall_s']:.0f} s). Every number below comes from that command; rerun it to refresh.\n",
             "Models: `checkpoints/fp32.onnx` (FP32), `int8_ptq.onnx` (minmax post-training quantization of fp32.pt — "
             "the standard PTQ baseline), `int8_qat.onnx` (quantization-aware fine-tune of fp32.pt). All three run in "
             "ONNX Runtime; the INT8 models share one QuantSpec (int8 per-channel weights, uint8 per-tensor activations). "
             "Percentile and entropy PTQ are built on the spot with the same calibration images, for comparison.\n",
             "Scores: PSNR/SSIM against the target, and *agreement with full precision* — PSNR of each INT8 output "
             "against the FP32 output, with max/mean error in 8-bit levels — which isolates quantization error.\n"]
    for set_name, res in card["results"].items():
        parts.append(f"## {set_name}: {card['sets'][set_name]}\n\n{quality_table(res)}\n")
    parts += _tone_sections(card)
    parts.append("## Goals\n\n" + _goals_table(card))
    b = card["benchmark"]
    if card.get("tiling"):
        parts.append("## Tiling (synthetic set)\n\nLarge photos run in overlapping tiles with blended seams (bounded "
                     "memory). InstanceNorm normalises each tile with its own statistics, so tiled output differs from "
                     "whole-image output; measured here on the photos larger than one tile:\n\n"
                     f"{tiling_table(card['tiling'])}\n")
    parts.append(f"## Latency (ONNX Runtime {b.get('machine', {}).get('onnxruntime', '')}, {b.get('threads')} threads"
                 f"{machine_line(b)}, median of {b.get('runs', '')} interleaved runs after warm-up)\n\n{bench_table(b)}\n")
    if card.get("exactness"):
        parts.append(_exactness_section(card["exactness"], b))
    if card.get("paper"):
        parts.append("## The paper's network\n\n" + paper_report.paper_markdown(card["paper"]) + "\n")
    if figure:
        parts.append(f"## Where the INT8 error is\n\n![crops](../assets/{Path(figure).name})\n\nCrops where minmax PTQ "
                     "differs most from FP32; the two error maps share one colour scale (8-bit levels).\n")
    return "\n".join(parts)


def _exactness_section(rows: dict, bench: dict) -> str:
    """The INT8 models' output is the same on every CPU: the check from the weights, and the
    output against the exact integer result on the machine the card was made on."""
    body = "\n".join(f"| `{name}` | {r['saturable_pairs']:,} | {r['runtime_saturable_pairs']:,} | "
                     f"{r['max_levels_vs_exact']} (on {r['photos']} photos) |" for name, r in rows.items())
    return ("## Exact on every CPU\n\nCPUs without VNNI (AVX2, AVX-512 without VNNI) add each pair of uint8×int8 "
            "products into a saturating int16; QuantSpec v3 rounds weights *pair-safe*, so no pair can leave int16 "
            "and ONNX Runtime computes the exact integer result on every CPU. Checked from the weights alone "
            "(`qatie.runtime.int8_reference.saturable_pairs`: the file's layout; `runtime_saturable_pairs`: the graph ONNX "
            "Runtime builds), and on the output — each model against the same model on ONNX Runtime's exact "
            f"uint8-weight kernels, on the bundled example photos{machine_line(bench)}:\n\n"
            "| model | saturable weight pairs (file) | (ONNX Runtime's graph) | output vs exact, max levels |\n"
            "|---|---|---|---|\n" + body + "\n")


def machine_line(bench: dict) -> str:
    """', <CPU>, INT8 kernels: <path>' of a benchmark result (qatie.runtime.cpu): which integer kernels
    produced the INT8 numbers — AVX2 sums differ from the exact ones (qatie.runtime.int8_reference)."""
    m = bench.get("machine", {})
    if not m.get("int8_path"):
        return ""
    return f", {m.get('cpu') or m.get('cpu_model') or 'CPU'}, INT8 kernels: {m['int8_path']}"


README_BEGIN, README_END = "<!-- model-card:begin (written by qatie report --readme; do not edit) -->", "<!-- model-card:end -->"


def plain_summary(card: dict) -> str:
    """The model card's numbers in one paragraph of words (every number read from `card`)."""
    res = {k: v["summary"] for k, v in card["results"].items()}
    agree = lambda m: [s[m]["agreement_with_fp32"]["psnr_vs_fp32"] for s in res.values() if m in s]
    span = lambda v: f"{min(v):.1f}–{max(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"
    kept = lambda s, m: (s[m]["psnr"] - s["input"]["psnr"]) / (s["fp32"]["psnr"] - s["input"]["psnr"])
    gains = "; ".join(f"{k} {s['fp32']['psnr'] - s['input']['psnr']:+.2f} dB / SSIM {s['fp32']['ssim'] - s['input']['ssim']:+.4f}"
                      for k, s in res.items())
    text = (f"What these numbers say, plainly: the FP32 model improves on its input ({gains}). "
            f"Minmax PTQ agrees with FP32 at {span(agree('ptq'))} dB and keeps "
            + ", ".join(f"{kept(s, 'ptq'):.0%} ({k})" for k, s in res.items()) + " of FP32's PSNR gain; "
            f"QAT agrees at {span(agree('qat'))} dB and keeps "
            + ", ".join(f"{kept(s, 'qat'):.0%} ({k})" for k, s in res.items()) + ".")
    if agree("ptq_entropy"):
        text += (f" Better calibration alone closes much of the gap: percentile PTQ agrees at {span(agree('ptq_percentile'))} dB "
                 f"and entropy PTQ at {span(agree('ptq_entropy'))} dB, without any training.")
    big = [r for r in card["benchmark"]["results"] if r["size"] == "1920x1080" and r["model"] == "ptq"]
    if big:
        r = big[0]
        text += (f" At 1920×1080 minmax INT8 runs at {r['ratio_to_fp32']:.2f}× the FP32 time"
                 + (f" and {r['ratio_to_reference']:.2f}× the authors' INT8 TFLite model" if r.get("ratio_to_reference") else "")
                 + " (goals 0.4× and 0.5×; `docs/performance.md`).")
    return text + "\n"


def readme_results(card: dict) -> str:
    """README's results block: the model card's tables, goals, 1080p latency, tiling and a summary."""
    parts = []
    for k, res in card["results"].items():
        title, _, what = card["sets"][k].partition(": ")
        parts.append(f"**{title[:1].upper() + title[1:]}** — {what}\n\n{quality_table(res)}\n")
    parts += _tone_sections(card)
    parts.append("**Goals**\n\n" + _goals_table(card))
    b = card["benchmark"]
    big = {**b, "results": [r for r in b["results"] if r["size"] == "1920x1080"]}
    if big["results"]:
        parts.append(f"**Latency at 1920×1080** (ONNX Runtime {b.get('machine', {}).get('onnxruntime', '')}, "
                     f"{b.get('threads')} threads{machine_line(b)}, median of {b.get('runs', '')} interleaved runs after warm-up; "
                     f"other sizes in the model card)\n\n{bench_table(big)}\n")
    if card.get("tiling"):
        parts.append("**Tiling** (photos larger than one tile run in overlapping tiles; InstanceNorm sees each tile's "
                     "own statistics, so the output differs from whole-image output by this much):\n\n"
                     f"{tiling_table(card['tiling'])}\n")
    if card.get("paper"):
        parts.append(paper_report.paper_markdown(card["paper"]) + "\n")
    parts.append(plain_summary(card))
    return "\n".join(parts)


def sync_readme(readme: Path, card: dict) -> Path:
    """Replace README's block between the model-card markers with `readme_results(card)`."""
    readme = Path(readme)
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise QatieError(f"{readme}: no model-card block (lines {README_BEGIN!r} … {README_END!r}) to fill")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{readme_results(card)}{README_END}{tail}")
    return readme
