"""The Compare tab's "Inspect" panel's handlers: where does the INT8 error come from, on *this*
photo? (Its layout and events: `app.inspect.layout`.)

* Handlers (plain functions; the image is an H×W×3 array or an image path, `paths` a dict
  {"fp32", "ptq", "qat"} of ONNX files — `app.models.ModelSet.paths`):
  - `analyse(image, paths)` → (bar chart Figure, table DataFrame, [CSV path, JSON path],
    tensor Dropdown update, status markdown) — per-tensor SQNR, PTQ and QAT side by side;
  - `histogram(image, paths, tensor)` → (histogram Figure, markdown) — that tensor's FP32
    values on the photo with the PTQ (calibrated) and QAT (learned) ranges and step sizes;
  - `calibration(image, paths)` → (DataFrame, markdown) — PTQ with minmax / percentile /
    entropy calibration, PSNR vs FP32 on the photo and latency (builds the models on first use);
  - `mixed_precision(image, paths, k_values)` → (Figure, DataFrame, markdown) — quality /
    latency for K = 0…N convs kept float (builds and ranks on first use; minutes).
Everything here is torch-free except `calibration` and `mixed_precision`, which build PTQ
models (torch is imported inside `qatie.analysis` when they run).
"""
from __future__ import annotations

import math
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from qatie import analysis as qi
from qatie.errors import QatieError

from app import config
from app.boundary import guard, uploads

WORST = 5
DEFAULT_K = "0,1,2,4,8,16,35"
# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------

def _need_image(image):
    """The photo as a small uint8 array (an upload payload or path is decoded here, reduced to
    about the analysis size — never a full-size float copy); arrays pass through."""
    if isinstance(image, np.ndarray):
        return image
    if image is None or image == "":
        raise gr.Error("Upload or pick a photo first.")
    try:
        up = uploads.read_upload(image, "photo", max_pixels=qi.DEFAULT_MAX_SIDE ** 2)
    except QatieError as e:
        raise gr.Error(str(e)) from None
    if up is None:
        raise gr.Error("Upload or pick a photo first.")
    return up.image


def _name(image) -> str:
    found = uploads.payload_path(image) if not isinstance(image, np.ndarray) else None
    return found[1] if found else "photo"


def _in_child(fn, *args, what: str, slow: bool = False, **kwargs):
    """Run heavy Inspect work in a killable child process under its deadline; its model cache
    stays under `config.ANALYSIS_CACHE_MB`."""
    try:
        return guard.run_in_child(fn, *args, what=what, **kwargs,
                                  seconds=config.INSPECT_BUILD_DEADLINE_S if slow else config.INSPECT_DEADLINE_S)
    except QatieError as exc:
        raise type(exc)(guard.public_text(str(exc))) from None
    finally:
        config.prune(config.analysis_cache(), config.ANALYSIS_CACHE_MB)


def _paths(paths: dict) -> dict[str, Path]:
    missing = [r for r in ("fp32", "ptq", "qat") if not paths or not paths.get(r)]
    if missing:
        raise gr.Error(f"Inspect needs the FP32, PTQ and QAT models (missing: {', '.join(missing)}).")
    return {r: Path(paths[r]) for r in ("fp32", "ptq", "qat")}


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return f"{v:.1f}"


def sqnr_frame(rows: list[dict], worst: int = WORST) -> pd.DataFrame:
    """The table shown: tensor, stage, SQNR and range-only SQNR per model, worst marked ◀."""
    labels = qi.sqnr_keys(rows)
    bad = {lab: set(qi.worst_layers(rows, lab, worst)) for lab in labels}
    data = []
    for r in rows:
        line = {"tensor": r["name"], "stage": r["stage"]}
        for lab in labels:
            mark = " ◀" if r["name"] in bad[lab] else ""
            line[f"{lab.upper()} SQNR dB"] = _fmt(r.get(f"sqnr_{lab}_db")) + mark
            line[f"{lab.upper()} range-only dB"] = _fmt(r.get(f"range_sqnr_{lab}_db"))
        data.append(line)
    return pd.DataFrame(data)


def _out_dir() -> Path:
    config.prune(config.work_dir("inspect"), 20)  # downloads of past analyses: Gradio has its own copies
    return config.work_dir("inspect", uuid.uuid4().hex[:12])


def _without_server_paths(obj):
    """A download's data with every absolute path reduced to its file name: a visitor learns which
    model file, not where the server keeps it (or a trained set's scratch folder)."""
    if isinstance(obj, dict):
        return {k: _without_server_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_without_server_paths(v) for v in obj]
    if isinstance(obj, (str, Path)) and Path(obj).is_absolute():
        return Path(obj).name
    return obj


