"""The paper authors' released INT8 TFLite models, brought into QATIE as an FP32 network.

The authors published their trained network only as INT8 TFLite (MIT licence). Its constants are
int8 weights with per-output-channel scales, int32 biases (scale = input scale × weight scale) and
int8 InstanceNorm affine parameters; dequantized, they are the FP32 weights of `build_model(32)`,
which is the paper's network (GenAI4E/QATIE `HybridMixUNet`: same blocks, same concat orders).

Which conv is which is read from the graph, not assumed: convs are matched to our modules in
execution order, block by block, by kernel size, channels and stride, and every match is then
proved numerically by `prove_mapping` (each conv output of our FP32 import against the authors'
INT8 tensor, on the same 100×100 crops). Needs `ai-edge-litert` (optional dependency).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qatie.errors import ModelFileError
from qatie.metrics import sqnr_db
from qatie.util import sha256

LICENCE = "MIT"
ATTRIBUTION = ("Weights of the paper's network as released by its authors (GenAI4E/QATIE, "
               "'Bridging the Training-Deployment Gap: Gated Encoding and Multi-Scale Refinement for "
               "Efficient Quantization-Aware Image Enhancement', CVPR workshops 2026; arXiv 2604.21743), "
               "MIT licence; dequantized from their INT8 TFLite model by `qatie import-tflite`.")
WIDTH = 32

# Our conv modules in the order the paper's forward runs them; within a refinement block the
# TFLite graph may order independent convs differently, so matching inside a block is by shape.
_REFINE = ("t_conv", "u", "m1", "skip", "m2")
_BLOCKS = [("enc1", ("a", "b")), ("ref_s2", _REFINE), ("enc2", ("a", "b")), ("ref_s4", _REFINE),
           ("bottleneck", _REFINE), ("up4", ("conv",)), ("fuse4", ("conv",)), ("ref_f4", _REFINE),
           ("up2", ("conv",)), ("fuse2", ("conv",)), ("ref_f2", _REFINE), ("up1", ("conv",)), ("delta", ("",))]


def _interpreter(path, preserve_all: bool = False, threads: int = 1):
    """The authors' file in LiteRT (`qatie.runtime.litert.interpreter`, XNNPACK as shipped)."""
    from qatie.runtime.litert import interpreter

    return interpreter(path, preserve_all=preserve_all, threads=threads)


def _dequantize(it, idx: int) -> np.ndarray:
    """A quantized constant or tensor as float: (q − zero_point) × scale, per channel when it has
    several scales (along its quantized dimension)."""
    d = it.get_tensor_details()[idx]
    q = it.get_tensor(idx).astype(np.float64)
    p = d["quantization_parameters"]
    scales, zps = p["scales"], p["zero_points"]
    if len(scales) == 0:
        return q.astype(np.float32)
    shape = [1] * q.ndim
    if len(scales) > 1:
        shape[p["quantized_dimension"]] = -1
    return ((q - np.reshape(zps, shape)) * np.reshape(scales, shape)).astype(np.float32)


@dataclass
class TFLiteConv:
    """One CONV_2D of the authors' graph, dequantized to PyTorch layout."""

    op: int            # operator index in the graph
    input: int         # tensor indices
    output: int
    weight: np.ndarray  # O×I×kh×kw float32
    bias: np.ndarray
    stride: int


def read_convs(it) -> list[TFLiteConv]:
    """Every CONV_2D in execution order, weights OHWI → OIHW, int32 biases at their own scales."""
    convs = []
    for op in it._get_ops_details():
        if op["op_name"] != "CONV_2D":
            continue
        x, w, b = op["inputs"][:3]
        wq = _dequantize(it, w).transpose(0, 3, 1, 2)
        in_hw = it.get_tensor_details()[x]["shape"][1:3]
        out_hw = it.get_tensor_details()[op["outputs"][0]]["shape"][1:3]
        stride = 2 if in_hw[0] >= 2 * out_hw[0] else 1  # the stride-2 convs read an explicitly padded input
        convs.append(TFLiteConv(op["index"], x, op["outputs"][0], wq, _dequantize(it, b), stride))
    return convs


