"""The app's first view and its plain-language parts, without a server: the verdict and its
one-line headline never contradict the numbers beside them, the worst-region crop lands where a
difference can be seen, the empty metrics table has real headers, the Benchmark tab's chart and
busy-machine warning, and the Train tab's ETA.
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
pytest.importorskip("gradio")

from app.compare import verdict as V  # noqa: E402

LAT = {"fp32": [600.0, 610.0, 590.0], "ptq": [300.0] * 3, "qat": [310.0] * 3}
SIZES = {"fp32": 3.7, "ptq": 1.0, "qat": 1.0}
EVEN = {k: {"area": 0.25, "share_of_bad": 0.25} for k in ("smooth", "textured", "shadows", "highlights")}


def _model(share_visible, mean_de00, psnr_db=40.0, maxl=10, where=None, jpeg=(95, "about")):
    """An INT8 model's numbers as `core.analyse` gives them; its class from the real boundaries."""
    from qatie.analysis.perceptual import visibility

    p = {"share_visible": share_visible, "mean_de00": mean_de00, "p99_de00": 3 * mean_de00}
    cls = visibility(p)
    p.update({"class": cls.rank, "class_name": cls.name, "jpeg": {"quality": jpeg[0], "relation": jpeg[1]},
              "where": where or EVEN})
    return {"agreement_psnr_db": psnr_db, "agreement_ssim": 0.99, "max_levels": maxl, "mean_levels": 0.5,
            "share_over_2_levels": 0.5, "share_within_1_level": 0.3, "where": EVEN, "perceptual": p}


def _result(ptq, qat):
    return {"reference": None, "input": None, "worst": {"role": "ptq", "x": 1, "y": 1},
            "models": {"fp32": {}, "ptq": ptq, "qat": qat}}


def test_verdict_rates_by_what_a_viewer_would_notice_not_by_level_counts():
    """Paper-set-like numbers: both INT8 models have half their pixels more than 2 levels off
    (the old rule called both 'visibly different'); by ΔE00 QAT passes for full precision and
    PTQ does not, and headline, verdict and table say the same."""
    r = _result(_model(0.485, 2.74, 35.8, jpeg=(50, "about")), _model(0.074, 1.04, 42.5, jpeg=(98, "about")))
    text = V.verdict(r, LAT, SIZES)
    assert "QAT is the better INT8 model here" in text and "7× more pixels a viewer would notice" in text
    assert "about as different as a JPEG at quality 98" in text and "about as different as a JPEG at quality 50" in text
    head = V.headline(r, LAT, SIZES)
    assert head.index("QAT-INT8") < head.index("PTQ-INT8"), "the model that passes comes first"
    assert "looks the same as full precision" in head and "visibly different" in head
    assert "7× more noticeable pixels" in head and "like a JPEG at quality 50" in head
    from app.compare import pipeline as core

    headers, rows = core.table(r, LAT, SIZES)
    looks = headers.index("Looks (vs FP32)")
    assert [row[looks] for row in rows[1:]] == ["visibly different", "looks the same"]


def test_verdict_crowns_no_model_in_the_same_class_without_a_clear_gap():
    same = _result(_model(0.05, 1.1), _model(0.06, 1.2))
    text = V.verdict(same, LAT, SIZES)
    assert "better" not in text.lower() and "would pass for full precision" in text
    assert "neither has markedly more noticeable pixels" in text
    gap = _result(_model(0.02, 0.9), _model(0.10, 1.3))
    assert "QAT-INT8 has 5× more noticeable pixels than PTQ-INT8" in V.verdict(gap, LAT, SIZES)
    tiny = _result(_model(0.0, 0.4), _model(0.0, 0.5))
    assert "indistinguishable from full precision" in V.verdict(tiny, LAT, SIZES)


