"""The app's building blocks without a server: decoding and sizing uploads, the verdict, the
pictures (heatmaps, zoom), the model card reader, model sets and the example photos."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from tolerances import TOLERANCES

sys.path.insert(0, str(REPO_ROOT))
from app.boundary import uploads
from app import config, models, render  # noqa: E402
from app.compare import pipeline as core
from app.about import modelcard
from app.compare.verdict import concentration, verdict  # noqa: E402
from qatie.errors import ImageReadError, ModelFileError  # noqa: E402


def _img(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------

def test_large_upload_is_decoded_reduced_like_the_full_decoder(tmp_path):
    smooth = np.asarray(Image.fromarray(_img(60, 80)).resize((2400, 1800), Image.Resampling.BICUBIC))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 2400×1800, upright 1800×2400
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
        path = tmp_path / f"big.{ext}"
        Image.fromarray(smooth).save(path, format=fmt, exif=exif.tobytes())
        fast = uploads.read_upload(str(path), "photo", max_pixels=0.2e6)
        full = uploads.read_upload(str(path), "photo")
        assert fast.original_size == full.original_size == (1800, 2400)
        assert fast.image.shape[0] < full.image.shape[0] / 2, "decoded at a reduced size"
        target = render.fit_size(1800, 2400, 0.2e6)
        a = render.resize_u8(core.to_uint8(fast.image), target).astype(int)
        b = render.resize_u8(core.to_uint8(full.image), target).astype(int)
        tol = TOLERANCES["reduced_decode_vs_full"]
        assert np.abs(a - b).mean() < tol["mean_levels"] and np.percentile(np.abs(a - b), 99) <= tol["p99_levels"]
        assert "rotated upright" in " ".join(full.notes)


def test_upload_errors_name_the_file(tmp_path):
    tiny = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    with pytest.raises(uploads.AppInputError, match="dot.png.*too small"):
        uploads.read_upload({"path": str(tiny), "orig_name": "dot.png"}, "photo")
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        uploads.read_upload(str(empty), "photo")
    with pytest.raises(uploads.AppInputError, match="no photo"):
        core.prepare(None)


def test_prepare_downscales_and_keeps_the_reference_aligned(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "MAX_INPUT_MP", 0.01)
    img = _img(150, 200)
    p, r = tmp_path / "p.png", tmp_path / "r.png"
    Image.fromarray(img).save(p)
    Image.fromarray(img[::-1]).save(r)
    prep = core.prepare(str(p), str(r))
    assert prep.size == render.fit_size(200, 150, 0.01e6)
    assert prep.reference.shape == prep.image.shape and prep.reference_kind == "reference"
    assert any("Downscaled" in n for n in prep.notices)
    sim = core.prepare(str(p), simulate=True, seed=3)
    assert sim.reference_kind == "simulated" and sim.seed == 3 and not np.array_equal(sim.image, sim.reference)


def test_worst_point_finds_the_bad_block():
    err = np.zeros((128, 192), np.float32)
    err[64:96, 160:192] = 9
    assert core.worst_point(err) == (176, 80)
    assert core.worst_point(np.zeros((20, 30), np.float32)) == (15, 10)


# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------

def _model(share_visible, mean_de00, maxl, within1, psnr_db, where=None):
    from qatie.analysis.perceptual import visibility

    where = where or {k: {"area": 0.25, "share_of_bad": 0.25} for k in ("smooth", "textured", "shadows", "highlights")}
    p = {"share_visible": share_visible, "mean_de00": mean_de00}
    cls = visibility(p)
    p.update({"class": cls.rank, "class_name": cls.name, "jpeg": {"quality": 90, "relation": "about"}, "where": where})
    return {"agreement_psnr_db": psnr_db, "agreement_ssim": 0.99, "max_levels": maxl, "mean_levels": 0.5,
            "share_over_2_levels": 0.1, "share_within_1_level": within1, "where": where, "perceptual": p}


def test_verdict_says_what_the_numbers_say():
    smooth = {"smooth": {"area": 0.4, "share_of_bad": 0.9}, "textured": {"area": 0.6, "share_of_bad": 0.1},
              "shadows": {"area": 0.1, "share_of_bad": 0.1}, "highlights": {"area": 0.0, "share_of_bad": 0.0}}
    result = {"reference": None, "input": None, "worst": {"role": "ptq", "x": 10, "y": 20},
              "models": {"fp32": {}, "ptq": _model(0.35, 2.5, 14, 0.7, 33.0, smooth),
                         "qat": _model(0.0, 0.5, 2, 0.998, 46.0)}}
    lat = {"fp32": [600.0, 610.0, 590.0], "ptq": [300.0] * 3, "qat": [310.0] * 3}
    text = verdict(result, lat, {"fp32": 3.7, "ptq": 1.0, "qat": 1.0})
    assert "at most 14 levels off" in text and "mostly in smooth areas" in text
    assert "QAT is the better INT8 model here" in text and "35.0% of pixels" in text
    assert "median of 3 runs" in text and "2.0× faster" in text and "3.7× smaller" in text
    assert "x = 10, y = 20" in text
    same = {"reference": None, "input": None, "worst": {"role": "ptq", "x": 1, "y": 1},
            "models": {"fp32": {}, "ptq": _model(0.0, 0.3, 1, 1.0, 58.0), "qat": _model(0.0, 0.3, 1, 1.0, 57.0)}}
    assert "indistinguishable" in verdict(same, lat, {"fp32": 3.7, "ptq": 1.0, "qat": 1.0})
    assert concentration({"smooth": {"area": 0.5, "share_of_bad": 0.5}}) is None
    untouched = dict(same, reference="simulated", input={"psnr_db": float("inf"), "ssim": 1.0})
    untouched["models"] = {"fp32": {"psnr_db": 40.0, "ssim": 0.99},
                           "ptq": dict(_model(0.0, 0.3, 1, 1.0, 58.0), psnr_db=40.0, ssim=0.99),
                           "qat": dict(_model(0.0, 0.3, 1, 1.0, 57.0), psnr_db=40.0, ssim=0.99)}
    assert "identical to the clean original" in verdict(untouched, lat, {"fp32": 3.7, "ptq": 1.0, "qat": 1.0})


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------

def test_block_max_keeps_a_single_bad_pixel():
    err = np.zeros((1000, 1500), np.float32)
    err[733, 1211] = 17
    small = render.block_max(err, 300)
    assert max(small.shape) <= 300 and small.max() == 17


def test_heatmap_and_zoom_are_pngs(tmp_path):
    err = np.abs(np.random.default_rng(0).normal(0, 2, (90, 120))).round().astype(np.float32)
    path = render.heatmap_png([("a", err), ("b", err * 2), None, ("c", err)], tmp_path / "h.png", cols=2)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 500
    tile = _img(8, 8)
    zoom = render.zoom_png([("x", tile), ("y", render.colorize(err[:8, :8], 10))], tmp_path / "z.png", tile_px=64)
    with Image.open(zoom) as im:
        arr = np.asarray(im.convert("RGB"))
    # Nearest-neighbour: each source pixel is an 8×8 block of identical pixels (tile at x=6, y=6+22).
    block = arr[28:36, 6:14]
    assert (block == tile[0, 0]).all()
    assert render.crop_box(100, 50, 98, 1, 32) == (68, 0, 100, 32)


# --------------------------------------------------------------------------------------------
# Model card, model sets, examples
# --------------------------------------------------------------------------------------------

def test_model_card_tables_and_absence(tmp_path):
    assert "not in this copy" in modelcard.load(tmp_path).tables_md()
    (tmp_path / "MODEL_CARD.md").write_text(
        "# Card\n\n## Quality\n\n| model | PSNR |\n|---|---:|\n| fp32 | 30.1 |\n\ntext\n\n"
        "## Latency\n\n| model | ms |\n|---|---|\n| qat | 400 |\n")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"fp32.onnx": {"size": 3_700_000, "sha256": "ab" * 32}}}))
    card = modelcard.load(tmp_path)
    assert [h for h, _ in card.tables] == ["Quality", "Latency"]
    assert "| qat | 400 |" in card.tables_md(("ms",)) and "30.1" not in card.tables_md(("ms",))
    assert "`fp32.onnx` | 3.70" in card.files_md()


def test_model_sets_resolve_per_session(tmp_path):
    with pytest.raises(ModelFileError, match="unknown model set"):
        models.resolve_set("trained-x", {})
    sets = {"trained-x": {"label": "mine", "paths": {r: str(tmp_path / f"{r}.onnx") for r in models.ROLES}}}
    with pytest.raises(ModelFileError, match="gone"):
        models.resolve_set("trained-x", sets)
    # The paper set is offered once its three files are in checkpoints/; the restoration set always.
    paper = [] if models.shipped_missing(models.PAPER_KEY) else [models.PAPER_KEY]
    assert [k for _, k in models.choices(sets)] == paper + ["shipped", "trained-x"]


def test_example_photos_are_reproducible(tmp_path):
    """make_examples is deterministic and the shipped references are exactly its clean photos.
    (The inputs depend on the degradation model, which may be retuned: after that, rerun
    `python -m app.compare.make_examples`; the shipped inputs must at least have the right shapes.)"""
    from app.compare.make_examples import OUT_DIR, make_examples

    a = make_examples(tmp_path / "a")
    b = make_examples(tmp_path / "b")
    assert a == b and 4 <= len(a) <= 6
    # By default it writes where the app reads them: the shipped examples, file for file.
    assert sorted(p.name for p in OUT_DIR.glob("*_input.png")) == sorted(r["input"] for r in a)
    total = 0
    for r in a:
        for key in ("input", "reference"):
            with Image.open(tmp_path / "a" / r[key]) as x, Image.open(tmp_path / "b" / r[key]) as y:
                assert np.array_equal(np.asarray(x), np.asarray(y)), f"{r[key]}: two runs differ"
            shipped = REPO_ROOT / "assets" / "examples" / r[key]
            total += shipped.stat().st_size
            with Image.open(shipped) as x, Image.open(tmp_path / "a" / r[key]) as y:
                assert x.size == y.size and x.width * x.height <= 1_000_000
                if key == "reference":
                    assert np.array_equal(np.asarray(x), np.asarray(y)), f"assets/examples/{r[key]} is not the clean photo"
    assert total < 5_000_000


def test_recipe_defaults_are_how_the_shipped_checkpoints_were_made():
    """The app's Train tab (and the CLI, and qatie.api) take loss, data mix and the QAT method
    from the config objects' defaults: they must be the shipped checkpoints' own recipes."""
    from qatie.model.checkpoint import read_checkpoint
    from qatie.config import QATConfig, TrainConfig

    fp32 = read_checkpoint(REPO_ROOT / "checkpoints" / "fp32.pt")["config"]
    train_defaults = TrainConfig()
    for key in ("loss", "degradation", "global_crops", "lr", "batch_size", "patch"):
        assert getattr(train_defaults, key) == fp32.get(key, getattr(train_defaults, key)), key
    qat = read_checkpoint(REPO_ROOT / "checkpoints" / "qat.pt")
    q = QATConfig()
    assert (q.learnable, q.calib_method, q.distill) == (qat["learnable"], qat["calib"]["method"], qat["distill"])
    assert (q.steps, q.lr, q.batch_size, q.patch) == (qat["steps"], qat["config"]["lr"], qat["config"]["batch_size"],
                                                      qat["config"]["patch"])


@pytest.mark.slow
def test_page_load_serves_the_pinned_first_view_and_never_computes(monkeypatch):
    """The page-load handler runs outside the queue, so it must never compare: it serves the
    start-up comparison, whose files survive however many example results push it out of the
    cache, with this request's own copy of its state."""
    from pathlib import Path

    from app.compare import handlers as compare
    from app.compare import example_cache
    from app.compare import first_view

    if first_view.first_example() is None or not (REPO_ROOT / "checkpoints" / "paper_int8_qat.onnx").is_file():
        pytest.skip("examples or shipped models absent")
    first_view.start()
    assert first_view._READY.wait(300) and first_view.state()["result"] is not None, first_view.state()
    pinned = first_view.state()["result"]
    for i in range(config.EXAMPLE_CACHE_MAX + 2):  # every cached example result evicted, folders dropped
        folder = config.work_dir("requests", f"flood{i}")
        (folder / "input.png").write_bytes(b"x")
        example_cache.remember(f"flood{i}", {**compare.empty_outputs(""), "input": str(folder / "input.png")})
    assert not (config.work_dir("requests") / "flood0" / "input.png").exists()

    def no_compare(*a, **k):
        raise AssertionError("page load computed a comparison")

    monkeypatch.setattr(compare, "compare", no_compare)
    vals = first_view.on_load()
    shown = dict(zip(compare.OUTPUT_NAMES, vals[2:]))
    assert shown["input"] == pinned["input"] and Path(shown["input"]).is_file()
    assert shown["state"] == pinned["state"]
    assert shown["state"] is not pinned["state"]