def analyse(image, paths: dict, threads: int | None = None):
    """Per-tensor SQNR on the photo → (Figure, DataFrame, [csv, json], Dropdown, markdown)."""
    name = _name(image)
    image = _need_image(image)
    p = _paths(paths)
    try:
        result = _in_child(qi.inspect_image, p["fp32"], [p["ptq"], p["qat"]], image, labels=["ptq", "qat"],
                           threads=threads or config.THREADS, what="The analysis")
    except QatieError as e:
        raise gr.Error(str(e)) from None
    rows = result["layers"]
    out = _out_dir()
    csv_path = qi.write_csv(result, out / "inspect_sqnr.csv")
    json_path = qi.write_json(_without_server_paths(result), out / "inspect_sqnr.json", image_name=name)
    fig = qi.plot_sqnr(result, worst=WORST)
    worst_ptq, worst_qat = qi.worst_layers(rows, "ptq", 1), qi.worst_layers(rows, "qat", 1)
    default = (qi.worst_layers(rows, "ptq", 1, key="range_sqnr") or [rows[0]["name"]])[0]
    h, w = result["analysed_size"]
    note = (f"Analysed at {w}×{h} (photos are downscaled to {qi.DEFAULT_MAX_SIDE} px on the long side for this). "
            f"Lowest SQNR — PTQ: `{worst_ptq[0] if worst_ptq else '—'}`, QAT: `{worst_qat[0] if worst_qat else '—'}`. "
            f"The tensor whose own range costs PTQ the most is preselected below.")
    dropdown = gr.Dropdown(choices=[(f"{r['name']}  ({r['stage']})", r["name"]) for r in rows], value=default)
    return fig, sqnr_frame(rows), [str(csv_path), str(json_path)], dropdown, note


def histogram(image, paths: dict, tensor: str | None, threads: int | None = None):
    """Histogram of one tensor's FP32 values with the PTQ and QAT ranges → (Figure, markdown)."""
    image = _need_image(image)
    if not tensor:
        raise gr.Error("Pick a tensor (run the analysis first).")
    p = _paths(paths)
    try:
        h = _in_child(qi.activation_histogram, p["fp32"], tensor, image, {"ptq": p["ptq"], "qat": p["qat"]},
                      what="The histogram",
                                    threads=threads or config.THREADS)
    except QatieError as e:
        raise gr.Error(str(e)) from None
    v = h["values"]
    lines = [f"**{h['name']}** ({h['stage']}): FP32 values on this photo span [{v['min']:.4g}, {v['max']:.4g}]; "
             f"99.98 % lie in [{v['p0.01']:.4g}, {v['p99.99']:.4g}]."]
    for r in h["ranges"]:
        clip = 100 * (r["clipped_low"] + r["clipped_high"])
        lines.append(f"- **{r['label'].upper()}**: range [{r['grid_min']:.4g}, {r['grid_max']:.4g}], step "
                     f"**{r['step']:.4g}** (in the tensor's units); this photo uses {r['levels_used']} of the 256 "
                     f"levels" + (f", {clip:.3g} % of its values are clipped" if clip else ", nothing clipped") + ".")
    return qi.plot_histogram(h), "\n".join(lines)


def fp32_checkpoint(paths: dict) -> Path:
    """The FP32 .pt checkpoint behind a model set: `fp32.pt` beside the FP32 ONNX, else the PTQ
    sidecar's `meta.checkpoint` (relative paths: to the repository, then to the sidecar)."""
    p = _paths(paths)
    cands = [p["fp32"].with_suffix(".pt"), p["fp32"].parent / "fp32.pt"]
    try:
        ck = qi.read_sidecar(p["ptq"]).get("meta", {}).get("checkpoint")
    except QatieError:
        ck = None
    if ck:
        cands += [Path(ck), config.REPO_ROOT / ck, p["ptq"].parent / Path(ck).name]
    for c in cands:
        if c.is_file():
            return c
    raise gr.Error("This model set has no FP32 checkpoint (.pt) to build PTQ variants from.")


def calibration_frame(rows: list[dict]) -> pd.DataFrame:
    data = []
    for r in rows:
        data.append({"calibration": r["method"], "PSNR vs FP32 dB": _fmt(r["psnr_vs_fp32"]),
                     "latency ms": f"{r['latency_ms']:.0f}", "× FP32": f"{r['latency_vs_fp32']:.2f}",
                     "tensors clipped vs minmax": "" if r["clipped_tensors"] is None else r["clipped_tensors"],
                     "median step vs minmax": "" if r["median_scale_vs_minmax"] is None
                     else f"{r['median_scale_vs_minmax']:.2f}"})
    return pd.DataFrame(data)