def read_norms(it) -> list[dict]:
    """Each decomposed InstanceNorm's γ, β and ε, in execution order. The pattern is
    MEAN → SQUARED_DIFFERENCE → MEAN → ADD(ε) → RSQRT and SUB → MUL(γ) → MUL(rsqrt) → ADD(β)."""
    ops = it._get_ops_details()
    consumers: dict[int, list[dict]] = {}
    for op in ops:
        for t in op["inputs"]:
            consumers.setdefault(t, []).append(op)
    const = lambda op: next(t for t in op["inputs"] if t >= 0 and not any(o["outputs"][0] == t for o in ops))
    norms = []
    for op in ops:
        if op["op_name"] != "SQUARED_DIFFERENCE":
            continue
        mean2 = consumers[op["outputs"][0]][0]
        add_eps = consumers[mean2["outputs"][0]][0]
        mean1_out = op["inputs"][1]
        sub = next(o for o in consumers[mean1_out] if o["op_name"] == "SUB")
        mul_g = consumers[sub["outputs"][0]][0]
        mul_r = consumers[mul_g["outputs"][0]][0]
        add_b = consumers[mul_r["outputs"][0]][0]
        norms.append({"conv_output": op["inputs"][0],
                      "gamma": _dequantize(it, const(mul_g)).reshape(-1),
                      "beta": _dequantize(it, const(add_b)).reshape(-1),
                      "eps": float(_dequantize(it, const(add_eps)).reshape(-1)[0])})
    return norms


def conv_mapping(convs: list[TFLiteConv], model) -> dict[str, TFLiteConv]:
    """Our conv module name → the authors' conv, block by block in execution order. Within a block,
    each of our convs takes the first unused TFLite conv of its shape and stride (independent convs
    may come in either order; the dependent ones of equal shape — t_conv before m2, a before b —
    keep their order). Raises if any shape does not fit: then the graph is not the paper's network."""
    modules = dict(model.named_modules())
    mapping, pos = {}, 0
    for block, names in _BLOCKS:
        ours = [f"{block}.{n}" if n else block for n in names]
        group = convs[pos:pos + len(ours)]
        pos += len(ours)
        free = list(group)
        for name in ours:
            m = modules[name]
            want = (tuple(m.weight.shape), m.stride[0])
            hit = next((c for c in free if (c.weight.shape, c.stride) == want), None)
            if hit is None:
                raise ModelFileError(f"the TFLite graph does not have the paper's network: no conv of shape "
                                     f"{want[0]} stride {want[1]} for {name} among ops {[c.op for c in group]}")
            free.remove(hit)
            mapping[name] = hit
    if pos != len(convs):
        raise ModelFileError(f"the TFLite graph has {len(convs)} convs; the paper's network has {pos}")
    return mapping


def import_tflite(path):
    """(model, info): `build_model(32)` carrying the authors' dequantized weights, and where they
    came from (file name, hash, licence, InstanceNorm ε as stored)."""
    import torch

    from qatie.model.network import build_model

    it = _interpreter(path)
    model = build_model(WIDTH)
    convs = read_convs(it)
    mapping = conv_mapping(convs, model)
    modules = dict(model.named_modules())
    norms = read_norms(it)
    blocks = [b for b, names in _BLOCKS if names == _REFINE]
    if len(norms) != len(blocks):
        raise ModelFileError(f"{Path(path).name}: {len(norms)} InstanceNorms; the paper's network has {len(blocks)}")
    with torch.no_grad():
        for name, c in mapping.items():
            modules[name].weight.copy_(torch.from_numpy(c.weight))
            modules[name].bias.copy_(torch.from_numpy(c.bias))
        # InstanceNorms run in block order too: match each to the block whose t_conv feeds it
        by_output = {n["conv_output"]: n for n in norms}
        for block in blocks:
            norm = by_output[mapping[f"{block}.t_conv"].output]
            modules[f"{block}.t_norm"].weight.copy_(torch.from_numpy(norm["gamma"]))
            modules[f"{block}.t_norm"].bias.copy_(torch.from_numpy(norm["beta"]))
    eps = sorted({round(n["eps"], 9) for n in norms})
    info = {"source_file": Path(path).name, "source_sha256": sha256(path), "licence": LICENCE,
            "attribution": ATTRIBUTION, "instance_norm_eps_stored": eps}
    return model.eval(), info


