"""`qatie report`: one run on copies of the shipped models (tiny sizes, one image, four
calibration images, no ../shared) must evaluate all five INT8/FP32 variants, time the same five,
score and time the paper set, and fill the manifest."""
import importlib.util
import json
import shutil

import pytest

from conftest import REPO_ROOT
from tolerances import TOLERANCES
from qatie.report.build import SHIPPED, build_report, check_goals

#: Photos per evaluation set: every number of the card is still computed, on one photo.
LIMIT = 1
FILES = ["fp32.pt", "qat.pt", "int8_ptq.json", "int8_qat.json", *SHIPPED.values()]


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    src = REPO_ROOT / "checkpoints"
    ckpt = tmp_path_factory.mktemp("ckpt")
    for name in FILES:
        shutil.copy(src / name, ckpt / name)
    tmp = tmp_path_factory.mktemp("out")
    out = build_report(tmp / "MODEL_CARD.md", ckpt_dir=ckpt, shared=None, sizes=((64, 96),), threads=1, runs=1,
                       limit=LIMIT, figure=tmp / "crops.png", cache=tmp / "cache", progress=lambda msg: None,
                       num_calib=4, paper_size=(64, 96))
    return out, ckpt, tmp


def test_report_scores_and_times_every_variant(card):
    out, ckpt, tmp = card
    variants = {"fp32", "ptq", "qat", "ptq_percentile", "ptq_entropy"}
    summary = out["results"]["synthetic"]["summary"]
    assert variants | {"input"} <= set(summary)
    assert out["results"]["synthetic"]["count"] == LIMIT
    band = TOLERANCES["real_int8_vs_fp32_psnr_db"]
    for k in variants - {"fp32"}:  # a real INT8 model, neither a copy nor broken
        assert band["min"] < summary[k]["agreement_with_fp32"]["psnr_vs_fp32"] < band["max"], k
    assert {r["model"] for r in out["benchmark"]["results"]} == variants
    assert all(r["size"] == "64x96" and r["median_ms"] > 0 for r in out["benchmark"]["results"])
    oracle = out["tone_oracle"]  # undoing tone errors can only help; its input is the table's input
    assert oracle["input_psnr"] == pytest.approx(summary["input"]["psnr"],
                                                  abs=TOLERANCES["same_metric_two_ways"]["psnr_db"])
    assert oracle["gain_db"] >= 0
    assert (tmp / "crops.png").stat().st_size > 10_000
    band = TOLERANCES["report_tiled_vs_whole_psnr_db"]
    for key in ("fp32", "ptq", "qat"):  # tiling measured: differs from whole-image output, but not wildly
        t = out["tiling"][key]["256"]
        assert t["images"] == LIMIT and band["min"] < t["psnr_tiled_vs_whole"] < band["max"], (key, t)
    md = (tmp / "MODEL_CARD.md").read_text()
    assert "## Goals" in md and "PTQ-INT8 (entropy)" in md and "## Tiling" in md
    from qatie.runtime.cpu import int8_path  # the card names the integer kernels that produced its INT8 numbers
    assert out["benchmark"]["machine"]["int8_path"] == int8_path() and f"INT8 kernels: {int8_path()}" in md
    assert 0 <= out["target_tones"]["synthetic"]["luma_p1"] < out["target_tones"]["synthetic"]["luma_p99"] <= 1
    assert json.loads((tmp / "MODEL_CARD.json").read_text())["goals"] == json.loads(json.dumps(out["goals"]))
    shipped_calib = json.loads((ckpt / "int8_ptq.json").read_text())["meta"]["calib"]
    assert out["variant_calibration"]["num_calib"] == 4  # what the variants were built with: the shipped
    assert out["variant_calibration"]["calib"] in (shipped_calib, "samples")  # PTQ's photos, or the stand-in


def test_report_has_no_paper_section_without_the_paper_set(card):
    from qatie.report.paper import available

    if available():
        pytest.skip("the paper set is in checkpoints/: its section is tested next")
    assert card[0]["paper"] is None


