"""The paper set in the app: the page opens with it when its three files are shipped, the
restoration set stays one choice away, and the authors' own INT8 TFLite model runs "as released"
beside it where `ai-edge-litert` is installed. The API checks use the session's app server (`python app.py`,
tests/conftest.py, through `gradio_client`); numbers are checked against the pictures returned, never hard-coded.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from tolerances import TOLERANCES

sys.path.insert(0, str(REPO_ROOT))
pytest.importorskip("gradio")
from app import models  # noqa: E402
from app.compare import authors
from app.compare import handlers as app_compare

PAPER_MISSING = models.shipped_missing(models.PAPER_KEY)
RESTORATION_MISSING = models.shipped_missing(models.SHIPPED_KEY)
LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_paper = pytest.mark.skipif(bool(PAPER_MISSING), reason="the paper set is not in checkpoints/ (missing: "
                                 + ", ".join(PAPER_MISSING) + ")")
needs_litert = pytest.mark.skipif(not (LITERT and authors.PATH.is_file()),
                                  reason="ai-edge-litert is not installed or the authors' 100×100 file is absent (../shared/reference)")
OUT = ("notice", "input", "fp32", "ptq", "qat", "slider_ptq", "slider_qat", "verdict", "metrics", "heatmap", "zoom",
       "zoom_x", "zoom_y", "metrics_json", "downloads", "headline", "slider_crop", "heatmap_ref", "authors",
       "litert")
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
    assert [row[0] for row in r["metrics"]["data"]] == ["FP32", "PTQ-INT8", "QAT-INT8"]


@needs_paper
@needs_litert
def test_api_authors_tflite_as_released(client, tmp_path):
    from qatie.metrics import error_levels, psnr

    image = small_photo(tmp_path)
    r = api_compare(client, image)
    src, fp32, out = load(image), load(r["fp32"]), load(r["authors"])
    assert out.shape == src.shape
    assert "as released" in r["notice"] and "100×100 tiles" in r["verdict"], (r["notice"], r["verdict"])
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
