"""The paper set in the app: the page opens with it when its three files are shipped, the
restoration set stays one choice away, and the authors' own INT8 TFLite model runs "as released"
beside it where `ai-edge-litert` is installed — and so does QATIE's own QAT-INT8 written to LiteRT
(which needs only checkpoints/, not ../shared). The API checks use the session's app server (`python app.py`,
tests/conftest.py, through `gradio_client`); numbers are checked against the pictures returned, never hard-coded.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, assert_close
from tolerances import TOLERANCES

sys.path.insert(0, str(REPO_ROOT))
pytest.importorskip("gradio")
from app import models  # noqa: E402
from app.compare import authors, litert
from app.compare import handlers as app_compare

PAPER_MISSING = models.shipped_missing(models.PAPER_KEY)
RESTORATION_MISSING = models.shipped_missing(models.SHIPPED_KEY)
LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_paper = pytest.mark.skipif(bool(PAPER_MISSING), reason="the paper set is not in checkpoints/ (missing: "
                                 + ", ".join(PAPER_MISSING) + ")")
needs_litert = pytest.mark.skipif(not (LITERT and authors.PATH.is_file()),
                                  reason="ai-edge-litert is not installed or the authors' 100×100 file is absent (../shared/reference)")
#: QATIE's QAT-INT8 on LiteRT needs the runtime package only (its model is checkpoints/paper_int8_qat.onnx).
needs_litert_runtime = pytest.mark.skipif(not LITERT, reason="ai-edge-litert is not installed (pip install "
                                          "'qatie[tflite]'): QATIE's QAT-INT8 on LiteRT cannot be written or run")
OUT = ("notice", "input", "fp32", "ptq", "qat", "slider_ptq", "slider_qat", "verdict", "metrics", "heatmap", "zoom",
       "zoom_x", "zoom_y", "metrics_json", "downloads", "headline", "slider_crop", "heatmap_ref", "authors",
       "litert", "litert_note")
EXAMPLES = REPO_ROOT / "assets" / "examples"


def load(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def small_photo(tmp_path, h=180, w=260):
    """A photo-like image under the display limit (what is shown is what was measured)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.45 + 0.25 * np.sin(xx[..., None] / 11.0 + yy[..., None] / 17.0 + np.arange(3))
    path = tmp_path / "photo.png"
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def test_default_set_follows_the_shipped_files():
    assert models.default_set() == (models.SHIPPED_KEY if PAPER_MISSING else models.PAPER_KEY)
    from app import ui

    assert ui.DEFAULT_SET == models.default_set()
    assert ui._authors_visible(models.SHIPPED_KEY) is False
    assert ui._authors_visible(models.PAPER_KEY) is (LITERT and authors.PATH.is_file())


def test_start_up_does_not_import_the_tflite_runtime():
    """ai-edge-litert is imported only when a comparison on the paper set runs (cold start)."""
    code = ("import sys; sys.path.insert(0, '.'); import app.ui as u; u.build_demo(); "
            "print('ai_edge_litert' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"], out.stdout


def test_authors_file_is_found_outside_the_repository(tmp_path, monkeypatch):
    """The authors' file is never shipped: QATIE_AUTHORS_TFLITE (or ../shared/reference) names it,
    and without it the notice says the file is missing, not that a package is."""
    import importlib

    monkeypatch.setenv("QATIE_AUTHORS_TFLITE", str(tmp_path / "absent.tflite"))
    mod = importlib.reload(authors)
    try:
        assert mod.PATH == tmp_path / "absent.tflite"
        assert not mod.available() and mod.unavailable_notice() == mod.MISSING_NOTICE
        (tmp_path / "absent.tflite").write_bytes(b"x")
        assert mod.unavailable_notice() == ("" if LITERT else mod.INSTALL_NOTICE)
    finally:
        monkeypatch.delenv("QATIE_AUTHORS_TFLITE")
        importlib.reload(authors)
    assert not list((REPO_ROOT / "checkpoints").glob("*.tflite"))