def run_tflite(it, image: np.ndarray, keep: list[int] = ()) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One H×W×3 float image in [0,1] through the authors' model (its fixed size): the output as
    H×W×3 float, and the dequantized NHWC tensors `keep` asks for (needs preserve_all)."""
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = image[None].astype(np.float32)
    if inp["dtype"] != np.float32:
        s, z = inp["quantization"]
        x = np.clip(np.round(x / s + z), -128, 127).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(out["index"]).astype(np.float32)
    if out["dtype"] != np.float32:
        s, z = out["quantization"]
        y = (y - z) * s
    y = y[0]
    if y.shape[0] == 3 and y.shape[-1] != 3:  # the 100×100 model returns NCHW
        y = y.transpose(1, 2, 0)
    return y, {t: _dequantize(it, t)[0] for t in keep}


def prove_mapping(tflite_path, images: list[np.ndarray], model=None) -> list[dict]:
    """Each of the 35 conv outputs (and the final output) of our FP32 import against the authors'
    INT8 TFLite tensor on the same inputs (the model's own input size, e.g. 100×100 crops).

    Three columns per layer, from the most isolated to the least:
    - `conv_sqnr_db`: our conv applied to the authors' own (dequantized) input tensor of that conv:
      its error is that one layer's INT8 rounding, so a wrong weight mapping (a swapped or
      transposed kernel, a wrong bias, stride or padding) puts it near 0 dB. The mapping proof.
    - `wired_sqnr_db`: every conv output of ours replaced, on the way, by the authors' one, so each
      conv reads what our wiring (tanh gates, InstanceNorm, concat order, pooling, resize) makes of
      the authors' upstream tensors; it also carries the INT8 rounding of those ops in their graph
      (coarse tanh and variance grids show here), and a wrong concat order or resize drops it.
    - `chained_sqnr_db`: our FP32 all the way; INT8 differences compound with depth (what the
      authors' INT8 model costs against its own FP32 weights, not a mapping test)."""
    import torch
    import torch.nn.functional as F

    if model is None:
        model, _ = import_tflite(tflite_path)
    model = model.eval()
    model.pad_input = False  # the authors' graph runs its fixed size without padding
    it = _interpreter(tflite_path, preserve_all=True)
    mapping = conv_mapping(read_convs(it), model)
    modules = dict(model.named_modules())
    names = [*mapping, "output"]
    pairs = {mode: {n: [] for n in names} for mode in ("conv", "wired", "chained")}
    forced: dict[str, np.ndarray] = {}
    ours: dict[str, np.ndarray] = {}

    def hook(m, inp, out, name):
        ours[name] = out[0].detach().numpy().transpose(1, 2, 0)
        if forced:
            return torch.from_numpy(forced[name].transpose(2, 0, 1)[None].copy())
        return None

    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n in mapping]
    try:
        for img in images:
            y_tfl, tensors = run_tflite(it, img, sorted({t for c in mapping.values() for t in (c.input, c.output)}))
            x = torch.from_numpy(img.transpose(2, 0, 1)[None].copy())
            with torch.no_grad():
                for n, c in mapping.items():
                    m = modules[n]
                    inp = torch.from_numpy(tensors[c.input].transpose(2, 0, 1)[None].copy())
                    out = F.conv2d(inp, m.weight, m.bias, m.stride, 0 if m.stride[0] == 2 else m.padding)
                    pairs["conv"][n].append((out[0].numpy().transpose(1, 2, 0), tensors[c.output]))
            for mode in ("chained", "wired"):
                forced.clear()
                if mode == "wired":
                    forced.update({n: tensors[c.output] for n, c in mapping.items()})
                with torch.no_grad():
                    y = model(x)
                for n, c in mapping.items():
                    pairs[mode][n].append((ours[n], tensors[c.output]))
                pairs[mode]["output"].append((y[0].numpy().transpose(1, 2, 0), y_tfl))
    finally:
        for h in hooks:
            h.remove()
        model.pad_input = True

    def score(ps):
        ref = np.concatenate([a.reshape(-1) for a, _ in ps])
        return sqnr_db(ref, np.concatenate([b.reshape(-1) for _, b in ps])), min(sqnr_db(a, b) for a, b in ps)

    rows = []
    for n in names:
        row = {"layer": n, "tflite_op": mapping[n].op if n in mapping else None, "shape": list(pairs["wired"][n][0][0].shape)}
        for mode in ("conv", "wired", "chained"):
            if pairs[mode][n]:
                row[f"{mode}_sqnr_db"], row[f"{mode}_worst_image_sqnr_db"] = score(pairs[mode][n])
        rows.append(row)
    return rows


