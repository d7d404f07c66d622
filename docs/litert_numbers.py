"""Every figure in docs/litert.md: `python docs/litert_numbers.py` from the repository root (needs
ai-edge-litert, the shipped paper models and, for the full-HD rows, ../shared; ~3 minutes on 2 cores).

Writes docs/litert_numbers.json and prints the tables in Markdown: the op-by-op proof (both LiteRT
kernel sets) on 120×136 crops of three sample photos, the full-HD agreement with FP32 (the photo
of docs/paper_model.md at the authors' 1920×1080 size), and the latency pair at full HD in one run.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

from qatie.analysis.litert_parity import agreement, op_rows, summary  # noqa: E402
from qatie.paths import SHIPPED_MODELS  # noqa: E402
from qatie.runtime.bench import run_benchmark  # noqa: E402
from qatie.runtime.cpu import describe, machine_summary  # noqa: E402
from qatie.runtime.int8_reference import default_images  # noqa: E402
from qatie.runtime.litert import litert_file  # noqa: E402
from qatie.util import jsonable  # noqa: E402

FULL_HD_TFLITE = ROOT.parent / "shared" / "reference" / "qatie_official_int8_1920x1080.tflite"
MODELS = ("paper-qat", "paper-ptq")


def main() -> None:
    out = {"machine": machine_summary(2), "proof": {}, "agreement": {}, "latency": {}}
    crops = default_images((120, 136))
    qat, fp32 = ROOT / SHIPPED_MODELS["paper-qat"], ROOT / SHIPPED_MODELS["paper"]
    with tempfile.TemporaryDirectory() as tmp:
        for kernels in ("xnnpack", "builtin"):
            rows = [r for img in crops.values() for r in op_rows(litert_file(qat, *img.shape[:2], tmp), qat, img, kernels)]
            out["proof"][kernels] = summary(rows)
        photos = dict(crops)
        if FULL_HD_TFLITE.is_file():
            from paper_model_numbers import full_hd_photo

            photos["full-HD photo (docs/paper_model.md)"] = full_hd_photo()
        for m in MODELS:
            out["agreement"][m] = {name: agreement(ROOT / SHIPPED_MODELS[m], fp32, img, tmp) for name, img in photos.items()}
    if FULL_HD_TFLITE.is_file():
        for threads in (1, 2):
            out["latency"][threads] = run_benchmark(list(MODELS), [(1920, 1080)], threads=threads, runs=7,
                                                    reference_tflite=str(FULL_HD_TFLITE), litert=True,
                                                    measure_memory=False)["results"]
    (ROOT / "docs" / "litert_numbers.json").write_text(json.dumps(jsonable(out), indent=1) + "\n")
    print(f"Measured on {describe(out['machine'])}\n")
    for kernels, rows in out["proof"].items():
        print(f"\n{kernels}\n\n| op | tensors | values | off | off % | max levels |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['op']} | {r['tensors']} | {r['values']:,} | {r['off']:,} | {r['off_pct']:.3f} | {r['max_levels']} |")
    print("\n| model | photo | size | LiteRT vs FP32 dB | ONNX INT8 vs FP32 dB | LiteRT vs ONNX dB |\n|---|---|---|---|---|---|")
    for m, per in out["agreement"].items():
        for name, a in per.items():
            print(f"| {m} | {name} | {a['size']} | {a['litert_vs_fp32_db']:.2f} | {a['onnx_vs_fp32_db']:.2f} | "
                  f"{a['litert_vs_onnx_db']:.2f} |")
    for threads, rows in out["latency"].items():
        print(f"\n{threads} thread(s)\n\n| model | kind | median ms | min ms | max ms | × authors' file |\n|---|---|---|---|---|---|")
        for r in rows:
            ref = "—" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.2f}"
            print(f"| {r['model']} | {r['kind']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['max_ms']:.0f} | {ref} |")


if __name__ == "__main__":
    main()
