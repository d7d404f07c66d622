"""Probe sessions: a model run with every quantized tensor of its sidecar as an extra output,
and the images they analyse (downscaled so that every tensor fits in memory at once)."""
from __future__ import annotations

import hashlib
import math
import os
import threading
from pathlib import Path

import numpy as np

from qatie.errors import ModelFileError, QatieError
from qatie.padding import pad_nchw
from qatie.util import LRU


#: Images are analysed at most this large (longer side, pixels): every quantized tensor of the
#: network is held in memory at once (~535 values per input pixel for width 32: 315 MB of
#: float32 at 384×384), so a 12 MP photo would need gigabytes. Larger images are downscaled
#: (box filter) first; the result says which size was analysed.
DEFAULT_MAX_SIDE = 384


class _Probe:
    """An ORT session of `path` with the tensors of `tensors` (sidecar entries) as extra outputs.

    INT8 (QDQ) models expose each point's quantized tensor and dequantize it here; FP32 models
    expose the float tensor the sidecar names (`onnx_tensor`)."""

    def __init__(self, path: Path, tensors: list[dict], threads: int):
        import onnx
        import onnxruntime as ort

        from qatie.runtime.enhancer import session_options

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


_PROBES = LRU(6)


def _probe(path, tensors: list[dict], threads: int) -> _Probe:
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise ModelFileError(f"ONNX model {path} cannot be read: {e}") from None
    names = hashlib.sha1("|".join(f"{t['name']}:{t.get('onnx_tensor')}:{t.get('dq_tensor')}" for t in tensors).encode()).hexdigest()
    key = (str(p), st.st_mtime_ns, st.st_size, names, threads)
    probe = _PROBES.get(key)
    if probe is None:
        probe = _Probe(p, tensors, threads)
        probe.key = key
        _PROBES.put(key, probe)
    return probe


def clear_cache() -> None:
    """Forget the cached probe sessions and activations."""
    _PROBES.clear()
    with _ACTS_LOCK:
        _ACTS.clear()


def _as_float_image(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from qatie.imageio import read_image

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
_ACTS: dict[tuple, dict] = {}
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

