"""The model card: one command measures the shipped models and writes what the README quotes.

`qatie report --out checkpoints/MODEL_CARD.md` evaluates the input, FP32, minmax PTQ-INT8 (the
shipped `ptq`), QAT-INT8 and — for the calibration comparison — percentile and entropy PTQ
built on the spot with the shipped PTQ's calibration settings, on:
  (a) the synthetic test split of ../shared/data/clean at seed 0 (without ../shared: the
      built-in scikit-image photos degraded at seed 0, labelled as such);
  (b) the 100 real PolyU noisy/clean pairs, when ../shared is present.
Every model is scored against the target and against the FP32 output ("agreement with full
precision", which isolates quantization error). It then benchmarks latency (`qatie bench`),
lists file sizes, checks the goals of the model card, renders a crop figure into assets/, and
refreshes checkpoints/manifest.json (hashes, sizes, commands, metrics). With `--readme README.md`
it also rewrites README's results block (between the model-card markers) from the same numbers.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from qatie.report import paper as paper_report
from qatie.errors import QatieError
from qatie.report.model_card import LABELS, render_markdown, sync_readme
from qatie.paths import REPO_ROOT as REPO
from qatie.util import sha256
from qatie.runtime.enhancer import load_enhancer

SHARED = REPO.parent / "shared"
SHIPPED = {"fp32": "fp32.onnx", "ptq": "int8_ptq.onnx", "qat": "int8_qat.onnx"}
GOALS = {"qat_psnr_gap_db": 0.10, "qat_ssim_gap": 0.005, "qat_agreement_db": 42.0,
         "qat_recovers_ptq_ssim_loss": 0.75, "qat_agreement_margin_db": 5.0}


def evaluation_sets(shared: Path | None, seed: int = 0, limit: int | None = None) -> dict:
    """{name: (description, pairs)} for the model card."""
    from qatie.data.datasets import EVAL_DEGRADATION, eval_pairs, sample_images
    from qatie.data.degrade import degrade, seed_for

    sets = {}
    clean = shared / "data" / "clean" if shared else None
    if clean is not None and clean.is_dir():
        pairs = eval_pairs(clean_dir=clean, seed=seed, part="test", limit=limit)
        sets["synthetic"] = (f"synthetic test split: {len(pairs)} photos of ../shared/data/clean "
                             f"(qatie/data/clean_split.json) degraded at seed {seed}", pairs)
    else:
        pairs = [(n, degrade(img, seed_for(n, seed), EVAL_DEGRADATION), img) for n, img in sample_images().items()]
        sets["synthetic"] = (f"built-in scikit-image photos degraded at seed {seed} (../shared absent)", pairs[:limit])
    polyu = shared / "data" / "pairs" / "polyu-real-noise" if shared else None
    if polyu is not None and polyu.is_dir():
        pairs = eval_pairs(input_dir=polyu / "input", target_dir=polyu / "target", limit=limit)
        sets["polyu"] = (f"real noisy/clean pairs: {len(pairs)} PolyU photos (evaluation only, never trained on)", pairs)
    return sets


def calibration_variants(ckpt_dir: Path, cache: Path, progress=print, num_calib: int | None = None
                         ) -> tuple[dict[str, Path], dict]:
    """Percentile and entropy PTQ of fp32.pt with the shipped PTQ's calibration data, built (and
    cached by checkpoint content + settings) by the same `cached_ptq` the app's Inspect panel uses.
    Where that data is absent (no ../shared), the built-in sample photos stand in, and say so.
    `num_calib` overrides the shipped PTQ's image count (a quick card). Returns the models and
    the calibration they got ({"calib", "num_calib"}), which the card records."""
    from qatie.analysis.calibration import cached_ptq

    meta = json.loads((ckpt_dir / "int8_ptq.json").read_text()).get("meta", {})
    calib, num = meta.get("calib", "samples"), int(num_calib or meta.get("num_calib", 32))

    def build(spec: str) -> tuple[dict[str, Path], dict]:
        return ({f"ptq_{m}": cached_ptq(ckpt_dir / "fp32.pt", m, spec, num, cache=cache) for m in ("percentile", "entropy")},
                {"calib": spec, "num_calib": num})

    try:
        return build(calib)
    except QatieError as e:
        progress(f"calibration data of the shipped PTQ unavailable ({e}); percentile/entropy PTQ calibrate on `samples`")
        return build("samples")


def check_goals(results: dict) -> list[dict]:
    """Each goal of the model card with the measured value and whether it is met."""
    rows = []
    for set_name, res in results.items():
        s = res["summary"]
        fp, pt, qa, inp = s["fp32"], s["ptq"], s["qat"], s["input"]
        agree = lambda m: s[m]["agreement_with_fp32"]["psnr_vs_fp32"]
        ptq_loss = fp["ssim"] - pt["ssim"]
        qat_loss = fp["ssim"] - qa["ssim"]
        recovered = 1 - qat_loss / ptq_loss if ptq_loss > 0 else float("nan")
        rows += [
            {"set": set_name, "goal": f"QAT-INT8 PSNR within {GOALS['qat_psnr_gap_db']} dB of FP32",
             "value": f"{qa['psnr'] - fp['psnr']:+.3f} dB", "met": abs(qa["psnr"] - fp["psnr"]) <= GOALS["qat_psnr_gap_db"]},
            {"set": set_name, "goal": f"QAT-INT8 SSIM within {GOALS['qat_ssim_gap']} of FP32",
             "value": f"{qa['ssim'] - fp['ssim']:+.4f}", "met": abs(qa["ssim"] - fp["ssim"]) <= GOALS["qat_ssim_gap"]},
            {"set": set_name, "goal": f"QAT-INT8 agreement with FP32 ≥ {GOALS['qat_agreement_db']} dB",
             "value": f"{agree('qat'):.2f} dB", "met": agree("qat") >= GOALS["qat_agreement_db"]},
            {"set": set_name, "goal": f"QAT recovers ≥ {GOALS['qat_recovers_ptq_ssim_loss']:.0%} of minmax PTQ's SSIM loss",
             "value": f"{recovered:.0%} (PTQ loss {ptq_loss:.4f}, QAT loss {qat_loss:.4f})",
             "met": bool(recovered >= GOALS["qat_recovers_ptq_ssim_loss"])},
            {"set": set_name, "goal": f"QAT agreement ≥ {GOALS['qat_agreement_margin_db']} dB better than minmax PTQ",
             "value": f"{agree('qat') - agree('ptq'):+.2f} dB", "met": agree("qat") - agree("ptq") >= GOALS["qat_agreement_margin_db"]},
        ]
        # (the earlier "+3 dB over the input" goal is retired: it assumed tone correction, which the
        # restoration model deliberately leaves alone; the enhancement is the paper model's job)
        rows.append({"set": set_name, "goal": "FP32 above the input (PSNR and SSIM)",
                     "value": f"{fp['psnr'] - inp['psnr']:+.2f} dB, SSIM {fp['ssim'] - inp['ssim']:+.4f}",
                     "met": fp["psnr"] > inp["psnr"] and fp["ssim"] > inp["ssim"]})
    return rows


def tone_oracle(pairs, seed: int = 0) -> dict:
    """Context for the FP32 goal on the synthetic set: the PSNR of each test input had only its
    tone errors been undone (the same draws with the tone block off — noise, blur and JPEG
    stay). Tone errors are most of the input's loss there, and the shipped model is trained to
    leave tones alone (they re-graded real photos), so this is the share of the goal it forgoes."""
    from dataclasses import replace

    from qatie.data.datasets import EVAL_DEGRADATION
    from qatie.data.degrade import degrade, seed_for
    from qatie.metrics import psnr

    right = replace(EVAL_DEGRADATION, p_tone=0.0)
    inp = [psnr(x, t) for _, x, t in pairs]
    oracle = [psnr(degrade(t, seed_for(n, seed), right), t) for n, _, t in pairs]
    return {"input_psnr": float(np.mean(inp)), "tones_undone_psnr": float(np.mean(oracle)),
            "gain_db": float(np.mean(oracle) - np.mean(inp))}


def tone_statistics(pairs) -> dict:
    """Mean tone statistics of a set's targets (luma 1st/99th percentile, mean luma, mean
    saturation max−min of RGB): why tone correction learned on one set re-grades another."""
    rows = []
    for _, _, t in pairs:
        luma, sat = t.mean(axis=2), t.max(axis=2) - t.min(axis=2)
        rows.append([np.percentile(luma, 1), np.percentile(luma, 99), luma.mean(), sat.mean()])
    m = np.mean(rows, axis=0)
    return {"luma_p1": float(m[0]), "luma_p99": float(m[1]), "luma_mean": float(m[2]), "saturation": float(m[3])}


def tiling_effect(models: dict, pairs, tiles=(256, 512), overlap: int = 32, threads: int = 2) -> dict:
    """How much tiling changes each model's output. InstanceNorm normalises over what it sees,
    so a tile is normalised with its own statistics, not the photo's: on photos that fit both
    ways, compare tiled with whole-image output (PSNR, mean over photos) and both with the target.
    The app tiles photos over 2 MP in 1024-pixel tiles; 256 and 512 show the trend."""
    from qatie.metrics import psnr
    from qatie.runtime.enhancer import get_enhancer

    out = {}
    for key, path in models.items():
        enh = get_enhancer(path, threads=threads)
        rows = {}
        wholes = [(enh.enhance(inp), tgt, inp) for _, inp, tgt in pairs]
        for tile in tiles:
            vs_whole, tiled_t, whole_t, n = [], [], [], 0
            for whole, tgt, inp in wholes:
                if max(inp.shape[:2]) <= tile:
                    continue  # fits one tile: tiled == whole by construction
                tiled = enh.enhance_tiled(inp, tile=tile, overlap=overlap)
                vs_whole.append(psnr(tiled, whole)), tiled_t.append(psnr(tiled, tgt)), whole_t.append(psnr(whole, tgt))
                n += 1
            rows[str(tile)] = {"images": n, "overlap": overlap,
                               "psnr_tiled_vs_whole": float(np.mean(vs_whole)) if n else None,
                               "min_psnr_tiled_vs_whole": float(np.min(vs_whole)) if n else None,
                               "psnr_vs_target_tiled": float(np.mean(tiled_t)) if n else None,
                               "psnr_vs_target_whole": float(np.mean(whole_t)) if n else None}
        out[key] = rows
    return out


def render_figure(pairs, models: dict, path: Path, count: int = 3, crop: int = 96) -> Path:
    """Crops of input | FP32 | PTQ | QAT and |INT8 − FP32| maps on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qatie.metrics import error_levels
    from qatie.runtime.enhancer import get_enhancer

    picked = []
    for name, inp, tgt in pairs:
        outs = {k: get_enhancer(p, threads=2).enhance(inp) for k, p in models.items()}
        err = error_levels(outs["ptq"], outs["fp32"])
        picked.append((float(err.mean()), name, inp, outs, err))
    picked = sorted(picked, key=lambda t: -t[0])[:count]  # where PTQ's artifacts show most
    vmax = 1.0
    rows = []
    for _, name, inp, outs, err in picked:
        y0 = int(np.clip(np.argmax(np.convolve(err.mean(1), np.ones(crop), "same")) - crop // 2, 0, max(0, err.shape[0] - crop)))
        x0 = int(np.clip(np.argmax(np.convolve(err.mean(0), np.ones(crop), "same")) - crop // 2, 0, max(0, err.shape[1] - crop)))
        sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        e_ptq, e_qat = error_levels(outs["ptq"], outs["fp32"])[sl], error_levels(outs["qat"], outs["fp32"])[sl]
        vmax = max(vmax, float(e_ptq.max()), float(e_qat.max()))
        rows.append((name, inp[sl], outs["fp32"][sl], outs["ptq"][sl], outs["qat"][sl], e_ptq, e_qat))
    fig, axes = plt.subplots(len(rows), 6, figsize=(15, 2.7 * len(rows)), squeeze=False)
    titles = ["input", "FP32", "PTQ-INT8", "QAT-INT8", "|PTQ − FP32|", "|QAT − FP32|"]
    im = None
    for r, (name, *panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c < 4:
                ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
            else:
                im = ax.imshow(panel, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c])
        axes[r, 0].set_ylabel(Path(name).stem, fontsize=8)
    fig.colorbar(im, ax=axes[:, 4:].ravel().tolist(), label="error in 8-bit levels (one scale)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def write_manifest(ckpt_dir: Path, results: dict, bench: dict) -> Path:
    """checkpoints/manifest.json: for each shipped file its hash, size, provenance and metrics."""
    import onnx
    import torch

    files = {}
    for path in sorted(ckpt_dir.iterdir()):
        if path.suffix not in (".pt", ".onnx"):
            continue
        entry = {"sha256": sha256(path), "bytes": path.stat().st_size}
        if path.suffix == ".pt":
            ck = torch.load(path, map_location="cpu", weights_only=True)
            cfg = ck.get("config", {})
            entry.update(kind=ck.get("kind"), width=ck["model"]["width"], variant=ck["model"]["variant"],
                         command=ck.get("command"), config=cfg, steps=ck.get("step", ck.get("steps")),
                         wall_s=ck.get("wall_s"), training_data=cfg.get("data"))
            if ck.get("source"):  # an imported network: where its weights came from, and their licence
                entry["source"] = ck["source"]
        else:
            proto = onnx.load(str(path), load_external_data=False)
            props = {p.key: p.value for p in proto.metadata_props}
            entry.update(command=props.get("qatie_command"), description=proto.doc_string)
            side = path.with_suffix(".json")
            if side.exists():
                s = json.loads(side.read_text())
                entry.update(width=s["width"], sidecar=side.name, sidecar_sha256=sha256(side), quantization=s["source"],
                             meta=s.get("meta"))
            key = next((k for k, v in SHIPPED.items() if v == path.name), None)
            if key:
                entry["metrics"] = {name: {m: res["summary"][key][m] for m in ("psnr", "ssim")}
                                    | ({"agreement_with_fp32_db": res["summary"][key]["agreement_with_fp32"]["psnr_vs_fp32"]}
                                       if key != "fp32" else {}) for name, res in results.items()}
                entry["latency_ms"] = {r["size"]: r["median_ms"] for r in bench.get("results", []) if r["model"] == key}
        files[path.name] = entry
    total = sum(e["bytes"] for e in files.values()) + sum(p.stat().st_size for p in ckpt_dir.glob("*.json")
                                                         if p.name not in ("manifest.json", "MODEL_CARD.json"))
    manifest = {"produced_by": "qatie report", "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "reproduce": "bash configs/ship.sh", "total_bytes": total, "files": files}
    out = ckpt_dir / "manifest.json"
    out.write_text(json.dumps(manifest, indent=1, default=str))
    return out


def build_report(out_md, ckpt_dir=REPO / "checkpoints", shared: Path | None = SHARED, sizes=((512, 512), (1280, 720), (1920, 1080)),
                 threads: int = 2, runs: int = 5, limit: int | None = None, figure=REPO / "assets" / "model_card_crops.png",
                 cache=REPO / "runs" / "report_cache", readme: Path | None = None, progress=print,
                 num_calib: int | None = None, paper_size=paper_report.FULL_HD) -> dict:
    """Measure everything the model card says and write it (markdown, JSON, manifest; README's
    block with `readme`). `num_calib` and `paper_size` shrink the calibration comparison and the
    paper set's timing (default: the shipped PTQ's calibration, full HD) for a quick card."""
    from qatie.runtime.bench import run_benchmark
    from qatie.analysis.evaluate import evaluate

    ckpt_dir, out_md = Path(ckpt_dir), Path(out_md)
    missing = [n for n in list(SHIPPED.values()) + ["fp32.pt", "int8_ptq.json"] if not (ckpt_dir / n).exists()]
    if missing:
        raise QatieError(f"{ckpt_dir}: missing {', '.join(missing)} — build the shipped models first (configs/ship.sh)")
    shared = shared if shared is not None and shared.is_dir() else None
    t0 = time.time()
    models = {k: ckpt_dir / v for k, v in SHIPPED.items()}
    progress("building percentile and entropy PTQ variants for the calibration comparison …")
    variants, variant_calib = calibration_variants(ckpt_dir, Path(cache), progress, num_calib)
    all_models = {**models, **variants}
    results, tiling, oracle, tones = {}, {}, None, {}
    descriptions = {}
    eval_sets = evaluation_sets(shared, limit=limit)
    for set_name, (desc, pairs) in eval_sets.items():
        progress(f"evaluating on {desc} …")
        descriptions[set_name] = desc
        res = evaluate(list(all_models), pairs, threads=threads,
                       enhancers={k: load_enhancer(p, threads) for k, p in all_models.items()})
        results[set_name] = res
        tones[set_name] = tone_statistics(pairs)
        if set_name == "synthetic":
            if figure:
                render_figure(pairs[:12], models, Path(figure))
            oracle = tone_oracle(pairs)
            progress("measuring what tiling changes …")
            tiling = tiling_effect(models, pairs, threads=threads)
    progress("benchmarking latency …")
    ref = shared / "reference" / "qatie_official_int8_1920x1080.tflite" if shared else None
    try:
        bench = run_benchmark([str(p) for p in all_models.values()], list(sizes), threads=threads, runs=runs,
                              reference_tflite=str(ref) if ref and ref.exists() else None)
    except QatieError as e:  # e.g. ai-edge-litert not installed: time our models only
        progress(f"reference model skipped: {e}")
        bench = run_benchmark([str(p) for p in all_models.values()], list(sizes), threads=threads, runs=runs)
    stems = {p.stem: k for k, p in all_models.items()}  # rows named like the evaluation: fp32, ptq, qat, …
    for r in bench["results"]:
        r["model"] = stems.get(r["model"], r["model"])
    goals = check_goals(results)
    paper = (paper_report.paper_section(eval_sets, shared, threads, runs, progress, size=paper_size)
             if paper_report.available() else None)
    progress("checking that the INT8 models are exact on every CPU …")
    exact = exactness(ckpt_dir, sorted((REPO / "assets" / "examples").glob("*_input.png")), threads)
    card = {"generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": "qatie report --out " + str(out_md),
            "sets": descriptions, "results": {k: {"models": v["models"], "count": v["count"], "summary": v["summary"]}
                                              for k, v in results.items()},
            "per_image": {k: v["images"] for k, v in results.items()},
            "benchmark": bench, "goals": goals, "labels": LABELS, "tiling": tiling, "variant_calibration": variant_calib,
            "tone_oracle": oracle, "target_tones": tones, "paper": paper, "exactness": exact,
            "file_bytes": {p.name: p.stat().st_size for p in models.values()}, "wall_s": round(time.time() - t0, 1)}
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.with_suffix(".json").write_text(json.dumps(card, indent=1, default=_json_default))
    out_md.write_text(render_markdown(card, figure))
    write_manifest(ckpt_dir, results, bench)
    if readme:
        sync_readme(readme, card)
    progress(f"→ {out_md}, {out_md.with_suffix('.json')}, {ckpt_dir / 'manifest.json'} ({card['wall_s']:.0f} s)")
    return card


def exactness(ckpt_dir: Path, photos: list[Path], threads: int = 2) -> dict:
    """For every INT8 model in `ckpt_dir`: its saturable weight pairs (the file's layout and the
    graph ONNX Runtime runs; 0 = exact on every CPU, checked from the weights) and, on this CPU,
    how far its output is from the exact integer result on `photos` (max 8-bit levels)."""
    from qatie.imageio import read_image
    from qatie.runtime.int8_reference import exact_enhancer, levels_apart, runtime_saturable_pairs, saturable_pairs
    from qatie.runtime.enhancer import OnnxEnhancer

    images = [read_image(p) for p in photos]
    out = {}
    for path in sorted(Path(ckpt_dir).glob("*int8*.onnx")):
        deployed, exact = OnnxEnhancer(path, threads=threads), exact_enhancer(path, threads)
        worst = max((levels_apart(deployed.enhance(im), exact.enhance(im))["max_levels"] for im in images), default=None)
        out[path.name] = {"saturable_pairs": saturable_pairs(path), "runtime_saturable_pairs": runtime_saturable_pairs(path),
                          "photos": len(images), "max_levels_vs_exact": worst}
    return out


def _json_default(o):
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return None
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