@needs_litert
def test_authors_tflite_beside_the_analysis_gives_the_plain_run_exactly():
    """Shared between two threads (two interpreters), the tiles blend to exactly what one
    interpreter running them in order gives, and the latency is the tiles' CPU time."""
    from skimage import data

    from qatie.imageio import to_uint8
    from qatie.paper.tflite import AuthorsTFLite

    from app.boundary import guard

    img = np.asarray(Image.fromarray(data.astronaut()).resize((420, 300)))
    beside = authors.Beside(img, guard.Deadline(60, "The comparison"))
    out, ms, how = beside.finish()
    plain = to_uint8(AuthorsTFLite(authors.PATH, threads=1).enhance(img.astype(np.float32) / np.float32(255.0)))
    assert out.shape == img.shape and out.dtype == np.uint8 and "100×100 tiles" in how
    assert np.array_equal(out, plain)
    assert ms > 0


@needs_litert
def test_authors_tflite_stops_at_the_compare_deadline():
    """A TFLite run cannot be cancelled from outside: the deadline is checked before each tile."""
    import time

    from app.boundary import guard

    late = guard.Deadline(0.001, "The comparison")
    time.sleep(0.05)
    with pytest.raises(guard.DeadlineError):
        authors.Beside(np.zeros((2000, 3000, 3), np.uint8), late).finish()

    class FiresAtThirdTile:
        checks = 0

        def check(self):
            self.checks += 1
            if self.checks >= 3:
                raise guard.DeadlineError("time's up")

    d = FiresAtThirdTile()
    with pytest.raises(guard.DeadlineError):
        authors.Beside(np.zeros((2000, 3000, 3), np.uint8), d).finish()  # about 900 tiles
    workers = 2  # each may have begun one more tile before the other's deadline stopped the run
    assert d.checks <= 3 + (workers - 1), "the run went on after its deadline"


@needs_paper
def test_without_litert_the_column_is_replaced_by_a_notice(monkeypatch, tmp_path):
    (tmp_path / "authors.tflite").write_bytes(b"x")  # the file is there, the package is not
    monkeypatch.setattr(authors, "PATH", tmp_path / "authors.tflite")
    monkeypatch.setattr(authors, "available", lambda: False)
    vals = None
    for vals in app_compare.compare(str(small_photo(tmp_path)), model_set=models.PAPER_KEY):
        pass
    r = dict(zip(app_compare.OUTPUT_NAMES, vals))
    assert "pip install ai-edge-litert" in r["notice"]
    assert r["authors"] is None and "authors_tflite" not in r["metrics_json"]
    assert authors.LABEL not in list(r["metrics"]["Model"])


# --------------------------------------------------------------------------------------------
# Through the public API
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(app_server):
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    return Client(app_server.url, verbose=False)  # the session's one app server (tests/conftest.py)


def api_compare(client, image, **kw) -> dict:
    from gradio_client import handle_file

    result = client.predict(handle_file(str(image)), api_name="/compare", **kw)
    assert len(result) == len(OUT), f"compare returned {len(result)} values, expected {len(OUT)}"
    return dict(zip(OUT, result))


@needs_paper
def test_api_default_is_the_paper_set(client, tmp_path):
    r = api_compare(client, small_photo(tmp_path))  # model_set omitted: the default set
    js = r["metrics_json"]
    assert js["model_set_key"] == models.PAPER_KEY and js["model_set"] == models.BUILTIN_SETS[models.PAPER_KEY][0]
    assert models.BUILTIN_BLURBS[models.PAPER_KEY] in r["notice"]
    for role in models.ROLES:  # the paper set's own files
        assert js["file_mb"][role] == pytest.approx(models.shipped_paths(models.PAPER_KEY)[role].stat().st_size / 1e6,
                                                    abs=TOLERANCES["reported_file_mb"])


