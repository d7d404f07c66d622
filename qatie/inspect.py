"""Where does the INT8 error come from? Per-tensor SQNR, activation ranges, calibration choice.

Torch-free (ONNX Runtime + numpy + matplotlib), so the app can call it on its inference path;
only `compare_calibration` builds PTQ models and imports torch, lazily, inside the call.

* `layer_sqnr(fp32_onnx, [ptq_onnx, qat_onnx], image)` — for one image, the signal-to-
  quantization-noise ratio of every quantized tensor of the INT8 models' sidecars, INT8 vs FP32.
  Each model runs once with every sidecar tensor exposed as an extra graph output (an in-memory
  copy of the graph; sessions are cached per file). The INT8 models expose the *quantized*
  (uint8) tensor — the output of the QuantizeLinear node, i.e. what the integer kernels really
  produce; exposing it keeps all 35 QLinearConv fusions — and it is dequantized here with the
  scale and zero point read from the graph. The FP32 model exposes the sidecar's `onnx_tensor`
  (the float tensor at the same point). SQNR_dB = 10·log10(Σ fp32² / Σ (int8 − fp32)²) over
  the image area (padding cropped off at every scale); identical tensors give +inf.
  The error is *cumulative*: it includes everything upstream. `range_sqnr_<label>_db` is the
  local part: the FP32 tensor quantized alone with that model's (scale, zero point), i.e. what
  this tensor's range and step cost on this image, independent of upstream layers.
* `activation_histogram` / `plot_histogram` — one tensor's FP32 values on the image with each
  INT8 model's [min, max] and step drawn on it (why a range loses detail: tails, outliers).
* `plot_sqnr` — the bar chart (PTQ and QAT side by side, grouped by network stage, worst
  highlighted); `write_json` / `write_csv` / `format_table` — the same as files and text.
* `compare_calibration` — PTQ with minmax / percentile / entropy calibration scored on images
  (PSNR vs FP32 output, latency), models cached per checkpoint content and settings.

ONNX Runtime's `onnxruntime.quantization.qdq_loss_debug` does the same exposed-outputs trick,
but it matches tensors by the naming scheme of ORT's own quantizer (`*_QuantizeLinear_Output`)
and saves augmented models to disk; our sidecar already names every pair, so this module pairs
them directly and keeps the modified sessions in memory.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .evaluate import jsonable
from .errors import ModelFileError, QatieError
from .padding import pad_nchw

#: Images are analysed at most this large (longer side, pixels): every quantized tensor of the
#: network is held in memory at once (~535 values per input pixel for width 32: 315 MB of
#: float32 at 384×384), so a 12 MP photo would need gigabytes. Larger images are downscaled
#: (box filter) first; the result says which size was analysed.
DEFAULT_MAX_SIDE = 384

#: Network stages in forward order, and the QPoint / conv name prefixes that belong to them.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input", ("q_input",)),
    ("encoder 1 (full→½)", ("enc1",)),
    ("refine S/2", ("ref_s2",)),
    ("encoder 2", ("enc2",)),
    ("refine S/4", ("ref_s4",)),
    ("bottleneck S/8", ("q_pool", "bottleneck")),
    ("fusion S/4", ("up4", "fuse4", "ref_f4")),
    ("fusion S/2", ("up2", "fuse2", "ref_f2")),
    ("output", ("up1", "delta", "q_delta", "q_delta_phases", "q_output")),
)
STAGE_NAMES = tuple(s for s, _ in STAGES)


def stage_of(name: str) -> str:
    """Human name of the network stage of a QPoint (`ref_s2.q.t_act`) or conv (`up1.conv`)."""
    head = name.split(".", 1)[0].split("/", 1)[0]
    for stage, prefixes in STAGES:
        if head in prefixes:
            return stage
    return "other"


# --------------------------------------------------------------------------------------------
# Sidecars and labels
# --------------------------------------------------------------------------------------------

def read_sidecar(model) -> dict:
    """The sidecar of an INT8 model: `model` is the .onnx path, the .json path or the dict."""
    if isinstance(model, Mapping):
        return dict(model)
    p = Path(model)
    side = p if p.suffix.lower() == ".json" else p.with_suffix(".json")
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{p}: no quantization sidecar {side.name} next to it (is it an INT8 qatie model?)") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{side}: unreadable quantization sidecar ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), list):
        raise ModelFileError(f"{side}: not a qatie quantization sidecar (no 'tensors' list)")
    return data


def model_label(path, sidecar: dict | None = None) -> str:
    """Short label of an INT8 model: 'ptq' / 'qat' from the sidecar's source, else the file stem."""
    src = str((sidecar or {}).get("source", ""))
    if src.startswith("ptq"):
        return "ptq"
    if src.startswith("qat"):
        return "qat"
    return re.sub(r"[^A-Za-z0-9_]+", "_", Path(path).stem).strip("_").lower() or "int8"


