"""Every figure in docs/paper_model.md: `python docs/paper_model_numbers.py` from the repository root
(needs ../shared, ai-edge-litert and the shipped paper models; about 6 minutes on 2 cores).

Writes docs/paper_model_numbers.json, assets/paper_model_crops.png (the full-HD failure, same
crops side by side) and assets/paper_vs_restoration.png (both FP32 models on the example photos),
and prints the tables in Markdown.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qatie.runtime.cpu import describe  # noqa: E402
from qatie.data.datasets import sample_images  # noqa: E402
from qatie.imageio import read_image, write_image  # noqa: E402
from qatie.metrics import psnr  # noqa: E402
from qatie.paper.diagnosis import gate_grid_experiment, layer_clipping, tanh_gate_grids  # noqa: E402
from qatie.runtime.enhancer import get_enhancer, run_tiled  # noqa: E402
from qatie.paper.tflite import _interpreter, import_tflite, prove_mapping, run_tflite  # noqa: E402

REF = ROOT.parent / "shared" / "reference"
SMALL, FULL_HD = REF / "qatie_official_int8_100x100.tflite", REF / "qatie_official_int8_1920x1080.tflite"
PHOTO = ROOT.parent / "shared" / "data" / "clean" / "sunhays80" / "badlands_sun_bvwwfrhtvupdxldb.jpg"
TILE, OVERLAP = 100, 16


def mapping_crops() -> list[np.ndarray]:
    crops = []
    for img in sample_images(("astronaut", "coffee", "chelsea")).values():
        for y, x in [(40, 60), (200, 150)]:
            crops.append(np.ascontiguousarray(img[y:y + 100, x:x + 100]))
    return crops


def full_hd_photo() -> np.ndarray:
    """The photo turned to portrait and resized to the full-HD model's fixed 1920×1080 input."""
    img = read_image(PHOTO)
    if img.shape[1] > img.shape[0]:
        img = np.ascontiguousarray(np.rot90(img))
    u8 = Image.fromarray((img * 255).round().astype(np.uint8)).resize((1080, 1920), Image.BICUBIC)
    return np.asarray(u8).astype(np.float32) / 255