@pytest.mark.skipif(bool(RESTORATION_MISSING), reason="the restoration set is not in checkpoints/")
def test_api_shipped_still_selects_the_restoration_set(client, tmp_path):
    r = api_compare(client, small_photo(tmp_path), model_set=models.SHIPPED_KEY)
    js = r["metrics_json"]
    assert js["model_set_key"] == models.SHIPPED_KEY
    assert models.BUILTIN_BLURBS[models.SHIPPED_KEY] in r["notice"]
    for role in models.ROLES:
        assert js["file_mb"][role] == pytest.approx(models.shipped_paths()[role].stat().st_size / 1e6,
                                                    abs=TOLERANCES["reported_file_mb"])
    assert r["authors"] is None and "authors_tflite" not in js and "ai-edge-litert" not in r["notice"]
    assert r["litert"] is None and "litert" not in js
    assert [row[0] for row in r["metrics"]["data"]] == ["FP32", "PTQ-INT8", "QAT-INT8"]


@needs_paper
@needs_litert
def test_api_authors_tflite_as_released(client, tmp_path):
    from qatie.metrics import error_levels, psnr

    image = small_photo(tmp_path)
    r = api_compare(client, image)
    src, fp32, out = load(image), load(r["fp32"]), load(r["authors"])
    assert out.shape == src.shape
    assert "as released" in r["litert_note"] and "100×100 tiles" in r["verdict"], (r["litert_note"], r["verdict"])
    js = r["metrics_json"]["authors_tflite"]
    assert js["label"] == authors.LABEL and js["file"] == authors.PATH.name
    # Scored on exactly the pixels shown, like the INT8 rows.
    f = np.float32(255)
    assert js["agreement_psnr_db"] == pytest.approx(psnr(out / f, fp32 / f),
                                                        abs=TOLERANCES["reported_metric_vs_recomputed"]["psnr_db"])
    assert js["max_levels"] == error_levels(out / f, fp32 / f).max()
    table = r["metrics"]
    row = next(row for row in table["data"] if row[0] == authors.LABEL)
    col = next(i for i, h in enumerate(table["headers"]) if h.startswith("Agreement") and "PSNR" in h)
    assert row[col] == f"{js['agreement_psnr_db']:.2f}"
    # The authors' own INT8 model is not a copy of our FP32 export of its weights.
    assert not np.array_equal(out, fp32)


@pytest.mark.skipif(not (EXAMPLES / "astronaut_input.png").is_file(), reason="no example photos")
def test_api_first_example_is_cached_on_the_default_set(client):
    """The first view's example (computed at start-up) is a cache hit on the default set."""
    from app.compare.first_view import first_example

    import time

    from gradio_client import handle_file

    photo, ref = first_example()
    deadline = time.time() + 180
    while not (state := client.predict(api_name="/debug_modules")["first_view"])["ready"] and time.time() < deadline:
        time.sleep(1)
    assert state["ready"] and not state["error"], state
    assert state["model_set"] == models.default_set()
    kw = {"reference": handle_file(ref)} if ref else {}
    r = api_compare(client, photo, **kw)
    assert "cached" in r["notice"], r["notice"]
    assert r["metrics_json"]["model_set_key"] == models.default_set()


@needs_paper
def test_timing_rounds_stay_within_the_compare_time_budget(monkeypatch, tmp_path):
    """No budget left: latency from the single pass that made the pictures, and the notice says
    why; a generous budget: every round."""
    from app import config as app_config

    def final(budget):
        monkeypatch.setattr(app_config, "TIMING_BUDGET_S", budget)
        vals = None
        for vals in app_compare.compare(str(small_photo(tmp_path)), model_set=models.PAPER_KEY):
            pass
        return dict(zip(app_compare.OUTPUT_NAMES, vals))

    tight = final(0.0)
    assert {v["runs"] for v in tight["metrics_json"]["latency_ms"].values()} == {1}
    assert "extra timing runs are skipped when they would take this compare past 0 s" in tight["notice"]
    roomy = final(600.0)
    assert {v["runs"] for v in roomy["metrics_json"]["latency_ms"].values()} == {app_config.TIMING_RUNS}


