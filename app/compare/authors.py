"""The paper authors' own INT8 TFLite model, run "as released" beside the paper set's three.

The authors published their network only as INT8 TFLite (MIT licence; checkpoints/PAPER_WEIGHTS.md).
The file is not part of this repository: it is read from `QATIE_AUTHORS_TFLITE` if set, else from
the reference folder beside the project (`../shared/reference/qatie_official_int8_100x100.tflite`).
Showing it next to our FP32 / PTQ / QAT exports of the same weights lets a user see the
deployment the paper shipped. Only the 100×100 file is used: it runs in overlapping tiles (its
fixed input size), blended; the full-HD file breaks colours (docs/paper_model.md). It needs the
optional package `ai-edge-litert`, imported only when a comparison on the paper set runs, so
the app's start-up never loads it.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np

from qatie.paths import REPO_ROOT
from qatie.imageio import to_uint8

from app import models

FILE_NAME = "qatie_official_int8_100x100.tflite"
PATH = Path(os.environ.get("QATIE_AUTHORS_TFLITE") or REPO_ROOT.parent / "shared" / "reference" / FILE_NAME)
LABEL = "Authors' INT8 TFLite (as released)"
SHORT_LABEL = "Authors' TFLite"  # over the picture itself, where the long label covered a corner of it
#: In sentences ("… could not run").
NAME = "the authors' TFLite model"
#: The metrics JSON's key and the full-size download of this picture.
JSON_KEY = "authors_tflite"
DOWNLOAD_NAME = "full_authors_tflite.png"
INSTALL_NOTICE = ("The authors' own INT8 TFLite model is not shown: `pip install ai-edge-litert` adds it as a "
                  "fourth picture.")
#: What the latency shown for the authors' picture is (`Beside`).
LATENCY_IS = "the CPU time of its tiles on one core (it runs beside the analysis)"
MISSING_NOTICE = "The authors' own INT8 TFLite model is not shown: its file is not on this server."


def available() -> bool:
    """The runtime package is installed and the file is there (checked without importing it)."""
    return importlib.util.find_spec("ai_edge_litert") is not None and PATH.is_file()


def unavailable_notice() -> str:
    """Why the fourth picture is missing ("" when it is shown)."""
    if not PATH.is_file():
        return MISSING_NOTICE
    return "" if available() else INSTALL_NOTICE


def applies(model_set: models.ModelSet, overrides: dict) -> bool:
    """Only the paper set's own FP32 is the network the authors' file was made from."""
    return model_set.key == models.PAPER_KEY and "fp32" not in (overrides or {})


class Beside:
    """The authors' picture computed beside the comparison's analysis, so it adds little to the
    time a visitor waits: on the comparison's pictures' thread, `background()` runs the 100×100
    tiles with a one-thread interpreter (`app.compare.beside` decides when); `finish()` then joins
    in from the request's thread with a second interpreter on the tiles left, and waits for the
    tile in progress. TFLite interpreters are not thread-safe, hence one per thread, fresh per
    request (about 40 ms to load the 1 MB file; the load holds Python's GIL for 3 ms); TFLite
    releases the GIL while a tile runs. Without `background()`, `finish()` runs every tile.

    Its latency is the CPU time its tiles took on one core (summed over both threads): the
    wall-clock time of a run shared with the analysis would measure neither."""

    def __init__(self, image_u8: np.ndarray, deadline):
        from qatie.paper.tflite import AuthorsTFLite

        self._deadline = deadline
        self.file = PATH
        self._image = image_u8.astype(np.float32) / np.float32(255.0)
        self._model = AuthorsTFLite(PATH, threads=1)
        self.how = self._model.how(image_u8.shape)
        self._run = self._model.tiled_run(self._image)
        self._cpu_s = 0.0
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def background(self) -> None:
        """Tiles on the pictures' thread, until none are left."""
        if self._run is not None:
            self._work(self._model)

    def _work(self, model) -> None:
        c0 = time.thread_time()
        try:
            self._run.work(lambda tile: (self._deadline.check(), model.run_tile(tile))[1])
        except BaseException as exc:  # noqa: BLE001 — re-raised by finish() in the request's thread
            self._error = exc
            self._run.cancel()
        finally:
            with self._lock:
                self._cpu_s += time.thread_time() - c0

    def finish(self) -> tuple[np.ndarray, float, str]:
        """(uint8 output, CPU ms on one core, how the fixed input size was handled)."""
        from qatie.paper.tflite import AuthorsTFLite

        if self._run is None:  # not tiled: one plain run here
            c0 = time.thread_time()
            y = self._model.enhance(self._image)
            self._deadline.check()
            return to_uint8(y), (time.thread_time() - c0) * 1000.0, self.how
        self._work(AuthorsTFLite(PATH, threads=1))
        self._run.wait()  # the pictures' thread may be finishing a tile
        if self._error is not None:
            raise self._error
        self._deadline.check()
        return to_uint8(self._run.result()), self._cpu_s * 1000.0, self.how

    def cancel(self) -> None:
        """Stop after the tile in progress (the request ended)."""
        if self._run is not None:
            self._run.cancel()


def start(prep, model_set: models.ModelSet, deadline) -> Beside:
    """The picture of this comparison (`prep`: `app.compare.pipeline.Prepared`), ready for its
    `background()` work (`app.compare.beside.schedule`)."""
    return Beside(prep.image, deadline)