def test_report_scores_and_times_the_paper_set_at_the_size_asked(card):
    from qatie.report.paper import PAPER, available

    if not available():
        pytest.skip("the paper set is not in checkpoints/")
    out, _, tmp = card
    paper = out["paper"]
    # with ai-edge-litert, each INT8 model also runs as its LiteRT export, in the same rounds
    lite = [f"{m}@litert" for m in PAPER[1:]] if importlib.util.find_spec("ai_edge_litert") else []
    assert paper["size"] == "64×96" and [r["model"] for r in paper["benchmark"]["results"]] == list(PAPER) + lite
    assert all(r["size"] == "64x96" and r["median_ms"] > 0 for r in paper["benchmark"]["results"])
    band = TOLERANCES["real_int8_vs_fp32_psnr_db"]
    for m in PAPER[1:]:  # the INT8 versions are real INT8 models of the paper network
        assert band["min"] < paper["results"]["synthetic"]["summary"][m]["agreement_with_paper"]["psnr_vs_fp32"] < band["max"], m
    md = (tmp / "MODEL_CARD.md").read_text()
    assert "Latency of the paper set at 64×96 in one run" in md  # no authors' TFLite at this size
    assert not any("latency" in g["goal"] for g in paper["goals"])


def test_manifest_has_hashes_metrics_and_latency_of_each_shipped_file(card):
    out, ckpt, _ = card
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert set(FILES) - {"int8_ptq.json", "int8_qat.json"} <= set(files)
    for key, name in SHIPPED.items():
        entry = files[name]
        assert len(entry["sha256"]) == 64 and entry["bytes"] == (ckpt / name).stat().st_size
        assert entry["latency_ms"]["64x96"] > 0, (key, entry.get("latency_ms"))
        assert set(entry["metrics"]["synthetic"]) >= {"psnr", "ssim"}


def test_goals_follow_the_numbers():
    def row(psnr, ssim, agree=None):
        r = {"psnr": psnr, "ssim": ssim}
        return r | ({"agreement_with_fp32": {"psnr_vs_fp32": agree}} if agree is not None else {})

    res = {"synthetic": {"summary": {"input": row(25.0, 0.80), "fp32": row(28.5, 0.85),
                                     "ptq": row(28.0, 0.83, 35.0), "qat": row(28.45, 0.848, 43.0)}}}
    met = {g["goal"]: g["met"] for g in check_goals(res)}
    assert all(met.values()), met
    res["synthetic"]["summary"]["qat"] = row(28.3, 0.84, 38.0)  # QAT no better than PTQ's loss share
    met = {g["goal"]: g["met"] for g in check_goals(res)}
    assert [k for k, v in met.items() if not v] == [
        "QAT-INT8 PSNR within 0.1 dB of FP32", "QAT-INT8 SSIM within 0.005 of FP32",
        "QAT-INT8 agreement with FP32 ≥ 42.0 dB", "QAT recovers ≥ 75% of minmax PTQ's SSIM loss",
        "QAT agreement ≥ 5.0 dB better than minmax PTQ"]


def test_readme_results_block_is_the_shipped_model_card():
    """README's numbers are written by `qatie report --readme` from MODEL_CARD.json, never by hand."""
    from qatie.report.model_card import README_BEGIN, README_END, readme_results

    card = json.loads((REPO_ROOT / "checkpoints" / "MODEL_CARD.json").read_text())
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    assert block.strip() == readme_results(card).strip()
    assert readme.count("Context for the FP32 goal") == 1


def test_report_syncs_a_readme_block_and_refuses_one_without_markers(card, tmp_path):
    from qatie.errors import QatieError
    from qatie.report.model_card import README_BEGIN, README_END, sync_readme

    out, _, _ = card
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nstale numbers\n{README_END}\noutro\n")
    sync_readme(readme, out)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "stale numbers" not in text
    assert "| QAT-INT8 |" in text and "What these numbers say" in text
    sync_readme(readme, out)  # idempotent
    assert readme.read_text() == text
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers here\n")
    with pytest.raises(QatieError, match="model-card block"):
        sync_readme(bare, out)
    assert bare.read_text() == "no markers here\n"


def test_report_says_every_int8_model_is_exact_on_every_cpu(card):
    """The card's exactness table: each INT8 model copied in, pair-safe in the file and in ONNX
    Runtime's graph, and its output on this CPU the exact integer result on the example photos."""
    out, ckpt, tmp = card
    rows = out["exactness"]
    assert set(rows) == {p.name for p in ckpt.glob("*int8*.onnx")} and rows
    for name, r in rows.items():
        assert r["saturable_pairs"] == 0 and r["runtime_saturable_pairs"] == 0, name
        assert r["photos"] >= 1 and r["max_levels_vs_exact"] == 0, name
    md = (tmp / "MODEL_CARD.md").read_text()
    assert "## Exact on every CPU" in md and all(f"| `{n}` | 0 | 0 | 0 (on " in md for n in rows)