def test_headline_is_one_coloured_line_from_the_numbers():
    where = dict(EVEN, shadows={"area": 0.1, "share_of_bad": 0.8})
    r = _result(_model(0.4, 3.0, where=where, jpeg=(70, "about")), _model(0.004, 0.6, jpeg=(98, "better than")))
    head = V.headline(r, LAT, SIZES)
    assert "\n" not in head
    assert "PTQ-INT8" in head and "visibly different" in head and "dark areas" in head
    assert "QAT-INT8" in head and "indistinguishable from full precision" in head
    assert "closer than a JPEG at quality 98" in head and "100× more noticeable pixels" in head
    assert "INT8 2.0× faster" in head and "3.7× smaller" in head
    assert V.COLOURS[3] in head and V.COLOURS[0] in head
    slow = {"fp32": [100.0], "ptq": [120.0], "qat": [130.0]}
    assert "INT8 not faster here" in V.headline(r, slow, SIZES)
    assert "busy" not in head
    noisy = {"fp32": [450.0, 1020.0, 1120.0], "ptq": [140.0, 190.0, 270.0], "qat": [149.0] * 3}
    assert "the server is busy" in V.headline(r, noisy, SIZES)
    assert "PTQ 300 ms (2.0× faster)" in V.verdict(r, LAT, SIZES)  # one way of saying speed


def test_worst_region_is_where_a_viewer_would_notice():
    """The crop goes where the perceptual (ΔE00) difference is largest, not the raw level error:
    9 levels in near-black shadows are less visible than 4 in mid-tones."""
    from app.compare import pipeline as core

    img = np.zeros((128, 256, 3), np.uint8)
    img[:, 128:] = 120                                 # left half near black, right half mid-grey
    other = img.astype(np.int16)
    other[:, :128] += 9                                # the largest level error hides in the dark half
    other[:, 128:, 2] += 4                             # a smaller, bluish shift on the grey
    outputs = {"fp32": img, "ptq": other.astype(np.uint8), "qat": img.copy()}
    prep = core.Prepared(img, None, None, [], (256, 128), False)
    result = core.analyse(prep, outputs)
    assert result["worst"]["role"] == "ptq" and result["worst"]["x"] >= 128
    assert result["models"]["ptq"]["max_levels"] == 9 and result["models"]["qat"]["perceptual"]["class"] == 0


def test_metrics_table_has_real_headers_before_any_result_and_after_an_error():
    import gradio as gr

    from app.compare import handlers as compare
    from app.ui import build_demo

    demo = build_demo()
    table = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "metrics")
    assert isinstance(table, gr.Dataframe)
    headers = table.value["headers"]
    assert headers[0] == "Model" and not set(headers) & {"1", "2", "3"}, headers
    blank = compare.error_outputs(gr.Error("bad photo", title="Cannot use this input"))
    assert set(blank) == set(compare.OUTPUT_NAMES), "an error blanks every output"
    assert list(blank["metrics"].columns)[0] == "Model"
    assert "bad photo" in blank["notice"] and "Cannot use this input" in blank["notice"]
    assert all(blank[k] is None for k in ("zoom", "fp32", "ptq", "qat", "heatmap", "state"))
    slots = compare.as_slots(blank)
    assert slots[compare.OUTPUT_NAMES.index("notice")] == blank["notice"], "laid out in OUTPUT_NAMES order"
    with pytest.raises(KeyError):
        compare.as_slots({"no_such_output": 1})


def _bench_row(role, median, lo, hi, size="512x512", mp=0.26):
    return {"role": role, "median_ms": median, "min_ms": lo, "max_ms": hi, "size": size, "mp": mp,
            "ratio_to_fp32": median / 130.0}


def test_benchmark_warns_when_the_spread_shows_a_busy_machine():
    from app.benchmark.handlers import busy_warning

    steady = [_bench_row("fp32", 130, 128, 140), _bench_row("ptq", 58, 56, 60), _bench_row("qat", 58, 57, 61)]
    assert busy_warning(steady) == ""
    busy = steady[:2] + [_bench_row("qat", 58, 57, 128)]
    text = busy_warning(busy)
    assert "busy" in text and "QAT-INT8" in text and "57 to 128 ms" in text