#: What QAT and PTQ of the import feed it (run_qat reads a checkpoint's "config"): photos as
#: people take them — half untouched, the rest with sensor noise, blur or JPEG but no tone
#: errors (the network's job is the tone) — and a quarter of crops showing the whole photo, so
#: ranges also see whole-photo InstanceNorm statistics.
IN_USE_CONFIG = {"loss": "l1", "degradation": {"p_tone": 0.0, "p_clean": 0.5}, "global_crops": 0.25}


def save_import(tflite_path, out):
    """`qatie import-tflite`: write the FP32 checkpoint of the authors' model with its provenance."""
    from qatie.model.checkpoint import save_checkpoint

    model, info = import_tflite(tflite_path)
    return save_checkpoint(out, model, kind="fp32", source=info, config=IN_USE_CONFIG)


class AuthorsTFLite:
    """The authors' INT8 TFLite model run "as released" on any photo. Its input size is fixed, so:
    the 100×100 model runs in overlapping 100×100 tiles blended linearly (`runtime.run_tiled`);
    the full-HD model gets the photo turned to portrait if it is landscape and resized to its
    1920×1080 input, then resized back. `how` says which, for the user to see."""

    def __init__(self, path, threads: int = 2, overlap: int = 16):
        self.it = _interpreter(path, threads=threads)
        h, w = (int(v) for v in self.it.get_input_details()[0]["shape"][1:3])
        self.size, self.overlap, self.name = (h, w), overlap, Path(path).name
        self.tiled = h * w <= 256 * 256

    def run_tile(self, tile: np.ndarray) -> np.ndarray:
        """One tile of the model's own input size → its output."""
        return run_tflite(self.it, tile)[0]

    def tiled_run(self, image: np.ndarray):
        """The photo's tiles as a `runtime.TiledRun` that several instances of this model (one per
        thread) can share — None where `enhance` does not tile (the full-HD file; a photo smaller
        than one tile)."""
        from qatie.runtime.enhancer import TiledRun

        h, w = self.size
        if not self.tiled or image.shape[0] < h or image.shape[1] < w:
            return None
        return TiledRun(np.asarray(image, dtype=np.float32), h, self.overlap)

    def how(self, shape) -> str:
        h, w = self.size
        if self.tiled:
            return f"{self.name}: run in overlapping {h}×{w} tiles (its fixed input size), blended"
        turned = " turned to portrait," if shape[1] > shape[0] else ""
        return f"{self.name}:{turned} resized from {shape[1]}×{shape[0]} to its fixed {w}×{h} input and back"

    def enhance(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        from qatie.runtime.enhancer import run_tiled

        img = np.asarray(image, dtype=np.float32)
        if self.tiled:
            h, w = self.size
            if img.shape[0] < h or img.shape[1] < w:
                pad = ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1])), (0, 0))
                return self.enhance(np.pad(img, pad, mode="edge"))[:img.shape[0], :img.shape[1]]
            return run_tiled(self.run_tile, img, h, self.overlap)
        turn = img.shape[1] > img.shape[0]
        src = np.ascontiguousarray(np.rot90(img)) if turn else img

        def resize(a, w, h):
            u8 = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).resize((w, h), Image.BICUBIC)
            return np.asarray(u8).astype(np.float32) / 255

        y = run_tflite(self.it, resize(src, self.size[1], self.size[0]))[0]
        y = resize(y, src.shape[1], src.shape[0])
        return np.ascontiguousarray(np.rot90(y, -1)) if turn else y
