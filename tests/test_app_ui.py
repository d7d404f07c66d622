"""The app's first view and its plain-language parts, without a server: the verdict and its
one-line headline never contradict the numbers beside them, the worst-region crop lands where a
difference can be seen, the empty metrics table has real headers, the Benchmark tab's chart and
busy-machine warning, and the Train tab's ETA.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
pytest.importorskip("gradio")

from app import verdict as V  # noqa: E402

LAT = {"fp32": [600.0, 610.0, 590.0], "ptq": [300.0] * 3, "qat": [310.0] * 3}
SIZES = {"fp32": 3.7, "ptq": 1.0, "qat": 1.0}
EVEN = {k: {"area": 0.25, "share_of_bad": 0.25} for k in ("smooth", "textured", "shadows", "highlights")}


def _model(over2, maxl, psnr_db, within1=0.99, where=None):
    return {"agreement_psnr_db": psnr_db, "agreement_ssim": 0.99, "max_levels": maxl, "mean_levels": 0.5,
            "share_over_2_levels": over2, "share_within_1_level": within1, "where": where or EVEN}


def _result(ptq, qat):
    return {"reference": None, "input": None, "worst": {"role": "ptq", "x": 1, "y": 1},
            "models": {"fp32": {}, "ptq": ptq, "qat": qat}}


def test_verdict_never_crowns_a_model_the_table_shows_worse():
    # Both invisible at normal viewing; QAT has the higher agreement PSNR but the larger max error
    # and more pixels > 2 levels off: neither is "better".
    r = _result(_model(0.0003, 3, 49.0), _model(0.0009, 6, 51.5))
    text = V.verdict(r, LAT, SIZES)
    assert "better" not in text.lower()
    assert "look the same as full precision" in text and "QAT-INT8 is numerically closer by 2.5 dB" in text
    head = V.headline(r, LAT, SIZES)
    assert "better" not in head.lower() and head.count("looks the same as full precision") == 2


def test_verdict_crowns_only_a_model_that_is_better_on_every_count():
    clear = _result(_model(0.12, 14, 33.0), _model(0.0, 2, 46.0))
    assert "QAT is the better INT8 model here" in V.verdict(clear, LAT, SIZES)
    # Same visibility class, QAT closer by PSNR but with more pixels off: mixed, says so.
    mixed = _result(_model(0.05, 10, 40.0), _model(0.08, 12, 42.0))
    text = V.verdict(mixed, LAT, SIZES)
    assert "better" not in text.lower() and "PTQ-INT8 has fewer pixels more than 2 levels off" in text


def test_headline_is_one_coloured_line_from_the_numbers():
    where = dict(EVEN, shadows={"area": 0.1, "share_of_bad": 0.8})
    r = _result(_model(0.2, 30, 33.0, where=where), _model(0.0, 1, 55.0))
    head = V.headline(r, LAT, SIZES)
    assert "\n" not in head
    assert "PTQ-INT8" in head and "visibly different" in head and "dark areas" in head
    assert "QAT-INT8" in head and "looks the same as full precision" in head
    assert "INT8 2.0× faster" in head and "3.7× smaller" in head
    assert V.COLOURS[3] in head and V.COLOURS[0] in head
    slow = {"fp32": [100.0], "ptq": [120.0], "qat": [130.0]}
    assert "INT8 not faster here" in V.headline(r, slow, SIZES)
