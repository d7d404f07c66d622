"""QATIE's own QAT-INT8 model on LiteRT (TFLite), the phone runtime the paper targets, beside
the authors' file (`app.compare.authors`) on the paper set.

The paper set's QAT-INT8 .onnx is written to LiteRT with QATIE's own quantization parameters
(`qatie.export.to_tflite`: every conv's int8 weights, per-channel scales and int32 biases as they
are, every tensor on its own quantization grid — LiteRT's XNNPACK convs then compute QATIE's exact
integer sums; docs/litert.md). A LiteRT file has one fixed input size, so the file is written at
this photo's size (in full-size mode: at the ONNX models' tile size, run in the same blended
tiles), once per size, into the cache folder (`qatie.runtime.litert.litert_file`; about 0.7 s the
first time), loaded beside the analysis (`app.compare.beside`) and run after it on two threads,
and is rated on the same scale as the other INT8 pictures: next to the authors' file as released,
it shows what the same runtime gives with QATIE's scales. Needs the optional package `ai-edge-litert`,
imported only when a paper-set comparison runs, so the app's start-up never loads it.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np

from qatie.imageio import to_uint8

from app import config, models
from app.compare import authors

LABEL = "QATIE QAT-INT8 on LiteRT (phone runtime)"
#: In sentences ("… could not run").
NAME = "QATIE's QAT-INT8 on LiteRT"
#: The metrics JSON's key and the full-size download of this picture.
JSON_KEY = "litert"
DOWNLOAD_NAME = "full_qat_litert.png"
INSTALL_NOTICE = ("QATIE's QAT-INT8 on LiteRT (the phone runtime) is not shown: `pip install ai-edge-litert` "
                  "adds it as a picture.")
#: Threads of its interpreter: it runs alone, after the analysis, like the ONNX models' timed passes.
THREADS = 2
#: What the latency shown for this picture is (`Beside`).
LATENCY_IS = (f"the wall-clock time of one LiteRT run on {THREADS} threads, after the analysis and the authors' "
              "picture, with nothing else running (writing and loading the file for this photo's size are not "
              "counted)")
#: The cache folder keeps at most this many megabytes of LiteRT files (about 1.1 MB each: one per
#: photo size seen), the least recently used dropped first.
CACHE_MAX_MB = 40.0


def available() -> bool:
    """The runtime package is installed (checked without importing it)."""
    return importlib.util.find_spec("ai_edge_litert") is not None


def unavailable_notice() -> str:
    """Why the picture is missing ("" when it is shown)."""
    return "" if available() else INSTALL_NOTICE


def applies(model_set: models.ModelSet, overrides: dict) -> bool:
    """The paper set, as for the authors' file (its own FP32 rates the picture), with its own
    QAT-INT8 (an uploaded one has no QATIE sidecar to write the file from)."""
    return authors.applies(model_set, overrides) and "qat" not in (overrides or {})


def cache_folder() -> Path:
    from qatie.paths import cache_dir

    return cache_dir() / "litert"


def file_for(onnx_path: Path, height: int, width: int) -> tuple[Path, float | None]:
    """(the LiteRT file of `onnx_path` at H×W, seconds spent writing it — None when it was cached).
    The cache folder is kept small: least recently used files go first (a used file is touched)."""
    from qatie.runtime.litert import litert_file, litert_path

    folder = cache_folder()
    t0 = time.perf_counter()
    cached = litert_path(onnx_path, height, width, folder).is_file()
    path = litert_file(onnx_path, height, width, folder)
    written = None if cached else time.perf_counter() - t0
    try:
        os.utime(path)
    except OSError:
        pass
    if written is not None:
        config.prune(folder, CACHE_MAX_MB)
    return path, written


class _Stopped(Exception):
    """The request ended: the tiles left are not run."""


class Beside:
    """This picture, prepared beside the comparison's analysis and run after it: `background()`, on
    the comparison's pictures' thread once the authors' tiles are taken (`app.compare.beside`),
    writes (or finds) the LiteRT file for the photo's size and loads it into an interpreter of
    `THREADS` threads (fresh per request: interpreters are not thread-safe, and one holds its
    whole tensor arena — measured 0.38 GB for a 1-MP photo, 0.72 GB at 2 MP — so it is let go as
    soon as it has run); the load holds Python's GIL for ~0.2 s, hence not while the outputs'
    files are being served. `finish()`, in the request's thread once the analysis and the authors'
    picture are done, runs it — alone on the machine, so its latency is a wall-clock time like the
    ONNX models' — or does it all itself where `background()` never started."""

    def __init__(self, image_u8: np.ndarray, onnx_path, tiled: bool, deadline):
        self._deadline = deadline
        self._image = image_u8.astype(np.float32) / np.float32(255.0)
        self._onnx = Path(onnx_path)
        self._tiled = bool(tiled)
        h, w = image_u8.shape[:2]
        self.size = (min(config.TILE, h), min(config.TILE, w)) if self._tiled else (h, w)
        self.file: Path | None = None
        self.written_s: float | None = None
        self._model = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._claim = threading.Lock()  # whoever takes it first prepares the interpreter
        self._prepared = threading.Event()

    def _check(self) -> None:
        if self._stop.is_set():
            raise _Stopped()
        self._deadline.check()

    def background(self) -> None:
        """Write (or find) the file and load the interpreter, unless `finish()` already did."""
        if self._claim.acquire(blocking=False):
            self._prepare()

    def _prepare(self) -> None:
        from qatie.runtime.litert import LiteRTEnhancer

        try:
            self._check()
            self.file, self.written_s = file_for(self._onnx, *self.size)
            self._check()
            self._model = LiteRTEnhancer(self.file, threads=THREADS)
        except BaseException as exc:  # noqa: BLE001 — re-raised by finish() in the request's thread
            self._error = exc
        finally:
            self._prepared.set()

    @property
    def how(self) -> str:
        h, w = self.size
        made = ("written for this size now" if self.written_s is not None else "from the cache")
        if self.written_s is not None:
            made += f" in {self.written_s:.1f} s"
        tiles = f" in overlapping {w}×{h} tiles, blended as the ONNX models' are" if self._tiled else ""
        return (f"{self._onnx.name} written to LiteRT at {w}×{h} with QATIE's own scales ({made}), run by "
                f"LiteRT's XNNPACK kernels on {THREADS} threads{tiles} — each of its ops proved against QATIE's "
                "integer arithmetic, convs exact (docs/litert.md)")

    def finish(self) -> tuple[np.ndarray, float, str]:
        """(uint8 output, wall-clock ms of the run, how the file was made and run)."""
        from qatie.runtime.enhancer import run_tiled

        if self._claim.acquire(blocking=False):
            self._prepare()
        self._prepared.wait()
        if self._error is not None:
            raise self._error
        model, self._model = self._model, None  # its arena goes with it once the run is done
        t0 = time.perf_counter()
        if self._tiled:
            y = run_tiled(lambda tile: (self._check(), model.enhance(tile))[1], self._image, config.TILE,
                          config.TILE_OVERLAP)
        else:
            self._check()
            y = model.enhance(self._image)
        ms = (time.perf_counter() - t0) * 1000.0
        self._deadline.check()
        return to_uint8(y), ms, self.how

    def cancel(self) -> None:
        """Stop before the next tile (the request ended); a whole-image run cannot be interrupted."""
        self._stop.set()


def start(prep, model_set: models.ModelSet, deadline) -> Beside:
    """The picture of this comparison (`prep`: `app.compare.pipeline.Prepared`), ready for its
    `background()` work (`app.compare.beside.schedule`)."""
    return Beside(prep.image, model_set.paths["qat"], prep.tiled, deadline)