def main() -> None:
    torch.set_num_threads(2)
    out: dict = {"cpu": describe()}
    model, info = import_tflite(SMALL)
    out["source"] = {k: info[k] for k in ("source_file", "source_sha256", "licence")}

    rows = prove_mapping(SMALL, mapping_crops(), model=model)
    out["mapping"] = rows
    print("| layer | conv (their input) dB | worst crop dB | wired dB | chained dB |\n|---|---|---|---|---|")
    for r in rows:
        conv = f"{r['conv_sqnr_db']:.1f} | {r['conv_worst_image_sqnr_db']:.1f}" if "conv_sqnr_db" in r else "— | —"
        print(f"| {r['layer']} | {conv} | {r['wired_sqnr_db']:.1f} | {r['chained_sqnr_db']:.1f} |")

    grids = {"100x100": tanh_gate_grids(SMALL), "1920x1080": tanh_gate_grids(FULL_HD)}
    out["gate_grids"] = grids
    print("\n| branch | 100×100 file: scale (levels in [−1, 1]) | 1920×1080 file |\n|---|---|---|")
    for a, b in zip(grids["100x100"], grids["1920x1080"]):
        print(f"| {a['branch']} | {a['scale']:.4f} ({a['levels_in_tanh_range']}) | {b['scale']:.4f} ({b['levels_in_tanh_range']}) |")

    photo = full_hd_photo()
    layers, authors_full = layer_clipping(FULL_HD, model, photo)
    out["full_hd_layers"] = layers
    worst_clip = max(r.get("clipped_pct", 0) for r in layers)
    first_bad = next(r for r in layers if r.get("sqnr_db", 99) < 20)
    print(f"\nfull HD, authors' INT8 vs our FP32: output PSNR {layers[-1]['psnr_vs_fp32_db']:.2f} dB; "
          f"largest clipped share of any conv output {worst_clip:.4f} %; first layer under 20 dB: "
          f"{first_bad['layer']} ({first_bad['sqnr_db']:.1f} dB)")
    print("| layer | SQNR dB | their int8 grid | our FP32 range |\n|---|---|---|---|")
    for r in layers[:-1]:
        print(f"| {r['layer']} | {r['sqnr_db']:.1f} | [{r['grid'][0]:.1f}, {r['grid'][1]:.1f}] | "
              f"[{r['fp32_range'][0]:.1f}, {r['fp32_range'][1]:.1f}] |")

    exp = {}
    for name, g in grids.items():
        r = gate_grid_experiment(model, photo, g)
        exp[name] = {k: r[k] for k in ("psnr_vs_fp32_db", "mean_shift_levels_rgb")}
        fp32_torch = r["fp32"]
    out["gate_experiment"] = exp
    print("\nour FP32 with only the four gate inputs on each file's grid, vs exact FP32 (full HD):")
    for name, r in exp.items():
        print(f"  {name} grids: {r['psnr_vs_fp32_db']:.2f} dB, mean shift R/G/B {r['mean_shift_levels_rgb']} levels")

    # Everything against our FP32 on the whole full-HD photo (ONNX Runtime, 2 threads)
    fp32 = get_enhancer("paper", threads=2)
    whole = fp32.enhance(photo)
    it_small = _interpreter(SMALL)
    model.pad_input = False

    def fp32_tile(t):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(t.transpose(2, 0, 1))[None]))[0].numpy().transpose(1, 2, 0)

    candidates = {
        "our FP32 in 100×100 tiles (overlap 16)": run_tiled(fp32_tile, photo, TILE, OVERLAP),
        "authors' INT8, 1920×1080 file": authors_full,
        "authors' INT8, 100×100 file in tiles (overlap 16)": run_tiled(lambda t: run_tflite(it_small, t)[0], photo, TILE, OVERLAP),
        "our PTQ-INT8 (minmax, whole-photo calibration)": get_enhancer("paper-ptq", threads=2).enhance(photo),
        "our QAT-INT8": get_enhancer("paper-qat", threads=2).enhance(photo),
    }
    model.pad_input = True
    agreement = {"our FP32 (torch) vs ONNX": psnr(whole, fp32_torch)}
    agreement.update({k: psnr(whole, v) for k, v in candidates.items()})
    out["full_hd_agreement_db"] = agreement
    print("\n| full-HD photo, against our FP32 on the whole photo | PSNR dB |\n|---|---|")
    for k, v in agreement.items():
        print(f"| {k} | {v:.2f} |")

    # Figure: the same crops of the full-HD photo
    ys, xs = [300, 1150], [80, 520]
    panels = [("input", photo), ("authors' INT8 (full HD)", authors_full),
              ("authors' INT8 (100×100 tiles)", candidates["authors' INT8, 100×100 file in tiles (overlap 16)"]),
              ("our FP32", whole), ("our PTQ-INT8", candidates["our PTQ-INT8 (minmax, whole-photo calibration)"]),
              ("our QAT-INT8", candidates["our QAT-INT8"])]
    rows_img = [np.concatenate([p[y:y + 320, x:x + 320] for _, p in panels], 1) for y, x in zip(ys, xs)]
    write_image(ROOT / "assets" / "paper_model_crops.png", np.concatenate(rows_img, 0))
    out["figure_columns"] = [n for n, _ in panels]

    # Both FP32 models on the example photos
    examples = sorted((ROOT / "assets" / "examples").glob("*_input.png"))
    restoration = get_enhancer("fp32", threads=2)
    strips = []
    for f in examples:
        img = read_image(f)[:256, :384]
        strips.append(np.concatenate([img, restoration.enhance(img), fp32.enhance(img)], 1))
    write_image(ROOT / "assets" / "paper_vs_restoration.png", np.concatenate(strips, 0))
    out["examples_figure"] = {"rows": [f.name for f in examples], "columns": ["input", "restoration FP32", "paper FP32"]}

    # How much each FP32 network changes a photo (the validation split's clean photos, whole): INT8
    # agreement is limited by how precisely the network's change is reproduced.
    split = json.loads((ROOT / "qatie" / "clean_split.json").read_text())
    change = {}
    for name, enh in (("restoration FP32", restoration), ("paper FP32", fp32)):
        rms = [float(np.sqrt(np.mean(((enh.enhance(a) - a) * 255.0) ** 2)))
               for a in (read_image(ROOT.parent / "shared" / "data" / "clean" / p) for p in split["val"])]
        change[name] = float(np.median(rms))
    out["rms_change_levels_val_median"] = change
    print("\nmedian rms change of a photo (8-bit levels, validation split):",
          ", ".join(f"{k} {v:.1f}" for k, v in change.items()))

    (ROOT / "docs" / "paper_model_numbers.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    print("→ docs/paper_model_numbers.json, assets/paper_model_crops.png, assets/paper_vs_restoration.png")


if __name__ == "__main__":
    main()
