"""Bounded work per request, without a server: every PIL mode decodes through 8-bit strips (no
full-size float copy), multi-page files give their first page, strips and huge zooms are refused
or clamped with a clear message, and figures stay a bounded number of pixels."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from app import config, render
from app.compare import pipeline as core
from qatie.errors import ImageReadError
from qatie.imageio import MAX_PIXELS, decode_image, decode_image_u8
from conftest import assert_close
from tolerances import TOLERANCES


def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _palette(w, h):
    im = Image.new("P", (w, h), 7)
    im.putpalette([v for i in range(256) for v in (i, 255 - i, 40)])
    return im


@pytest.mark.parametrize("make, rgb", [
    (lambda w, h: Image.new("1", (w, h), 1), (255, 255, 255)),
    (lambda w, h: _palette(w, h), (7, 248, 40)),
    (lambda w, h: Image.new("I;16", (w, h), 32896), (128, 128, 128)),
    (lambda w, h: Image.new("I", (w, h), 100), (100, 100, 100)),
    (lambda w, h: Image.new("F", (w, h), 0.5), (128, 128, 128)),
    (lambda w, h: Image.new("LA", (w, h), (0, 0)), (255, 255, 255)),  # transparent → white
    (lambda w, h: Image.new("RGBA", (w, h), (200, 0, 0, 255)), (200, 0, 0)),
    (lambda w, h: Image.new("CMYK", (w, h), (0, 0, 0, 0)), (255, 255, 255)),
])
@pytest.mark.parametrize("max_pixels", [None, 2000])
def test_every_mode_decodes_to_uint8_full_and_reduced(make, rgb, max_pixels):
    fmt = "TIFF" if make(1, 1).mode in ("I", "F", "CMYK") else "PNG"
    data = _png(make(300, 200), fmt)
    a = decode_image_u8(data, "x.png", max_pixels=max_pixels)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    if max_pixels:
        # box-reduced by f = ⌊√(w·h / max_pixels)⌋ ≥ 2: at least max_pixels, at most (1 + 1/f)² ≤ 9/4
        # of it plus a row and a column of rounding — under the 4× a photo may be left unreduced at
        assert max_pixels <= a.shape[0] * a.shape[1] <= 4 * max_pixels, a.shape
    else:
        assert a.shape[:2] == (200, 300)
    assert np.abs(a.reshape(-1, 3).astype(int) - rgb).max() <= 1, a[0, 0]


def test_float_decode_keeps_16_bit_precision_in_float32():
    a = decode_image(_png(Image.new("I;16", (40, 30), 1000)), "x")
    assert a.dtype == np.float32
    assert_close(a, 1000 / 65535, "uint16_to_float32_max_abs")


def test_multipage_tiff_reads_the_first_page_only():
    pages = [Image.new("RGB", (64, 48), (10 * i, 0, 0)) for i in range(20)]
    data = _png(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 20
    for decode in (decode_image_u8, decode_image):
        a = decode(data, "pages.tif")
        assert a.shape == (48, 64, 3), decode.__name__


def test_pixel_limit_refused_from_the_header():
    w = 20000
    h = MAX_PIXELS // w + 1
    data = _png(Image.new("1", (w, h)))  # a few kB on disk
    with pytest.raises(ImageReadError, match="too large"):
        decode_image_u8(data, "bomb.png")


def test_extreme_aspect_refused_with_a_clear_message(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (int(16 * config.MAX_ASPECT) + 16, 16)).save(strip)
    with pytest.raises(core.AppInputError, match="aspect ratio .*Crop it"):
        core.prepare(str(strip))
    ok = tmp_path / "panorama.png"
    Image.new("RGB", (int(32 * config.MAX_ASPECT), 32), (90, 90, 90)).save(ok)
    assert core.prepare(str(ok)).size == (int(32 * config.MAX_ASPECT), 32)


@pytest.mark.parametrize("shape", [(16, 160), (160, 16), (1080, 1920), (2000, 2000)])
def test_heatmap_figure_size_is_capped_in_pixels(tmp_path, shape):
    m = np.random.default_rng(0).random(shape).astype(np.float32) * 8
    path = render.heatmap_png([("a", m), ("b", m), None, ("c", m), ("d", m), ("e", m)], tmp_path / "h.png", cols=3)
    w, h = Image.open(path).size
    # per row: a 520-pixel panel and its title (two lines, 65 px, on a portrait panel)
    assert w <= 3 * 520 + 130 and h <= 2 * (520 + 65) + 30, (w, h)


# ---------------------------------------------------------------------------- uploaded models, deadlines, disk

def _tiny_onnx(path, nodes, inits, out_ch=3):
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("image", T.FLOAT, ["N", 3, "H", "W"])],
                     [h.make_tensor_value_info("out", T.FLOAT, ["N", out_ch, "H", "W"])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_shipped_models_pass_the_upload_checks():
    from app import models
    from app.boundary import model_check

    for path in models.shipped_paths().values():
        if not path.is_file():
            pytest.skip("shipped models absent")
        model_check.check_onnx(path)
        model_check.probe(model_check.rt.OnnxEnhancer(path, threads=1, arena=False))


def test_upload_checks_refuse_loops_shape_allocations_and_blow_ups(tmp_path):
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from app.boundary import model_check
    from qatie.errors import ModelFileError

    w = nh.from_array(np.ones((96, 3, 1, 1), np.float32), "w")
    w2 = nh.from_array(np.ones((3, 96, 1, 1), np.float32) / 96, "w2")
    wide = _tiny_onnx(tmp_path / "wide.onnx", [h.make_node("Conv", ["image", "w"], ["t"]),
                                                 h.make_node("Conv", ["t", "w2"], ["out"])], [w, w2])
    with pytest.raises(ModelFileError, match="too large .*32×"):
        model_check.check_onnx(wide)
    cat = [h.make_node("Concat", ["image", "image"], ["c0"], axis=1)]
    cat += [h.make_node("Concat", [f"c{k}", f"c{k}"], [f"c{k + 1}"], axis=1) for k in range(5)]
    cat += [h.make_node("Slice", ["c5", "s", "e", "a"], ["out"])]
    inits = [nh.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 3), ("a", 1))]
    with pytest.raises(ModelFileError, match="too large"):
        model_check.check_onnx(_tiny_onnx(tmp_path / "cat.onnx", cat, inits))
    shape = nh.from_array(np.array([1, 3, 4096, 4096], np.int64), "shape")
    expand = _tiny_onnx(tmp_path / "expand.onnx", [h.make_node("Expand", ["image", "shape"], ["out"])], [shape])
    with pytest.raises(ModelFileError, match="operators .*Expand"):
        model_check.check_onnx(expand)
    pad = nh.from_array(np.array([0, 0, 0, 0, 0, 0, 5000, 5000], np.int64), "pads")
    big_pad = _tiny_onnx(tmp_path / "pad.onnx", [h.make_node("Pad", ["image", "pads"], ["out"])], [pad])
    with pytest.raises(ModelFileError, match="too large"):
        model_check.check_onnx(big_pad)


def test_deadline_terminates_a_running_model():
    import time

    from app.boundary import guard
    from qatie.runtime import enhancer as rt

    path = rt.REPO_ROOT / rt.SHIPPED_MODELS["fp32"]
    if not path.is_file():
        pytest.skip("shipped models absent")
    enh = rt.OnnxEnhancer(path, threads=1)
    x = np.zeros((2048, 2048, 3), np.float32)  # several seconds on one thread
    tol = TOLERANCES["onnx_deadline"]
    t0 = time.perf_counter()
    with guard.Deadline(tol["deadline_s"], "The test") as d, pytest.raises(guard.DeadlineError, match="stopped after 0 s"):
        with d.onnx():
            enh.enhance(x)
    took = time.perf_counter() - t0
    print(f"a {tol['deadline_s']} s deadline stopped a {x.shape[0]}×{x.shape[1]} pass after {took:.2f} s")
    assert took < tol["stopped_within_s"]


def test_child_process_is_killed_at_its_deadline():
    import time

    import psutil

    from app.boundary import guard
    from qatie.errors import QatieError

    import math

    from qatie.imageio import decode_image

    def children() -> set[int]:  # the session's app server (tests/conftest.py) may be one already
        return {c.pid for c in psutil.Process().children(recursive=True)}

    before = children()
    assert guard.run_in_child(math.sqrt, 16.0, seconds=60, what="x") == 4.0
    with pytest.raises(QatieError, match="upload.png: the file is empty"):  # QatieErrors keep their message
        guard.run_in_child(decode_image, b"", "upload.png", seconds=60, what="x")
    t0 = time.perf_counter()
    with pytest.raises(guard.DeadlineError, match="The nap was stopped after 2 s"):
        guard.run_in_child(time.sleep, 600, seconds=2, what="The nap")
    assert time.perf_counter() - t0 < 10
    assert not children() - before, "the child outlived its deadline"


def test_prune_keeps_the_newest_files_under_the_cap(tmp_path):
    import os

    for i in range(10):
        p = tmp_path / f"d{i}" / "f.bin"
        p.parent.mkdir()
        p.write_bytes(b"0" * 100_000)
        os.utime(p, (i, i))
    config.prune(tmp_path, 0.35)
    assert sorted(p.parent.name for p in tmp_path.rglob("*.bin")) == ["d7", "d8", "d9"]
    assert not (tmp_path / "d0").exists(), "emptied folders go too"


def test_training_budget_refuses_the_old_maxima_and_fits_the_defaults():
    from app.train import handlers as tt

    assert tt.cost_units(tt.DEFAULTS) < tt.TRAIN_BUDGET_UNITS * TOLERANCES["train_defaults_max_budget_share"]
    with pytest.raises(core.AppInputError, match="units of compute"):
        tt._validate(tt.TrainSettings(width=32, fp32_steps=tt.MAX_FP32_STEPS, qat_steps=tt.MAX_QAT_STEPS,
                                      batch_size=tt.MAX_BATCH, patch=tt.MAX_PATCH))
    with pytest.raises(core.AppInputError, match="between"):
        tt._validate(tt.TrainSettings(fp32_steps=3000))
    assert "minutes" in tt.budget_md() and str(tt.MAX_FP32_STEPS) in tt.budget_md()


def test_uploaded_sessions_run_under_a_deadline():
    """Uploaded models run in the box (a worker process), with no arena, and give the same output
    as the shipped session of the same file."""
    from app.boundary import guard
    from app.boundary import model_check
    from app.boundary.box import Box
    from qatie.runtime import enhancer as rt

    path = rt.REPO_ROOT / rt.SHIPPED_MODELS["ptq"]
    if not path.is_file():
        pytest.skip("shipped models absent")
    shipped = rt.get_enhancer(path, threads=1)
    x = np.random.default_rng(1).random((40, 56, 3), dtype=np.float32)
    with Box("The test") as box:
        uploaded = model_check.boxed_enhancer(path, "uploaded PTQ-INT8 model", box)
        with guard.Deadline(60, "The test") as d, d.onnx():
            a, b = uploaded.enhance(x), shipped.enhance(x)
        assert box.proc.pid != os.getpid() and uploaded.last_ms > 0
    assert not uploaded.arena and a.shape == x.shape
    assert_close(a, b, "ort_session_options")


def test_user_messages_name_no_server_paths():
    from app.compare import handlers as compare
    from app.boundary import guard

    err = compare.user_error(RuntimeError("ONNX model /tmp/gradio/3f2a/m.onnx: bad /onnxruntime_src/core/a.cc:12"))
    assert "/tmp" not in err.message and "onnxruntime_src" not in err.message and "<path>" in err.message
    assert guard.public_text("PSNR/SSIM at 1/2 scale") == "PSNR/SSIM at 1/2 scale"
    assert compare.user_error(guard.DeadlineError("stopped")).title == "Time limit"


@pytest.mark.slow
def test_training_stops_at_its_deadline_and_leaves_nothing(monkeypatch, tmp_path):
    import time

    import gradio as gr

    from app.train import handlers as tt

    monkeypatch.setattr(tt, "TRAIN_DEADLINE_S", 4.0)
    monkeypatch.setattr(config, "WORK_DIR", tmp_path / "work")
    run = tt.train(tt.DATA_SAMPLES, tt.INIT_SCRATCH, 16, 2000, 10, 2, 32, 1e-3, 1e-4, "minmax")
    t0 = time.perf_counter()
    with pytest.raises(gr.Error, match="time limit"):
        for _ in run:
            pass
    assert time.perf_counter() - t0 < 60
    end = time.perf_counter() + 30
    while time.perf_counter() < end and any((tmp_path / "work" / "train").glob("*/*")):
        time.sleep(0.2)
    assert not any((tmp_path / "work" / "train").glob("*/*")), "the stopped run's folder is still there"
    assert tt._TRAIN_SLOT.acquire(timeout=5), "the training slot was not given back"
    tt._TRAIN_SLOT.release()


def test_upload_checks_refuse_string_tensors_and_tensors_that_outgrow_the_image(tmp_path):
    """Budgets are in bytes over number types only (a STRING tensor's bytes are unbounded), and
    the two probe sizes differ in height and width, so a tensor whose size follows the image's
    height squared cannot hide behind one probe height."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from app.boundary import model_check
    from qatie.errors import ModelFileError

    assert len({hh for hh, _ in model_check.PROBE_SIZES}) == 2 and len({ww for _, ww in model_check.PROBE_SIZES}) == 2
    c = lambda n, v: nh.from_array(np.array(v, np.int64), n)  # noqa: E731
    strings = [h.make_node("Concat", ["image"] * 4, ["c"], axis=1), h.make_node("Cast", ["c"], ["s"], to=T.STRING),
               h.make_node("Cast", ["s"], ["f"], to=T.FLOAT), h.make_node("Slice", ["f", "s0", "e3", "a1"], ["out"])]
    path = _tiny_onnx(tmp_path / "strings.onnx", strings, [c("s0", [0]), c("e3", [3]), c("a1", [1])])
    with pytest.raises(ModelFileError, match="not a number type"):
        model_check.check_onnx(path)
    # one column of the image → a conv 57 rows tall → H − 56 values; every pixel times each of them
    rows = [h.make_node("Slice", ["image", "s00", "e11", "a13"], ["col"]),
            h.make_node("Conv", ["col", "k"], ["tall"]),
            h.make_node("Reshape", ["tall", "row"], ["r"]),
            h.make_node("Reshape", ["image", "column"], ["pix"]),
            h.make_node("Mul", ["pix", "r"], ["outer"]),
            h.make_node("Slice", ["outer", "s0", "e1", "a1"], ["one"]),
            h.make_node("Shape", ["image"], ["shape"]),
            h.make_node("Reshape", ["one", "shape"], ["out"])]
    inits = [c("s00", [0, 0]), c("e11", [1, 1]), c("a13", [1, 3]), c("row", [1, -1]), c("column", [-1, 1]),
             c("s0", [0]), c("e1", [1]), c("a1", [1]), nh.from_array(np.ones((1, 1, 57, 1), np.float32), "k")]
    path = _tiny_onnx(tmp_path / "rows.onnx", rows, inits)
    ratios = [model_check._shape_ratios(onnx.load(str(path)), hh, 64) for hh in (64, 96)]
    assert ratios[1][0] > 4 * ratios[0][0]  # the outer product grows with the height: 8× → 40× the image
    with pytest.raises(ModelFileError, match="too large|grow faster"):
        model_check.check_onnx(path)


def test_upload_checks_refuse_compute_on_constants(tmp_path):
    """A conv of two stored tensors is folded by ONNX Runtime while it creates the session — before
    the probe and outside every deadline — so it is refused from the graph; dequantizing stored
    int8 weights (what every INT8 model does) is not."""
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from app.boundary import model_check
    from qatie.errors import ModelFileError

    inits = [nh.from_array(np.ones((1, 3, 64, 64), np.float32), "a"), nh.from_array(np.ones((3, 3, 9, 9), np.float32), "k")]
    nodes = [h.make_node("Conv", ["a", "k"], ["folded"]), h.make_node("Add", ["image", "image"], ["out"])]
    with pytest.raises(ModelFileError, match="Conv computes on constants only"):
        model_check.check_onnx(_tiny_onnx(tmp_path / "fold.onnx", nodes, inits))
    from qatie.paths import REPO_ROOT

    for name in ("int8_qat", "paper_int8_qat"):
        path = REPO_ROOT / "checkpoints" / f"{name}.onnx"
        if path.is_file():
            model_check.check_onnx(path)