def _labels_for(paths: Sequence, sidecars: Sequence[dict], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != len(paths):
            raise QatieError(f"{len(labels)} labels for {len(paths)} INT8 models")
        if len(set(labels)) != len(labels):
            raise QatieError(f"labels must differ: {labels}")
        return labels
    out: list[str] = []
    for p, s in zip(paths, sidecars):
        lab = model_label(p, s)
        if lab in out:  # two PTQ models: fall back to file stems, then numbering
            lab = model_label(p, None)
        base, i = lab, 2
        while lab in out:
            lab, i = f"{base}_{i}", i + 1
        out.append(lab)
    return out


# --------------------------------------------------------------------------------------------
# Probe sessions: a model with every quantized tensor as an extra output
# --------------------------------------------------------------------------------------------

class _Probe:
    """An ORT session of `path` with the tensors of `tensors` (sidecar entries) as extra outputs.

    INT8 (QDQ) models expose each point's quantized tensor and dequantize it here; FP32 models
    expose the float tensor the sidecar names (`onnx_tensor`)."""

    def __init__(self, path: Path, tensors: list[dict], threads: int):
        import onnx
        import onnxruntime as ort

        from .runtime import session_options

        self.path = path
        try:
            proto = onnx.load(str(path))
        except Exception as e:
            raise ModelFileError(f"ONNX model {path} could not be read ({type(e).__name__}: {str(e)[:200]})") from None
        g = proto.graph
        inits = {i.name: i for i in g.initializer}
        producers = {o: n for n in g.node for o in n.output}
        by_name = {n.name: n for n in g.node}
        input_names = {i.name for i in g.input}
        self.int8 = any(n.op_type == "DequantizeLinear" for n in g.node)
        # name → (graph tensor to fetch, scale, zero_point) — scale None: a float tensor
        self.fetch: dict[str, tuple[str, float | None, int]] = {}
        self.channels: dict[str, tuple[int, int]] = {}  # INT8 points merged into a wider conv (graph_opt)
        missing = []
        for t in tensors:
            name = t["name"]
            if self.int8:
                node = producers.get(t.get("dq_tensor", ""))
                if node is None or node.op_type != "DequantizeLinear":
                    node = by_name.get(name.replace(".", "/") + "/DQ")
                if (node is None or node.op_type != "DequantizeLinear") and t.get("q_tensor") in producers:
                    # No DQ left (graph_opt drops the ones nothing reads): the uint8 tensor itself.
                    if t.get("channels"):
                        self.channels[name] = tuple(t["channels"])
                    node = producers[t["q_tensor"]]
                    if node.op_type != "QuantizeLinear":  # a tanh lookup table or uint8 copies
                        self.fetch[name] = (t["q_tensor"], float(t["scale"]), int(t["zero_point"]))
                        continue  # (a Q node's own parameters, below, are the graph's truth)
                if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):  # sidecars before q_tensor
                    node = by_name.get(name.replace(".", "/") + "/Q")
                if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
                    missing.append(name)
                    continue
                is_dq = node.op_type == "DequantizeLinear"
                s, z = (inits.get(node.input[1]), inits.get(node.input[2]) if len(node.input) > 2 else None)
                if s is None and is_dq:  # scale computed at run time: fetch the float output instead
                    self.fetch[name] = (node.output[0], None, 0)
                elif s is None:
                    missing.append(name)
                else:
                    scale = float(onnx.numpy_helper.to_array(s).reshape(-1)[0])
                    zp = int(onnx.numpy_helper.to_array(z).reshape(-1)[0]) if z is not None else 0
                    self.fetch[name] = (node.input[0] if is_dq else node.output[0], scale, zp)
            else:
                src = t.get("onnx_tensor", "")
                if src in producers or src in input_names:
                    self.fetch[name] = (src, None, 0)
                else:
                    missing.append(name)
        self.missing = missing  # points this graph has no tensor for (reported as None)
        if tensors and len(missing) == len(tensors):
            kind = "INT8" if self.int8 else "FP32"
            raise ModelFileError(
                f"{kind} model {path} has no tensor for any of the {len(tensors)} quantization points of the "
                f"sidecar (first: {missing[0]}); it was not exported from the same network")
        outputs = {o.name for o in g.output}
        self.output_name = g.output[0].name
        self.extra = []
        for src, _, _ in self.fetch.values():
            if src not in outputs and src not in input_names and src not in self.extra:
                self.extra.append(src)
        for src in self.extra:
            g.output.append(onnx.helper.make_empty_tensor_value_info(src))
        try:
            options = session_options(threads)
            # Every exposed tensor is a fresh output buffer: with the arena on, ORT would keep the
            # peak (hundreds of MB) reserved for the life of the session.
            options.enable_cpu_mem_arena = False
            self.session = ort.InferenceSession(proto.SerializeToString(), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelFileError(f"ONNX model {path} could not be loaded ({type(e).__name__}: {str(e)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray, crop_hw: tuple[int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run on a padded N×3×H×W input; returns (output, {point name: raw array cropped to the
        image area at the tensor's own scale}) — raw: uint8 for an INT8 model's points (see
        `value`), float32 otherwise."""
        names = [self.output_name] + self.extra
        values = dict(zip(names, self.session.run(names, {self.input_name: x})))
        values[self.input_name] = x
        hp, wp = x.shape[2], x.shape[3]
        h, w = crop_hw
        acts = {}
        for name, (src, _, _) in self.fetch.items():
            a = values[src]
            if name in self.channels:  # a point merged into a wider conv: its channels of that output
                a = a[:, self.channels[name][0]:self.channels[name][1]]
            if a.ndim == 4:
                a = a[:, :, :math.ceil(h * a.shape[2] / hp), :math.ceil(w * a.shape[3] / wp)]
            acts[name] = a
        return values[self.output_name], acts

    def value(self, name: str, raw: np.ndarray) -> np.ndarray:
        """A point's raw array (from `run`) as float32 in the tensor's own units."""
        _, scale, zp = self.fetch[name]
        if scale is None:
            return np.asarray(raw, dtype=np.float32)
        return (raw.astype(np.float32) - np.float32(zp)) * np.float32(scale)


_PROBES: "OrderedDict[tuple, _Probe]" = OrderedDict()
_PROBES_LOCK = threading.Lock()
_PROBES_MAX = 6


def _probe(path, tensors: list[dict], threads: int) -> _Probe:
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise ModelFileError(f"ONNX model {path} cannot be read: {e}") from None
    names = hashlib.sha1("|".join(f"{t['name']}:{t.get('onnx_tensor')}:{t.get('dq_tensor')}" for t in tensors).encode()).hexdigest()
    key = (str(p), st.st_mtime_ns, st.st_size, names, threads)
    with _PROBES_LOCK:
        probe = _PROBES.get(key)
        if probe is not None:
            _PROBES.move_to_end(key)
            return probe
    probe = _Probe(p, tensors, threads)
    probe.key = key
    with _PROBES_LOCK:
        _PROBES[key] = probe
        while len(_PROBES) > _PROBES_MAX:
            _PROBES.popitem(last=False)
    return probe


def clear_cache() -> None:
    """Forget the cached probe sessions and activations."""
    with _PROBES_LOCK:
        _PROBES.clear()
    with _ACTS_LOCK:
        _ACTS.clear()


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def _as_float_image(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from .imageio import read_image

        image = read_image(image)
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise QatieError(f"image must be an H×W×3 RGB array, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(img.dtype, np.floating):
        raise QatieError(f"image must be float in [0,1] or uint8, got dtype {img.dtype}")
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def fit_image(image, max_side: int | None = DEFAULT_MAX_SIDE) -> np.ndarray:
    """H×W×3 float32 in [0,1], box-downscaled so the longer side is at most `max_side` (and
    then rounded to 8-bit levels)."""
    img = _as_float_image(image)
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    from PIL import Image

    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize(size, Image.BOX)) for c in range(3)]
    out = np.clip(np.stack(chans, axis=2), 0.0, 1.0)
    # Back onto the 8-bit grid a photo comes on (and the network input is quantized to), so the
    # input tensor stays exact and only the network's own quantization shows.
    return (np.round(out * 255.0) / np.float32(255.0)).astype(np.float32)


def _nchw(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    x, _ = pad_nchw(np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32))
    return np.ascontiguousarray(x), img.shape[:2]


def _digest(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest() + str(img.shape)


# The last reference activations (one image, one model): picking layers for the histogram after
# an SQNR run must not run the FP32 model again. Holds ~250 floats per analysed pixel.
_ACTS: "OrderedDict[tuple, dict]" = OrderedDict()
_ACTS_LOCK = threading.Lock()


def _activations(path, tensors: list[dict], img: np.ndarray, threads: int, keep: bool = False) -> dict[str, np.ndarray]:
    probe = _probe(path, tensors, threads)
    key = (probe.key, _digest(img))
    with _ACTS_LOCK:
        if key in _ACTS:
            return _ACTS[key]
    x, hw = _nchw(img)
    _, raw = probe.run(x, hw)
    acts = {}
    for name in list(raw):
        acts[name] = np.ascontiguousarray(probe.value(name, raw.pop(name)))
    if keep:
        with _ACTS_LOCK:
            _ACTS.clear()
            _ACTS[key] = acts
    return acts


# --------------------------------------------------------------------------------------------
# SQNR
# --------------------------------------------------------------------------------------------

def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10·log10(Σ ref² / Σ (test − ref)²) in dB; +inf when identical, −inf for a zero reference."""
    ref = np.asarray(reference, dtype=np.float32)
    diff = np.asarray(test, dtype=np.float32) - ref
    noise = float(np.sum(np.square(diff, dtype=np.float64)))
    if noise == 0.0:
        return math.inf
    signal = float(np.sum(np.square(ref, dtype=np.float64)))
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def fake_quant(x: np.ndarray, scale: float, zero_point: int, qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """numpy QuantizeLinear → DequantizeLinear (round half to even, as ONNX does)."""
    s = np.float32(scale)
    q = np.clip(np.rint(x / s) + zero_point, qmin, qmax)
    return ((q - zero_point) * s).astype(np.float32)


def _reference_tensors(sidecars: list[dict]) -> list[dict]:
    """The union of the sidecars' tensors, in the first sidecar's (network) order."""
    seen, out = set(), []
    for s in sidecars:
        for t in s["tensors"]:
            if t["name"] not in seen:
                seen.add(t["name"])
                out.append(t)
    return out


def inspect_image(fp32_onnx, int8_onnx_list: Sequence, image, labels: Sequence[str] | None = None,
                  threads: int = 2, max_side: int | None = DEFAULT_MAX_SIDE) -> dict:
    """Per-tensor SQNR of each INT8 model against `fp32_onnx` on one image, with context.

    Returns {"image_size": [H, W], "analysed_size": [h, w], "models": {"fp32": path, label:
    path, ...}, "labels": [...], "layers": rows} — rows as in `layer_sqnr`. `fp32_onnx` may
    also be an INT8 model (then two INT8 models are compared tensor by tensor)."""
    if not int8_onnx_list:
        raise QatieError("no INT8 models to inspect")
    paths = [Path(p) for p in int8_onnx_list]
    sidecars = [read_sidecar(p) for p in paths]
    labels = _labels_for(paths, sidecars, labels)
    full = _as_float_image(image)
    img = fit_image(full, max_side)
    tensors = _reference_tensors(sidecars)
    ref = _activations(fp32_onnx, tensors, img, threads, keep=True)
    rows = [{"name": t["name"], "stage": stage_of(t["name"])} for t in tensors]
    for label, path, side in zip(labels, paths, sidecars):
        own = {t["name"]: t for t in side["tensors"]}
        probe = _probe(path, side["tensors"], threads)
        x, hw = _nchw(img)
        _, raw = probe.run(x, hw)
        for row in rows:
            name = row["name"]
            if name not in raw or name not in ref:
                row[f"sqnr_{label}_db"] = row[f"range_sqnr_{label}_db"] = None
                continue
            r = ref[name]
            row[f"sqnr_{label}_db"] = sqnr_db(r, probe.value(name, raw.pop(name)))
            src, scale, zp = probe.fetch[name]
            if scale is None:
                scale, zp = own[name]["scale"], own[name]["zero_point"]
            row[f"range_sqnr_{label}_db"] = sqnr_db(r, fake_quant(r, scale, zp))
        del raw
    return {"image_size": list(full.shape[:2]), "analysed_size": list(img.shape[:2]),
            "models": {"fp32": str(fp32_onnx), **{lab: str(p) for lab, p in zip(labels, paths)}},
            "labels": labels, "layers": rows}


def layer_sqnr(fp32_onnx, int8_onnx_list: Sequence, image, labels: Sequence[str] | None = None,
               threads: int = 2, max_side: int | None = DEFAULT_MAX_SIDE) -> list[dict]:
    """One row per quantized tensor of the INT8 sidecars, in network order:
    {name, stage, sqnr_<label>_db, range_sqnr_<label>_db for each INT8 model}; labels are
    'ptq'/'qat' from the sidecars' `source` (so the usual rows read {name, stage, sqnr_ptq_db,
    sqnr_qat_db, ...}). SQNR is +inf where a tensor is identical to the reference.
    `image`: H×W×3 (float [0,1] or uint8) or an image file; larger than `max_side` is downscaled."""
    return inspect_image(fp32_onnx, int8_onnx_list, image, labels, threads, max_side)["layers"]


def sqnr_keys(rows: list[dict]) -> list[str]:
    """The labels present in SQNR rows, in column order ('ptq', 'qat', ...)."""
    if not rows:
        return []
    return [k[5:-3] for k in rows[0] if k.startswith("sqnr_") and k.endswith("_db")]


def worst_layers(rows: list[dict], label: str, n: int = 5, key: str = "sqnr") -> list[str]:
    """Names of the `n` tensors with the lowest finite `<key>_<label>_db` (key: 'sqnr' or
    'range_sqnr')."""
    col = f"{key}_{label}_db"
    vals = [(r[col], r["name"]) for r in rows if r.get(col) is not None and math.isfinite(r[col])]
    return [name for _, name in sorted(vals)[:n]]


def _fmt_db(v) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.1f}"


def format_table(result_or_rows, worst: int = 5) -> str:
    """Plain-text table: one line per tensor, SQNR (cumulative) and range-only SQNR per model,
    the `worst` lowest cumulative SQNRs of each model marked ◀."""
    rows = result_or_rows["layers"] if isinstance(result_or_rows, dict) else result_or_rows
    labels = sqnr_keys(rows)
    worst_sets = {lab: set(worst_layers(rows, lab, worst)) for lab in labels}
    w = max([len("tensor")] + [len(r["name"]) for r in rows])
    sw = max([len("stage")] + [len(r["stage"]) for r in rows])
    head = f"{'tensor':<{w}}  {'stage':<{sw}}"
    for lab in labels:
        head += f"  {lab.upper() + ' dB':>9}  {'range dB':>8}"
    lines = ["SQNR vs FP32 (dB; higher is better; 'range' = this tensor's own quantization only)", head, "-" * len(head)]
    for r in rows:
        line = f"{r['name']:<{w}}  {r['stage']:<{sw}}"
        marks = []
        for lab in labels:
            line += f"  {_fmt_db(r.get(f'sqnr_{lab}_db')):>9}  {_fmt_db(r.get(f'range_sqnr_{lab}_db')):>8}"
            if r["name"] in worst_sets[lab]:
                marks.append(lab.upper())
        if marks:
            line += "  ◀ worst " + "/".join(marks)
        lines.append(line)
    for lab in labels:
        lines.append(f"worst {lab.upper()}: " + ", ".join(
            f"{n} ({_fmt_db(next(r[f'sqnr_{lab}_db'] for r in rows if r['name'] == n))})" for n in worst_layers(rows, lab, worst)))
        lines.append(f"lowest range-only {lab.upper()}: " + ", ".join(worst_layers(rows, lab, worst, "range_sqnr")))
    return "\n".join(lines)


_jsonable = jsonable  # strict-JSON copy: non-finite floats → None (shared with qatie eval)


def write_json(result: dict, path, image_name: str | None = None) -> Path:
    """Write an `inspect_image` result as strict JSON ({"image", ..., "layers": [...]}; an
    infinite SQNR — identical tensors — is written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"image": image_name, **result}
    path.write_text(json.dumps(_jsonable(payload), indent=1, allow_nan=False, ensure_ascii=False))
    return path


def write_csv(rows_or_result, path) -> Path:
    """One CSV row per tensor: name, stage, sqnr_<label>_db..., range_sqnr_<label>_db...
    (inf written as 'inf', missing as empty)."""
    rows = rows_or_result["layers"] if isinstance(rows_or_result, dict) else rows_or_result
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else ["name", "stage"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=fields)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v))
                         for k, v in r.items()})
    return path


# --------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------

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
    ax.set_xticks(xs)
    ax.set_xticklabels([_short(r["name"]) for r in rows], rotation=90, fontsize=6)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_ylim(bottom, top)
    ax.set_ylabel("SQNR vs FP32 (dB, higher = closer)")
    ax.grid(axis="y", alpha=0.3, zorder=1)
    ax.legend(loc="lower left", fontsize=8, ncol=n + 1, title=f"red outline: {worst} lowest", title_fontsize=7)
    ax.set_title(title or "Quantization noise per tensor on this image (INT8 vs FP32)", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Activation ranges
# --------------------------------------------------------------------------------------------

def _find_tensor(sidecars: list[dict], tensor_name: str) -> dict:
    for s in sidecars:
        for t in s["tensors"]:
            if tensor_name in (t["name"], t.get("onnx_tensor"), t.get("dq_tensor")):
                return t
    names = [t["name"] for t in sidecars[0]["tensors"]] if sidecars else []
    raise QatieError(f"no quantized tensor {tensor_name!r}; known: {', '.join(names[:8])}, …")


def _sidecar_items(sidecars) -> tuple[list[str], list[dict]]:
    if isinstance(sidecars, Mapping):
        items = list(sidecars.items())
        return [str(k) for k, _ in items], [read_sidecar(v) for _, v in items]
    if isinstance(sidecars, (str, os.PathLike)):
        sidecars = [sidecars]
    sides = [read_sidecar(s) for s in sidecars]
    paths = [s if not isinstance(s, Mapping) else s.get("model", f"model{i}") for i, s in enumerate(sidecars)]
    return _labels_for(paths, sides, None), sides


def activation_histogram(fp32_onnx, tensor_name: str, image, sidecars, bins: int = 256, threads: int = 2,
                         max_side: int | None = DEFAULT_MAX_SIDE) -> dict:
    """Histogram of one quantized tensor's FP32 values on `image`, with each INT8 model's range.

    `tensor_name`: a QPoint name (`enc1.q_a`) or its ONNX tensor name. `sidecars`: INT8 model
    paths (.onnx or .json), sidecar dicts, or {label: one of those}. Returns {name, stage,
    onnx_tensor, analysed_size, values: {count, min, max, mean, std, p0.01, p99.99}, counts,
    edges, ranges: [{label, min, max, scale, zero_point, step, levels, clipped_low, clipped_high,
    levels_used}]} — `step` is the quantization step in the tensor's own units (= scale),
    `clipped_*` the share of this image's values outside the range, `levels_used` how many of
    the 256 levels this image's values actually span."""
    labels, sides = _sidecar_items(sidecars)
    if not sides:
        raise QatieError("activation_histogram needs at least one INT8 sidecar")
    t = _find_tensor(sides, tensor_name)
    img = fit_image(image, max_side)
    acts = _activations(fp32_onnx, _reference_tensors(sides), img, threads, keep=True)
    if t["name"] not in acts:
        raise QatieError(f"{fp32_onnx}: the model has no tensor for {t['name']} ({t.get('onnx_tensor')})")
    v = acts[t["name"]].ravel()
    vmin, vmax = float(v.min()), float(v.max())
    ranges = []
    for lab, s in zip(labels, sides):
        entry = next((e for e in s["tensors"] if e["name"] == t["name"]), None)
        if entry is None:
            continue
        scale, zp = float(entry["scale"]), int(entry["zero_point"])
        lo, hi = (0 - zp) * scale, (255 - zp) * scale  # the grid the model really uses (0 included)
        used_lo, used_hi = max(vmin, lo), min(vmax, hi)
        ranges.append({"label": lab, "min": float(entry.get("min", lo)), "max": float(entry.get("max", hi)),
                       "grid_min": lo, "grid_max": hi, "scale": scale, "zero_point": zp, "step": scale,
                       "levels": 256, "clipped_low": float(np.mean(v < lo - scale / 2)),
                       "clipped_high": float(np.mean(v > hi + scale / 2)),
                       "levels_used": int(max(0, round((used_hi - used_lo) / scale)) + 1)})
    lo_edge = min([vmin] + [r["grid_min"] for r in ranges])
    hi_edge = max([vmax] + [r["grid_max"] for r in ranges])
    if hi_edge <= lo_edge:
        hi_edge = lo_edge + 1e-6
    counts, edges = np.histogram(v, bins=bins, range=(lo_edge, hi_edge))
    p_lo, p_hi = np.percentile(v, [0.01, 99.99])
    return {"name": t["name"], "stage": stage_of(t["name"]), "onnx_tensor": t.get("onnx_tensor"),
            "analysed_size": list(img.shape[:2]),
            "values": {"count": int(v.size), "min": vmin, "max": vmax, "mean": float(v.mean()), "std": float(v.std()),
                       "p0.01": float(p_lo), "p99.99": float(p_hi)},
            "counts": counts.tolist(), "edges": edges.tolist(), "ranges": ranges}


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


# --------------------------------------------------------------------------------------------
# Calibration choice (builds PTQ models: imports torch lazily)
# --------------------------------------------------------------------------------------------

def file_sha(path, n: int = 16) -> str:
    from .report import sha256

    return sha256(Path(path))[:n]


def cache_dir(cache=None) -> Path:
    """Where built models are cached: `cache`, else $QATIE_CACHE_DIR, else <tmp>/qatie-cache."""
    d = Path(cache or os.environ.get("QATIE_CACHE_DIR") or Path(tempfile.gettempdir()) / "qatie-cache")
    d.mkdir(parents=True, exist_ok=True)
    return d


#: Part of every cache key: exports made under another QuantSpec version (or export form) are stale.
EXPORT_FORM = "spec2-delta2x2"  # v2 QuantSpec; delta as a 2×2 conv on up1's phases


def cached_fp32_onnx(fp32_checkpoint, cache=None) -> Path:
    """The FP32 ONNX export of a checkpoint, cached by the checkpoint's content."""
    out = cache_dir(cache) / f"fp32-{file_sha(fp32_checkpoint)}-{EXPORT_FORM}.onnx"
    if not out.is_file():
        from .checkpoint import load_model
        from .export import export_fp32

        tmp = out.with_name(f".{out.stem}.{os.getpid()}.onnx")
        export_fp32(load_model(fp32_checkpoint), tmp)
        os.replace(tmp, out)
    return out


def cached_ptq(fp32_checkpoint, method: str = "minmax", calib: str = "samples", num_calib: int = 32,
               percentile: float = 99.99, seed: int = 0, keep_float=None, cache=None) -> Path:
    """`run_ptq` for these settings, cached in `cache_dir` by checkpoint content + settings."""
    kf = keep_float if isinstance(keep_float, str) or keep_float is None else ",".join(sorted(keep_float))
    settings = json.dumps([EXPORT_FORM, method, calib, num_calib, percentile if method == "percentile" else None, seed, kf])
    key = hashlib.sha256(settings.encode()).hexdigest()[:10]
    out = cache_dir(cache) / f"ptq-{file_sha(fp32_checkpoint)}-{method}-{key}.onnx"
    if not (out.is_file() and out.with_suffix(".json").is_file()):
        from .ptq import run_ptq

        run_ptq(fp32_checkpoint, out, method=method, calib=calib, num_calib=num_calib, percentile=percentile,
                seed=seed, **({"keep_float": keep_float} if keep_float else {}))
    return out


def _image_list(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [_as_float_image(images)]
    out = []
    for im in images:
        if isinstance(im, tuple):  # (name, input[, target]) pairs, as evaluate uses
            im = im[1]
        out.append(_as_float_image(im))
    if not out:
        raise QatieError("no images to score")
    return out


def score_models(fp32_onnx, models: Mapping[str, Path], images, threads: int = 2, latency_runs: int = 3,
                 latency_image: np.ndarray | None = None) -> dict[str, dict]:
    """PSNR of each model's output vs the FP32 output (mean over images) and latency (median of
    `latency_runs` after one warm-up, on `latency_image` or the first image), all in ORT."""
    from .metrics import psnr
    from .runtime import OnnxEnhancer, measure_latency

    imgs = _image_list(images)
    fp32 = OnnxEnhancer(fp32_onnx, threads=threads)
    refs = [fp32.enhance(im) for im in imgs]
    lat_img = imgs[0] if latency_image is None else _as_float_image(latency_image)
    out = {"fp32": {"model": str(fp32_onnx), "psnr_vs_fp32": math.inf,
                    "latency_ms": measure_latency(lambda: fp32.enhance(lat_img), 1, latency_runs)["median_ms"]}}
    for name, path in models.items():
        enh = OnnxEnhancer(path, threads=threads)
        per = [psnr(enh.enhance(im), r) for im, r in zip(imgs, refs)]
        fin = [p for p in per if math.isfinite(p)]
        out[name] = {"model": str(path), "psnr_vs_fp32": float(np.mean(fin)) if fin else math.inf,
                     "psnr_vs_fp32_per_image": per,
                     "latency_ms": measure_latency(lambda: enh.enhance(lat_img), 1, latency_runs)["median_ms"]}
    out["fp32"]["latency_image"] = list(lat_img.shape[:2])
    return out


def compare_calibration(fp32_checkpoint, images, calib_spec: str = "samples",
                        methods: Sequence[str] = ("minmax", "percentile", "entropy"), num_calib: int = 32,
                        percentile: float = 99.99, seed: int = 0, threads: int = 2, latency_runs: int = 3,
                        cache=None) -> list[dict]:
    """PTQ of `fp32_checkpoint` with each calibration method, scored on `images`.

    images: one H×W×3 array, a list of them, or (name, input, target) pairs (the input is used).
    Each PTQ model (and the FP32 ONNX reference) is built once and cached under `cache_dir(cache)`
    by checkpoint content + settings, so repeated calls only run inference.
    Returns one row per method, after an FP32 row: {method, model, psnr_vs_fp32 (dB, mean over
    images; inf = identical), psnr_vs_fp32_per_image, latency_ms (median, ORT, `threads`),
    latency_vs_fp32, clipped_tensors (how many tensors' ranges are narrower than minmax's),
    median_scale_vs_minmax}. Needs torch (imported only here, to build the models)."""
    imgs = _image_list(images)
    fp32_onnx = cached_fp32_onnx(fp32_checkpoint, cache)
    paths = {m: cached_ptq(fp32_checkpoint, m, calib_spec, num_calib, percentile, seed, cache=cache) for m in methods}
    scores = score_models(fp32_onnx, paths, imgs, threads=threads, latency_runs=latency_runs)
    base = None
    if "minmax" in paths:
        base = {t["name"]: t for t in read_sidecar(paths["minmax"])["tensors"]}
    fp = scores["fp32"]
    rows = [{"method": "fp32", "model": fp["model"], "psnr_vs_fp32": math.inf, "psnr_vs_fp32_per_image": None,
             "latency_ms": fp["latency_ms"], "latency_vs_fp32": 1.0, "clipped_tensors": None,
             "median_scale_vs_minmax": None}]
    for m in methods:
        s = scores[m]
        row = {"method": m, "model": s["model"], "psnr_vs_fp32": s["psnr_vs_fp32"],
               "psnr_vs_fp32_per_image": s["psnr_vs_fp32_per_image"], "latency_ms": s["latency_ms"],
               "latency_vs_fp32": s["latency_ms"] / fp["latency_ms"], "clipped_tensors": None,
               "median_scale_vs_minmax": None}
        if base is not None:
            tens = read_sidecar(paths[m])["tensors"]
            clipped = [t for t in tens if t["name"] in base and
                       (t["max"] - t["min"]) < (base[t["name"]]["max"] - base[t["name"]]["min"]) * (1 - 1e-6)]
            row["clipped_tensors"] = len(clipped)
            ratios = [t["scale"] / base[t["name"]]["scale"] for t in tens if t["name"] in base]
            row["median_scale_vs_minmax"] = float(np.median(ratios)) if ratios else None
        row["calibration"] = {"calib": calib_spec, "num_calib": num_calib, "seed": seed,
                              **({"percentile": percentile} if m == "percentile" else {})}
        rows.append(row)
    return rows


def format_calibration(rows: list[dict]) -> str:
    head = f"{'method':<11} {'PSNR vs FP32':>12} {'latency ms':>10} {'× FP32':>7} {'clipped':>8} {'scale/minmax':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<11} {_fmt_db(r['psnr_vs_fp32']):>12} {r['latency_ms']:>10.1f} "
                     f"{r['latency_vs_fp32']:>7.2f} {('' if r['clipped_tensors'] is None else r['clipped_tensors']):>8} "
                     f"{('' if r['median_scale_vs_minmax'] is None else format(r['median_scale_vs_minmax'], '.3f')):>12}")
    return "\n".join(lines)
