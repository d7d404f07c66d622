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
import time
from pathlib import Path

import numpy as np

from qatie.paths import REPO_ROOT
from qatie.imageio import to_uint8
from qatie.metrics import error_levels, psnr, ssim

from . import config, models
from .core import PERCEPTUAL_HEADERS, _f, _num, perceptual_cells, rate

FILE_NAME = "qatie_official_int8_100x100.tflite"
PATH = Path(os.environ.get("QATIE_AUTHORS_TFLITE") or REPO_ROOT.parent / "shared" / "reference" / FILE_NAME)
LABEL = "Authors' INT8 TFLite (as released)"
INSTALL_NOTICE = ("The authors' own INT8 TFLite model is not shown: `pip install ai-edge-litert` adds it as a "
                  "fourth picture.")
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


class _Checked:
    """The interpreter with the request's deadline checked before each tile (a TFLite run
    cannot be cancelled from outside, but one 100×100 tile takes milliseconds)."""

    def __init__(self, it, check):
        self._it, self._check = it, check

    def invoke(self):
        self._check()
        self._it.invoke()

    def __getattr__(self, name):
        return getattr(self._it, name)


def run(image_u8: np.ndarray, deadline) -> tuple[np.ndarray, float, str]:
    """(uint8 output, ms, how the fixed input size was handled). A fresh interpreter per call
    (about 40 ms to load the 1 MB file): TFLite interpreters are not thread-safe, and two
    comparisons may run at once."""
    from qatie.tflite_import import AuthorsTFLite

    model = AuthorsTFLite(PATH, threads=config.THREADS)
    model.it = _Checked(model.it, deadline.check)
    t0 = time.perf_counter()
    y = model.enhance(image_u8.astype(np.float32) / np.float32(255.0))
    ms = (time.perf_counter() - t0) * 1000.0
    deadline.check()
    return to_uint8(y), ms, model.how(image_u8.shape)


def table_row(headers: list[str], metrics: dict, ms: float) -> list[str]:
    """The metrics table's row for the authors' model, cell by cell from the column names
    (the table has different columns with and without a reference)."""
    def cell(h: str) -> str:
        if h == "Model":
            return LABEL
        if h.startswith("Agreement") and "SSIM" in h:
            return _num(metrics.get("agreement_ssim"), ".4f")
        if h.startswith("Agreement"):
            return _num(metrics["agreement_psnr_db"], ".2f")
        if h.startswith("Mean error vs FP32"):
            return _num(metrics["mean_levels"], ".2f")
        if h.startswith("Max error vs FP32"):
            return _num(metrics["max_levels"], ".0f")
        if h in PERCEPTUAL_HEADERS:
            return perceptual_cells(metrics)[PERCEPTUAL_HEADERS.index(h)]
        if h.startswith("PSNR vs reference"):
            return _num(metrics.get("psnr_db"), ".2f")
        if h.startswith("SSIM vs reference"):
            return _num(metrics.get("ssim"), ".4f")
        if h.startswith("Latency"):
            return f"{ms:.0f} (1 run)"
        if h.startswith("File"):
            return f"{PATH.stat().st_size / 1e6:.2f}"
        return "—"

    return [cell(h) for h in headers]


def measure(out_u8: np.ndarray, fp32_u8: np.ndarray, reference_u8: np.ndarray | None, result: dict | None = None) -> dict:
    """Agreement with the paper FP32 output (the same numbers the INT8 rows show, the perceptual
    rating on the same scale when the comparison's `result` is given), and the score against
    the reference when there is one."""
    out, fp = _f(out_u8), _f(fp32_u8)
    err = error_levels(out, fp)
    m = {"agreement_psnr_db": psnr(out, fp), "agreement_ssim": ssim(out, fp), "max_levels": float(err.max()),
         "mean_levels": float(err.mean()), "share_over_2_levels": float((err > 2).mean())}
    if result is not None and "fp32_lab" in result:
        m["perceptual"] = rate(result["fp32_lab"], out_u8, result["jpeg_ladder"])[0]
    if reference_u8 is not None:
        ref = _f(reference_u8)
        m.update(psnr_db=psnr(out, ref), ssim=ssim(out, ref))
    return m