def calib_settings(paths: dict) -> dict:
    """The calibration settings of the set's PTQ model (its sidecar meta), so the minmax row
    rebuilds that very model; defaults where the sidecar does not say."""
    try:
        meta = qi.read_sidecar(_paths(paths)["ptq"]).get("meta", {})
    except QatieError:
        meta = {}
    spec = str(meta.get("calib", "samples"))
    kind, _, where = spec.partition(":")
    local = _paths(paths)["ptq"].parent / where if where and not Path(where).is_absolute() else None
    if local is not None and local.exists():  # a trained set names its photos relative to its folder
        spec = f"{kind}:{local}"
    elif kind in ("clean", "pairs", "dped") and not all(Path(w).exists() for w in where.split(":")[0].split(",")):
        # The set was calibrated on photos this server does not have (a public demo carries no
        # training data): the built-in sample photos stand in, and the note says so.
        spec = SUBSTITUTE_CALIB
    return {"calib_spec": spec, "num_calib": int(meta.get("num_calib", 8)), "seed": int(meta.get("seed", 0))}


SUBSTITUTE_CALIB = "samples"


def calib_source(settings: dict, paths: dict) -> str:
    """Where the calibration crops come from, in words for the notes."""
    recorded = str(qi.read_sidecar(_paths(paths)["ptq"]).get("meta", {}).get("calib", "samples"))
    if settings["calib_spec"] == SUBSTITUTE_CALIB and recorded != SUBSTITUTE_CALIB:
        return ("the built-in sample photos (the set's own calibration photos are not on this server, so these "
                "PTQ models differ from the shipped one)")
    return f"`{settings['calib_spec']}` (as the set's PTQ model)"


def calibration(image, paths: dict, num_calib: int | None = None, threads: int | None = None, progress=gr.Progress()):
    """PTQ with each calibration method, on this photo → (DataFrame, markdown)."""
    image = _need_image(image)
    ckpt = fp32_checkpoint(paths)
    settings = calib_settings(paths)
    if num_calib:
        settings["num_calib"] = num_calib
    num_calib = settings["num_calib"]
    progress(0.05, desc=f"building PTQ models (cached after the first time; at most "
                        f"{config.INSPECT_BUILD_DEADLINE_S:.0f} s)")
    try:
        rows = _in_child(qi.compare_calibration, ckpt, [image], threads=threads or config.THREADS, **settings,
                         what="Comparing calibration methods", slow=True)
    except QatieError as e:
        raise gr.Error(str(e)) from None
    note = ("PSNR of each PTQ model's output against the FP32 output on this photo; latency: median of 3 runs in "
            "ONNX Runtime on this machine. *Clipped*: tensors whose calibrated range is narrower than the observed "
            f"min–max. Calibrated on {num_calib} crops of {calib_source(settings, paths)}; see docs/inspect.md for "
            "why entropy calibration clips so hard.")
    return calibration_frame(rows), note


def parse_k(text: str) -> list[int]:
    try:
        ks = sorted({int(t) for t in str(text).replace(" ", "").split(",") if t != ""})
    except ValueError:
        raise gr.Error(f"K values must be integers separated by commas, got {text!r}") from None
    if not ks or any(k < 0 or k > 35 for k in ks):
        raise gr.Error("K values must be between 0 and 35 (the network has 35 convs).")
    return ks


def mixed_frame(rows: list[dict]) -> pd.DataFrame:
    data = []
    for r in rows:
        layers = r["layers"]
        data.append({"K": "FP32" if r["K"] is None else r["K"], "PSNR vs FP32 dB": _fmt(r["psnr_vs_fp32"]),
                     "latency ms": f"{r['latency_ms']:.0f}", "× FP32": f"{r['latency_vs_fp32']:.2f}",
                     "float convs": ", ".join(layers[:8]) + (" …" if len(layers) > 8 else "")})
    return pd.DataFrame(data)


def mixed_precision(image, paths: dict, k_values: str = DEFAULT_K, num_calib: int | None = None,
                    threads: int | None = None, progress=gr.Progress()):
    """Trade-off curve for K convs kept float, measured on this photo → (Figure, DataFrame, markdown)."""
    image = _need_image(image)
    ks = parse_k(k_values)
    ckpt = fp32_checkpoint(paths)
    steps = {"n": 0}

    def tick(msg: str):
        steps["n"] += 1
        progress(min(0.95, steps["n"] / (len(ks) + 2)), desc=msg)

    try:
        st = calib_settings(paths)
        tick(f"building and ranking PTQ models (at most {config.INSPECT_BUILD_DEADLINE_S:.0f} s)")
        rows = _in_child(qi.trade_off_curve, ckpt, ks, [image], what="The mixed-precision measurement", slow=True,
                         calib=st["calib_spec"], num_calib=num_calib or st["num_calib"],
                         seed=st["seed"], threads=threads or config.THREADS, progress=None)
    except QatieError as e:
        raise gr.Error(str(e)) from None
    note = ("Each point is a PTQ (minmax) model with the K convs whose float island helped most in the per-conv "
            "sensitivity analysis (leave-one-float, PSNR vs FP32 on calibration crops) kept float; PSNR vs FP32 "
            f"and latency are measured on this photo on this machine. Calibration crops: {calib_source(st, paths)}.")
    return qi.plot_trade_off(rows), mixed_frame(rows), note