@needs_paper
def test_paper_set_is_not_scored_against_a_restoration_reference(tmp_path):
    """The paper network re-grades colour on purpose: a simulated phone photo's clean original is
    not its target, so it is rated by agreement with full precision only, and the notice says so."""
    vals = None
    for vals in app_compare.compare(str(small_photo(tmp_path)), simulate=True, seed=3, model_set=models.PAPER_KEY):
        pass
    r = dict(zip(app_compare.OUTPUT_NAMES, vals))
    assert r["metrics_json"]["reference"] is None and "PSNR vs reference (dB)" not in list(r["metrics"].columns)
    assert "Rated against full precision only" in r["notice"]


# --------------------------------------------------------------------------------------------
# QATIE's QAT-INT8 on LiteRT (the phone runtime), beside the authors' file
# --------------------------------------------------------------------------------------------

def final_compare(image, **kw) -> dict:
    """The final update of a comparison run in this process, by output name; its pictures (input,
    FP32, the LiteRT one) read as arrays while they exist (the request's folder goes when it ends)."""
    r, shown = None, {}
    for vals in app_compare.compare(str(image), **kw):
        r = dict(zip(app_compare.OUTPUT_NAMES, vals))
        shown.update({k: load(r[k]) for k in ("input", "fp32", "litert") if isinstance(r[k], str)})
    r["shown"] = shown
    return r


def test_litert_picture_is_for_the_paper_sets_own_qat_model():
    """It rates the paper QAT export against the paper FP32: not for the restoration set, nor
    when an upload replaces the FP32 (another reference) or the QAT model (not the file written)."""
    from app import ui

    paper, shipped = models.shipped_set(models.PAPER_KEY), models.shipped_set(models.SHIPPED_KEY)
    upload = ("/tmp/model.onnx", "model.onnx")
    assert litert.applies(paper, {}) and litert.applies(paper, {"ptq": upload})
    assert not litert.applies(shipped, {})
    assert not litert.applies(paper, {"fp32": upload}) and not litert.applies(paper, {"qat": upload})
    assert ui._litert_visible(models.SHIPPED_KEY) is False
    assert ui._litert_visible(models.PAPER_KEY) is LITERT
    assert litert.unavailable_notice() == ("" if LITERT else litert.INSTALL_NOTICE)
    assert list(app_compare.BESIDE) == ["authors", "litert"]
    assert app_compare.OUTPUT_NAMES[-4:] == ("authors", "litert", "litert_note", "state"), \
        "new outputs go last (API positions)"


def test_the_page_has_the_litert_picture_with_alt_text_and_the_benchmark_option():
    """The picture (with its label and alt text) is on the page for the paper set where the runtime
    is installed, hidden otherwise; the Benchmark tab offers the LiteRT rows likewise."""
    import gradio as gr

    from app import ui

    blocks = list(ui.build_demo().blocks.values())
    picture = next(b for b in blocks if getattr(b, "elem_id", None) == "out-litert")
    assert isinstance(picture, gr.Image) and picture.label == litert.LABEL
    assert "LiteRT" in picture.alt_text and "QAT-INT8" in picture.alt_text
    assert picture.visible is ui._litert_visible(ui.DEFAULT_SET)
    option = next(b for b in blocks if isinstance(b, gr.Checkbox) and "on LiteRT" in str(b.label))
    assert option.value is True and option.visible is LITERT