def test_benchmark_of_one_size_is_a_bar_chart(tmp_path):
    from PIL import Image

    from app.benchmark.handlers import _plot

    rows = [_bench_row("fp32", 130, 128, 140), _bench_row("ptq", 58, 56, 60), _bench_row("qat", 59, 57, 61)]
    with Image.open(_plot(rows, 2, tmp_path / "one.png")) as im:
        one = np.asarray(im.convert("RGB"))
    # Bars: large areas of each model's colour (a line plot of one point per model has a few pixels).
    for colour in ("#1f77b4", "#d62728", "#2ca02c"):
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(one.astype(int) - rgb).sum(axis=2) < 10).sum() > 5000, colour


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None,
                    reason="ai-edge-litert is not installed: no LiteRT rows to time")
def test_benchmark_times_the_int8_models_on_litert(monkeypatch, tmp_path):
    """With LiteRT (the default where it is installed): a row per INT8 model's LiteRT export, timed
    in the same rounds, named after the model it was written from, with its own file's size."""
    from app import models
    from app.benchmark.handlers import _run

    if models.shipped_missing():
        pytest.skip("the restoration set is not in checkpoints/")
    monkeypatch.setenv("QATIE_CACHE_DIR", str(tmp_path))
    *_, last = _run(models.SHIPPED_KEY, None, ["256×256"], 1, 1, litert=True)
    table = last["table"]
    assert list(table["Model"]) == ["FP32", "PTQ-INT8", "QAT-INT8", "PTQ-INT8 on LiteRT", "QAT-INT8 on LiteRT"]
    written = sorted((tmp_path / "litert").glob("*-256x256.tflite"))
    assert [f.name.split("-")[0] for f in written] == ["int8_ptq", "int8_qat"]
    on_litert = table[table["Model"].str.endswith("on LiteRT")]
    assert list(on_litert["File MB"]) == [round(f.stat().st_size / 1e6, 2) for f in written]
    assert (on_litert["Median ms"] > 0).all() and "on LiteRT" in last["status"]
    *_, plain = _run(models.SHIPPED_KEY, None, ["256×256"], 1, 1, litert=False)
    assert list(plain["table"]["Model"]) == ["FP32", "PTQ-INT8", "QAT-INT8"] and "LiteRT" not in plain["status"]


def test_benchmark_chart_draws_the_litert_rows(tmp_path):
    from PIL import Image

    from app.benchmark.handlers import _plot, row_name

    rows = [_bench_row("fp32", 130, 128, 140), _bench_row("ptq", 58, 56, 60), _bench_row("qat", 59, 57, 61)]
    lite = [dict(_bench_row(r, 50, 49, 51), kind="litert") for r in ("ptq", "qat")]
    assert [row_name(r) for r in rows + lite] == ["FP32", "PTQ-INT8", "QAT-INT8", "PTQ-INT8 on LiteRT",
                                                 "QAT-INT8 on LiteRT"]
    with Image.open(_plot(rows, 2, tmp_path / "three.png")) as im:
        three = np.asarray(im.convert("RGB"))
    with Image.open(_plot(rows + lite, 2, tmp_path / "five.png")) as im:
        five = np.asarray(im.convert("RGB"))

    def bars(img, colour) -> int:
        """How many separate runs of columns hold this colour (one per bar)."""
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        cols = (np.abs(img.astype(int) - rgb).sum(axis=2) < 10).any(axis=0)
        return int(np.count_nonzero(cols[1:] & ~cols[:-1]) + cols[0])

    # One bar per model: the INT8 models' colours twice (the LiteRT bars hatched), FP32 once.
    assert [bars(three, c) for c in ("#1f77b4", "#d62728", "#2ca02c")] == [1, 1, 1]
    assert [bars(five, c) for c in ("#1f77b4", "#d62728", "#2ca02c")] == [1, 2, 2]


