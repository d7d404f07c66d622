"""The paper set in the model card: how closely each INT8 version of the authors' network agrees
with its FP32 weights on whole photos, and how fast each runs — ours (PTQ, QAT) and the authors'
own INT8 TFLite, in one run. `qatie report` calls `paper_section` when the paper models exist.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from qatie.paths import REPO_ROOT, SHIPPED_MODELS

PAPER = ("paper", "paper-ptq", "paper-qat")
TFLITE_TILED = "authors-tflite"
LABELS = {"paper": "paper FP32 (import)", "paper-ptq": "paper PTQ-INT8 (minmax, whole photos)",
          "paper-qat": "paper QAT-INT8", TFLITE_TILED: "authors' INT8 TFLite (100×100 file, tiled)"}
GOAL_AGREEMENT_DB = 45.0
GOAL_LATENCY_RATIO = 0.5
GOAL_LITERT_RATIO = 1.0  # QATIE's QAT-INT8 on LiteRT vs the authors' file: same runtime, same threads
FULL_HD = (1920, 1080)  # the authors' full-HD TFLite's fixed size: the latency goal is measured there


def available() -> bool:
    return all((REPO_ROOT / SHIPPED_MODELS[m]).is_file() for m in PAPER)


def paper_section(eval_sets: dict, shared: Path | None, threads: int = 2, runs: int = 5, progress=print,
                  size=FULL_HD) -> dict:
    """Evaluate the paper set on `eval_sets` ({name: (description, pairs)}, whole photos) and time
    it at `size` — at full HD beside the authors' full-HD TFLite, which runs at no other size (a
    smaller `size` is a quick check: no TFLite, no latency goal). The authors' model is scored "as released"
    through its 100×100 file in overlapping tiles (the full-HD file breaks colours: see
    docs/paper_model.md; it is timed, not scored)."""
    from qatie.runtime.bench import run_benchmark
    from qatie.analysis.evaluate import evaluate
    from qatie.runtime.enhancer import load_enhancer

    enhancers = {m: load_enhancer(m, threads=threads) for m in PAPER}
    ref = shared / "reference" if shared else None
    small = ref / "qatie_official_int8_100x100.tflite" if ref else None
    models = list(PAPER)
    if small is not None and small.is_file():
        try:
            from qatie.paper.tflite import AuthorsTFLite

            enhancers[TFLITE_TILED] = AuthorsTFLite(small, threads=threads).enhance
            models.append(TFLITE_TILED)
        except Exception as e:  # ai-edge-litert missing: our models only
            progress(f"authors' TFLite not scored: {e}")
    results = {}
    for name, (desc, pairs) in eval_sets.items():
        progress(f"paper set: evaluating on {desc} …")
        res = evaluate(models, pairs, threads=threads, enhancers=enhancers)
        results[name] = {"description": desc, "summary": res["summary"], "count": res["count"]}
    label = f"{size[0]}×{size[1]}"
    progress(f"paper set: benchmarking at {label} …")
    full = ref / "qatie_official_int8_1920x1080.tflite" if ref and tuple(size) == FULL_HD else None
    litert = importlib.util.find_spec("ai_edge_litert") is not None  # our INT8 models on LiteRT too
    try:
        bench = run_benchmark(list(PAPER), [tuple(size)], threads=threads, runs=runs,
                              reference_tflite=str(full) if full and full.is_file() else None, litert=litert)
    except Exception as e:  # noqa: BLE001 — the reference is optional
        progress(f"reference model skipped: {e}")
        bench = run_benchmark(list(PAPER), [tuple(size)], threads=threads, runs=runs)
    return {"models": models, "labels": {m: LABELS[m] for m in models}, "results": results, "size": label,
            "benchmark": bench, "goals": goals(results, bench, label)}


def goals(results: dict, bench: dict, size: str = "1920×1080") -> list[dict]:
    out = []
    for name, res in results.items():
        s = res["summary"]
        qat = s["paper-qat"]["agreement_with_paper"]["psnr_vs_fp32"]
        out.append({"set": name, "goal": f"paper QAT-INT8 agreement with paper FP32 ≥ {GOAL_AGREEMENT_DB} dB",
                    "measured": f"{qat:.2f} dB", "met": qat >= GOAL_AGREEMENT_DB})
        if TFLITE_TILED in s:
            tfl = s[TFLITE_TILED]["agreement_with_paper"]["psnr_vs_fp32"]
            out.append({"set": name, "goal": "paper QAT-INT8 agrees better than the authors' INT8 TFLite",
                        "measured": f"{qat:.2f} vs {tfl:.2f} dB", "met": qat > tfl})
    ratios = [r["ratio_to_reference"] for r in bench["results"] if r["model"] in ("paper-ptq", "paper-qat")
              and r.get("ratio_to_reference") is not None]
    if ratios:
        worst = max(ratios)
        out.append({"set": size, "goal": f"INT8 latency ≤ {GOAL_LATENCY_RATIO}× the authors' TFLite",
                    "measured": f"{worst:.2f}×", "met": worst <= GOAL_LATENCY_RATIO})
    lite = [r["ratio_to_reference"] for r in bench["results"] if r["model"] == "paper-qat@litert"
            and r.get("ratio_to_reference") is not None]
    if lite:
        out.append({"set": size, "goal": f"paper QAT-INT8 on LiteRT ≤ {GOAL_LITERT_RATIO}× the authors' TFLite "
                    "(same runtime, same threads)", "measured": f"{lite[0]:.2f}×", "met": lite[0] <= GOAL_LITERT_RATIO})
    return out


def paper_markdown(section: dict) -> str:
    """The model card's paper section (also what README's results block shows)."""
    lines = ["**The paper's network** (the authors' released weights imported by `qatie import-tflite`; "
             "docs/paper_model.md). Agreement with the paper FP32 model on whole photos:", ""]
    for name, res in section["results"].items():
        lines += [f"*{res['description']}*", "",
                  "| model | agreement with paper FP32 (PSNR dB) | max / mean error (levels) | pixels > 2 levels off |",
                  "|---|---|---|---|"]
        for m in section["models"][1:]:
            ag = res["summary"][m]["agreement_with_paper"]
            lines.append(f"| {section['labels'][m]} | {ag['psnr_vs_fp32']:.2f} | {ag['max_levels']:.0f} / "
                         f"{ag['mean_levels']:.3f} | {100 * ag['share_over_2_levels']:.3f} % |")
        lines.append("")
    size = section.get("size", "1920×1080")
    beside = ", beside the authors' full-HD INT8 TFLite," if any(r.get("ratio_to_reference") is not None
                                                                 for r in section["benchmark"]["results"]) else ""
    lines += [f"Latency of the paper set at {size}{beside} in one run:", "",
              "| model | size (H×W) | median ms | × paper FP32 | × authors' TFLite | file MB |", "|---|---|---|---|---|---|"]
    for r in section["benchmark"]["results"]:
        ratio_ref = "—" if r.get("ratio_to_reference") is None else f"{r['ratio_to_reference']:.2f}"
        ratio_fp = "—" if r.get("ratio_to_fp32") is None else f"{r['ratio_to_fp32']:.2f}"
        mb = "—" if r.get("file_mb") is None else f"{r['file_mb']:.2f}"
        lines.append(f"| {r['model']} | {r['size']} | {r['median_ms']:.0f} | {ratio_fp} | {ratio_ref} | {mb} |")
    if any(r.get("kind") == "litert" for r in section["benchmark"]["results"]):
        lines += ["", "`@litert`: the same INT8 model exported to LiteRT with its own scales (`qatie export --format "
                  "tflite`; docs/litert.md), run by LiteRT/XNNPACK like the authors' file (whose input is int8, "
                  "ours float32: our rows include the input's quantization)."]
    lines += ["", "Goals of the paper set:", "", "| set | goal | measured | met |", "|---|---|---|---|"]
    lines += [f"| {g['set']} | {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in section["goals"]]
    return "\n".join(lines)