@needs_paper
@needs_litert_runtime
def test_litert_beside_gives_the_plain_run_exactly(monkeypatch, tmp_path):
    """Run beside the analysis, the picture is exactly what the LiteRT file gives run plainly; the
    file is written once per size into the cache folder, then found there; in full-size mode it
    is written at the ONNX models' tile size and run in their tiles."""
    from qatie.imageio import to_uint8
    from qatie.runtime.enhancer import run_tiled
    from qatie.runtime.litert import LiteRTEnhancer

    from app import config as app_config
    from app.boundary import guard

    monkeypatch.setenv("QATIE_CACHE_DIR", str(tmp_path))
    img = load(small_photo(tmp_path))
    qat = models.shipped_paths(models.PAPER_KEY)["qat"]
    first = litert.Beside(img, qat, False, guard.Deadline(120, "The comparison"))
    out, ms, how = first.finish()
    h, w = img.shape[:2]
    assert first.file.parent == tmp_path / "litert" and first.file.name.endswith(f"-{h}x{w}.tflite")
    assert "written for this size now" in how and f"at {w}×{h}" in how and qat.name in how
    plain = to_uint8(LiteRTEnhancer(first.file).enhance(img.astype(np.float32) / np.float32(255.0)))
    assert out.shape == img.shape and out.dtype == np.uint8 and np.array_equal(out, plain)
    assert ms > 0
    again = litert.Beside(img, qat, False, guard.Deadline(120, "The comparison"))
    out2, _, how2 = again.finish()
    assert again.file == first.file and "from the cache" in how2 and np.array_equal(out2, out)

    tile = h // 2  # full-size mode: tiles of the ONNX models' size
    monkeypatch.setattr(app_config, "TILE", tile)
    monkeypatch.setattr(app_config, "TILE_OVERLAP", tile // 8)
    tiled = litert.Beside(img, qat, True, guard.Deadline(120, "The comparison"))
    out3, _, how3 = tiled.finish()
    assert tiled.file.name.endswith(f"-{tile}x{tile}.tflite") and "tiles" in how3
    one = LiteRTEnhancer(tiled.file)
    expect = to_uint8(run_tiled(one.enhance, img.astype(np.float32) / np.float32(255.0), tile, tile // 8))
    assert np.array_equal(out3, expect)


@needs_paper
@needs_litert_runtime
def test_writing_and_running_the_litert_file_never_imports_torch(tmp_path):
    """The compare path stays torch-free when it writes a LiteRT file (a fresh cache) and runs it."""
    import os

    code = ("import sys; sys.path.insert(0, '.'); import numpy as np; from app.compare import litert; "
            "from app.boundary import guard; from app import models; "
            "b = litert.Beside(np.full((64, 96, 3), 128, np.uint8), models.shipped_paths('paper')['qat'], False, "
            "guard.Deadline(120, 'x')); out, ms, how = b.finish(); "
            "print('written' in how, out.shape == (64, 96, 3), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QATIE_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["True", "True", "False"], out.stdout


@needs_paper
@needs_litert_runtime
def test_litert_picture_stops_at_the_compare_deadline(monkeypatch, tmp_path):
    import time

    from app.boundary import guard

    monkeypatch.setenv("QATIE_CACHE_DIR", str(tmp_path))
    late = guard.Deadline(0.001, "The comparison")
    time.sleep(0.05)
    beside = litert.Beside(load(small_photo(tmp_path)), models.shipped_paths(models.PAPER_KEY)["qat"], False, late)
    with pytest.raises(guard.DeadlineError):
        beside.finish()
    assert not list((tmp_path / "litert").glob("*.tflite")), "nothing is written after the deadline"


@needs_paper
@needs_litert_runtime
def test_compare_shows_qatie_qat_on_litert_rated_like_the_int8_models(monkeypatch, tmp_path):
    """Without the authors' file (no ../shared), the LiteRT picture is still there: scored on the
    pixels shown, in the table with the same perceptual cells, and the line over the LiteRT
    pictures and the verdict say what the table says. It is the QAT model: its agreement with FP32 is the QAT row's
    within the LiteRT export's tolerance."""
    from qatie.analysis.perceptual import CLASSES
    from qatie.metrics import error_levels, psnr

    monkeypatch.setattr(authors, "PATH", tmp_path / "absent.tflite")  # this picture does not need it
    image = small_photo(tmp_path)
    r = final_compare(image, model_set=models.PAPER_KEY)
    assert r["authors"] is None and authors.MISSING_NOTICE in r["notice"]
    assert isinstance(r["litert"], str) and r["litert"].endswith(".png")
    shown, fp32 = r["shown"]["litert"], r["shown"]["fp32"]
    assert shown.shape == load(image).shape
    js = r["metrics_json"]["litert"]
    h, w = shown.shape[:2]
    assert js["label"] == litert.LABEL and js["file"].endswith(f"-{h}x{w}.tflite") and js["latency_ms"] > 0
    assert js["latency_is"] == litert.LATENCY_IS
    f = np.float32(255)
    assert_close(js["agreement_psnr_db"], psnr(shown / f, fp32 / f), "reported_metric_vs_recomputed.psnr_db")
    assert js["max_levels"] == error_levels(shown / f, fp32 / f).max()
    assert_close(js["agreement_psnr_db"], r["metrics_json"]["models"]["qat"]["agreement_psnr_db"],
                 "litert_export.agreement_gap_db")
    table = r["metrics"]
    assert list(table["Model"]) == ["FP32", "PTQ-INT8", "QAT-INT8", litert.LABEL]
    row = table[table["Model"] == litert.LABEL].iloc[0]
    p = js["perceptual"]
    assert row["Looks (vs FP32)"] == p["class_name"] == CLASSES[p["class"]].name
    assert row["Agreement with full precision: PSNR (dB)"] == f"{js['agreement_psnr_db']:.2f}"
    assert row["Latency (ms)"].endswith("(1 core)") and abs(int(row["Latency (ms)"].split()[0]) - js["latency_ms"]) <= 1
    assert f"**{litert.LABEL}**: {p['class_name']} (" in r["litert_note"] and litert.LABEL not in r["notice"]
    details = next(par for par in r["verdict"].split("\n\n") if par.startswith(f"**{litert.LABEL}**"))
    assert CLASSES[p["class"]].sentence in details and litert.LATENCY_IS in details
    assert f"{js['agreement_psnr_db']:.2f} dB" in details


@needs_paper
def test_without_ai_edge_litert_the_litert_picture_is_a_notice(monkeypatch, tmp_path):
    """Where the runtime package is missing, neither LiteRT picture runs; the notice says what
    installing it adds."""
    monkeypatch.setattr(litert, "available", lambda: False)
    monkeypatch.setattr(authors, "available", lambda: False)
    r = final_compare(small_photo(tmp_path), model_set=models.PAPER_KEY)
    assert r["litert"] is None and "litert" not in r["metrics_json"]
    assert litert.INSTALL_NOTICE in r["notice"] and "pip install ai-edge-litert" in r["notice"]
    assert not r["litert_note"]
    assert litert.LABEL not in list(r["metrics"]["Model"]) and litert.LABEL not in r["verdict"]


@pytest.mark.skipif(bool(RESTORATION_MISSING), reason="the restoration set is not in checkpoints/")
def test_restoration_set_has_no_litert_picture(tmp_path):
    r = final_compare(small_photo(tmp_path, 96, 128), model_set=models.SHIPPED_KEY)
    assert r["litert"] is None and r["authors"] is None
    assert "litert" not in r["metrics_json"] and "LiteRT" not in r["notice"] and "LiteRT" not in r["verdict"]
    assert not r["litert_note"]
    assert list(r["metrics"]["Model"]) == ["FP32", "PTQ-INT8", "QAT-INT8"]


@needs_paper
@needs_litert_runtime
def test_api_litert_picture_beside_the_paper_set(client, tmp_path):
    """Through the public API: the picture is a PNG of the photo's size, with its row."""
    image = small_photo(tmp_path)
    r = api_compare(client, image)
    out = load(r["litert"])
    assert out.shape == load(image).shape
    js = r["metrics_json"]["litert"]
    table = r["metrics"]
    row = next(row for row in table["data"] if row[0] == litert.LABEL)
    col = next(i for i, h in enumerate(table["headers"]) if h.startswith("Agreement") and "PSNR" in h)
    assert row[col] == f"{js['agreement_psnr_db']:.2f}"
    assert litert.LABEL in r["litert_note"] and litert.LABEL in r["verdict"]