def test_model_card_tables_each_have_a_heading_and_no_internal_paths(tmp_path):
    from app.about import modelcard

    (tmp_path / "MODEL_CARD.md").write_text(
        "# card\n\n## synthetic: test split: 42 photos of ../shared/data/clean (qatie/data/clean_split.json)\n\n"
        "| model | PSNR dB |\n|---|---|\n| FP32 | 26.03 |\n\n"
        "Tones of the *targets* of each set (mean over photos). More text.\n\n"
        "| set | mean luma |\n|---|---|\n| synthetic | 0.415 |\n")
    md = modelcard.load(tmp_path).tables_md()
    assert "../shared" not in md and "clean_split" not in md
    headings = [line for line in md.splitlines() if line.startswith("####")]
    assert headings == ["#### Test split: 42 photos of the project's clean photo collection",
                        "#### Tones of the targets of each set (mean over photos)"], headings


def test_train_progress_line_has_an_eta_from_measured_speed():
    from app.train.handlers import progress_md
    from app.train.progress import QAT_STEP_COST_RANGE

    assert progress_md("Loading torch…", None, 100.0, 3.0, 150) == "**Loading torch…** · 0:03 elapsed"
    # 120 steps in 60 s since step 2 → 2 steps/s; 478 left → 3:59; then 150 QAT steps at the measured speed.
    line = progress_md("FP32 training", ("fp32", 122, 600, (2, 40.0)), 100.0, 61.0, 150)
    assert "step 122 of 600 (20%)" in line and "1:01 elapsed" in line
    assert "about 3:59 left in this stage (2.00 steps/s)" in line
    lo, hi = (round(150 * cost / 2.0) for cost in QAT_STEP_COST_RANGE)
    assert f"then 150 QAT steps, about {lo // 60}:{lo % 60:02d}–{hi // 60}:{hi % 60:02d}" in line
    assert "\n" not in line


def test_inspect_calibration_falls_back_to_sample_photos_when_the_sets_photos_are_absent(tmp_path):
    """A public demo carries no training data: a set calibrated on ../shared photos is rebuilt on the
    built-in samples, and the note says so instead of failing on a missing folder."""
    import json

    from app.inspect import handlers as ip

    paths = {r: str(tmp_path / f"{r}.onnx") for r in ("fp32", "ptq", "qat")}
    meta = {"calib": f"clean:{tmp_path / 'absent'}", "num_calib": 4, "seed": 1}
    (tmp_path / "ptq.json").write_text(json.dumps({"tensors": [], "meta": meta}))
    st = ip.calib_settings(paths)
    assert st == {"calib_spec": "samples", "num_calib": 4, "seed": 1}
    assert "not on this server" in ip.calib_source(st, paths)
    (tmp_path / "absent").mkdir()
    st = ip.calib_settings(paths)
    assert st["calib_spec"] == meta["calib"] and "as the set's PTQ model" in ip.calib_source(st, paths)


def test_training_chart_draws_one_line_per_validation_set(tmp_path):
    """Two validation sets at ~29 and ~32 dB: one line each (and one input line each), never a
    zigzag joining them; the chart renders."""
    from app.train.progress import plot_curves, validation_series

    points = [{"stage": stage, "step": step, "loss": 0.1,
               "val": {"samples": {"psnr": 29.0 + step / 1000, "input_psnr": 27.0},
                       "photos": {"psnr": 32.0 + step / 1000, "input_psnr": 30.0}}}
              for stage, step in (("FP32", 100), ("FP32", 200), ("QAT", 300))]
    series = validation_series(points)
    assert set(series) == {("FP32", "samples"), ("FP32", "photos"), ("QAT", "samples"), ("QAT", "photos"),
                           ("input", "samples"), ("input", "photos")}
    assert series[("FP32", "samples")] == [(100, 29.1), (200, 29.2)] and series[("input", "photos")][0] == (100, 30.0)
    assert all(max(v for _, v in pts) - min(v for _, v in pts) < 1 for pts in series.values())
    assert plot_curves(points, 200, 300, tmp_path / "curves.png").endswith(".png")
