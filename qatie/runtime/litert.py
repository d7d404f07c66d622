"""LiteRT (TFLite), the phone runtime the paper targets: its interpreter, and QATIE's own INT8
models on it (`qatie.export.to_tflite` writes them; a file has one fixed input size).

`LiteRTEnhancer` runs such a file on photos of its size; `litert_enhancer` writes (once, into a
cache folder) and loads the file of an INT8 ONNX model for a photo's size, which is how the app
shows "the same model on the phone runtime" for any photo. Needs `ai-edge-litert`
(`pip install 'qatie[tflite]'`).
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from qatie.errors import ModelFileError, QatieError
from qatie.util import atomic_write, file_sha

#: LiteRT's kernel sets: XNNPACK (its default delegate on CPUs, what phones and the app run) and
#: the builtin kernels alone (its reference-optimized ops, fixed-point requantization).
KERNELS = ("xnnpack", "builtin")


def interpreter(path, preserve_all: bool = False, threads: int = 1, kernels: str = "xnnpack"):
    """A LiteRT interpreter with tensors allocated. `preserve_all` keeps every intermediate tensor
    (LiteRT then delegates op by op, so XNNPACK's per-op results stay readable)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise QatieError("running TFLite models needs the optional package ai-edge-litert "
                         "(pip install 'qatie[tflite]')") from None
    if kernels not in KERNELS:
        raise QatieError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such TFLite file")
    resolver = OpResolverType.AUTO if kernels == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with warnings.catch_warnings():  # keeping every tensor is what the layer-by-layer proofs are for
            warnings.filterwarnings("ignore", message=".*preserve_all_tensors.*")
            it = Interpreter(model_path=str(path), num_threads=threads, experimental_preserve_all_tensors=preserve_all,
                             experimental_op_resolver_type=resolver)
        it.allocate_tensors()
    except Exception as e:  # the interpreter raises ValueError/RuntimeError on a bad flatbuffer
        raise ModelFileError(f"{path.name}: not a readable TFLite model ({type(e).__name__}: {str(e)[:160]})") from None
    return it


class LiteRTEnhancer:
    """A QATIE LiteRT file (float32 NHWC in [0, 1], fixed H×W) as an enhancer of photos that size."""

    def __init__(self, path, threads: int = 1, kernels: str = "xnnpack"):
        self.path = Path(path)
        self.it = interpreter(self.path, threads=threads, kernels=kernels)
        self._in, self._out = self.it.get_input_details()[0], self.it.get_output_details()[0]
        if self._in["dtype"] != np.float32 or len(self._in["shape"]) != 4 or self._in["shape"][3] != 3:
            raise ModelFileError(f"{self.path.name}: not a QATIE LiteRT model (input {list(self._in['shape'])} "
                                 f"{np.dtype(self._in['dtype']).name}; expected float32 1×H×W×3)")
        self.size = (int(self._in["shape"][1]), int(self._in["shape"][2]))
        self.size_bytes = self.path.stat().st_size
        self._lock = threading.Lock()  # one interpreter: one invoke at a time

    def enhance(self, image: np.ndarray) -> np.ndarray:
        img = np.asarray(image, np.float32)
        if img.shape[:2] != self.size:
            raise QatieError(f"{self.path.name} takes {self.size[0]}×{self.size[1]} photos (LiteRT files have a fixed "
                             f"size), got {img.shape[0]}×{img.shape[1]}: export one for that size")
        with self._lock:
            self.it.set_tensor(self._in["index"], np.ascontiguousarray(img[None, :, :, :3]))
            self.it.invoke()
            y = self.it.get_tensor(self._out["index"])[0]
        return np.clip(y, 0.0, 1.0)

    __call__ = enhance


_CACHE_LOCK = threading.Lock()


def litert_path(onnx_path, height: int, width: int, cache_dir) -> Path:
    """Where `litert_file` keeps the LiteRT file of an INT8 ONNX model at H×W: named by the model's
    content hash (and its sidecar's) and the size, so a changed model is written anew."""
    onnx_path = Path(onnx_path)
    side = onnx_path.with_suffix(".json")
    key = file_sha(onnx_path, 12) + (file_sha(side, 4) if side.is_file() else "")
    return Path(cache_dir) / f"{onnx_path.stem}-{key}-{height}x{width}.tflite"


def litert_file(onnx_path, height: int, width: int, cache_dir) -> Path:
    """The LiteRT file of an INT8 ONNX model at H×W (`litert_path`), written the first time."""
    from qatie.export.to_tflite import to_tflite

    out = litert_path(onnx_path, height, width, cache_dir)
    with _CACHE_LOCK:
        if not out.is_file():
            atomic_write(out, lambda tmp: to_tflite(onnx_path, tmp, height, width))
    return out


def litert_enhancer(onnx_path, height: int, width: int, cache_dir, threads: int = 1) -> LiteRTEnhancer:
    """`LiteRTEnhancer` of an INT8 ONNX model's LiteRT file at H×W (`litert_file`)."""
    return LiteRTEnhancer(litert_file(onnx_path, height, width, cache_dir), threads=threads)
