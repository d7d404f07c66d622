"""The Gradio app through its public API (`gradio_client`), launched as `python app.py` on a free
localhost port: every public endpoint, every kind of bad input, isolation of concurrent
requests and of sessions, and that the compare path never imports torch.

Works against whatever models are in checkpoints/ (no hard-coded quality numbers): the checks
are on shapes, formats, labels, internal consistency and behaviour.
"""
from __future__ import annotations

import io
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, assert_exact_on_every_cpu, make_image, random_model, saturating_weights
from tolerances import TOLERANCES

sys.path.insert(0, str(REPO_ROOT))  # the app package lives at the repository root
from app import config as app_config  # noqa: E402  (the limits the server runs with: tests/conftest.py app_server)
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


SHIPPED = [REPO_ROOT / "checkpoints" / n for n in ("fp32.onnx", "int8_ptq.onnx", "int8_qat.onnx")]
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in SHIPPED),
                                reason="shipped ONNX models (checkpoints/*.onnx) are not present")

EXAMPLES = REPO_ROOT / "assets" / "examples"
OUT = ("notice", "input", "fp32", "ptq", "qat", "slider_ptq", "slider_qat", "verdict", "metrics", "heatmap", "zoom",
       "zoom_x", "zoom_y", "metrics_json", "downloads", "headline", "slider_crop", "heatmap_ref", "authors",
       "litert", "litert_note")


@pytest.fixture(scope="module")
def server(app_server):
    return app_server  # the session's one app server (tests/conftest.py)


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def named(result) -> dict:
    assert len(result) == len(OUT), f"compare returned {len(result)} values, expected {len(OUT)}"
    return dict(zip(OUT, result))


def load(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG", f"{path} is {im.format}, every image output must be PNG"
        return np.asarray(im.convert("RGB"))


def write_png(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, format="PNG", **kw)
    return path


def photo(h: int, w: int, seed: int = 0, colour=(0.5, 0.5, 0.5)) -> np.ndarray:
    """A smooth photo-like uint8 image around `colour`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array(colour, np.float32)[None, None, :]
    img = base + 0.12 * np.sin(xx[..., None] / 9.0 + yy[..., None] / 13.0 + np.arange(3)) \
        + 0.02 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def compare(client, image, **kw):
    return named(client.predict(handle_file(str(image)), api_name="/compare", **kw))


def expect_error(fn, *needles: str) -> str:
    with pytest.raises(AppError) as info:
        fn()
    msg = str(info.value)
    assert "Traceback" not in msg and 'File "' not in msg, f"a traceback leaked to the user: {msg}"
    low = msg.lower()
    assert any(n.lower() in low for n in needles), f"unclear error message: {msg!r} (expected one of {needles})"
    return msg


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------

def test_public_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/compare", "/zoom", "/train", "/benchmark"}
    params = [p["parameter_name"] for p in api["/compare"]["parameters"]]
    assert params[0] == "image"
    assert all(p["parameter_has_default"] for p in api["/compare"]["parameters"][1:]), "only the photo is required"


def test_compare_example_with_reference(client):
    inp, ref = EXAMPLES / "rocket_input.png", EXAMPLES / "rocket_reference.png"
    t0 = time.perf_counter()
    r = compare(client, inp, reference=handle_file(str(ref)), model_set="shipped")  # SHIPPED are its files
    elapsed = time.perf_counter() - t0
    src = load(inp)
    shown = {k: load(r[k]) for k in ("input", "fp32", "ptq", "qat")}
    for k, arr in shown.items():
        assert arr.shape == src.shape, f"{k} output has shape {arr.shape}, expected {src.shape}"
    assert np.array_equal(shown["input"], src), "the input shown must be exactly the uploaded pixels"
    for k in ("slider_ptq", "slider_qat"):
        a, b = r[k]
        assert load(a).shape == src.shape and load(b).shape == src.shape
    assert np.array_equal(load(r["slider_ptq"][1]), shown["ptq"]) and np.array_equal(load(r["slider_qat"][1]), shown["qat"])
    load(r["heatmap"]), load(r["zoom"])

    m = r["metrics"]
    assert m["headers"][1] == "PSNR vs reference (dB)"
    models = [row[0] for row in m["data"]]
    assert models == ["Input (unprocessed)", "FP32", "PTQ-INT8", "QAT-INT8"]
    latency_col = m["headers"].index("Latency (ms)")
    assert all("median of 3" in row[latency_col] for row in m["data"][1:])

    js = r["metrics_json"]
    assert js["reference"] == "reference"
    assert {k: v["runs"] for k, v in js["latency_ms"].items()} == {"fp32": 3, "ptq": 3, "qat": 3}
    for role in ("fp32", "ptq", "qat"):
        assert js["file_mb"][role] == pytest.approx(SHIPPED[("fp32", "ptq", "qat").index(role)].stat().st_size / 1e6,
                                                  abs=TOLERANCES["reported_file_mb"])
    # The numbers are computed on exactly the pixels shown.
    from qatie.metrics import error_levels, psnr

    refu = load(ref).astype(np.float32) / 255
    for role in ("fp32", "ptq", "qat"):
        assert js["models"][role]["psnr_db"] == pytest.approx(psnr(shown[role].astype(np.float32) / 255, refu),
                                                              abs=TOLERANCES["reported_metric_vs_recomputed"]["psnr_db"])
    err = error_levels(shown["ptq"].astype(np.float32) / 255, shown["fp32"].astype(np.float32) / 255)
    assert js["models"]["ptq"]["max_levels"] == err.max()
    assert js["models"]["ptq"]["share_over_2_levels"] == pytest.approx(float((err > 2).mean()))
    assert "PTQ-INT8" in r["verdict"] and "QAT-INT8" in r["verdict"] and "ms" in r["verdict"]
    assert 0 <= r["zoom_x"] <= 100 and 0 <= r["zoom_y"] <= 100
    # The zoom centre is rounded for display (one decimal), not 30.06535.
    assert round(r["zoom_x"], 1) == r["zoom_x"] and round(r["zoom_y"], 1) == r["zoom_y"]
    # The first view's outputs: one headline line, the worst-region before/after pair, vs-reference maps.
    assert "PTQ-INT8" in r["headline"] and "QAT-INT8" in r["headline"] and "\n" not in r["headline"]
    before, after = (load(p) for p in r["slider_crop"])
    assert before.shape == after.shape and before.shape[0] >= 256
    load(r["heatmap_ref"])
    print(f"compare (640×427 example, 3 timing runs): {elapsed:.2f} s")


def test_compare_path_never_imports_torch(tmp_path):
    """A whole comparison of an example (the default set, with its LiteRT pictures where the package
    is installed) in a fresh interpreter: the shared test server may already have trained, which
    imports torch, so it cannot tell."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, '.'); from app.compare import handlers; "
            f"updates = list(handlers.compare_named({str(EXAMPLES / 'chelsea_input.png')!r})); "
            "print(updates[-1]['fp32'] is not None, 'onnxruntime' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "QATIE_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["True", "True", "False"], "the compare path imported torch: " + out.stdout


def test_compare_without_reference_is_agreement_with_fp32(client, tmp_path):
    p = write_png(tmp_path / "plain.png", photo(120, 200, 1, (0.6, 0.4, 0.3)))
    r = compare(client, p)
    headers = r["metrics"]["headers"]
    assert headers[1] == "Looks (vs FP32)" and "Agreement with full precision: PSNR (dB)" in headers
    rows = [row[0] for row in r["metrics"]["data"]]
    assert rows[:3] == ["FP32", "PTQ-INT8", "QAT-INT8"]
    beside = {"authors": "Authors' INT8 TFLite (as released)", "litert": "QATIE QAT-INT8 on LiteRT (phone runtime)"}
    assert rows[3:] == [label for name, label in beside.items() if r[name] is not None]
    assert r["metrics_json"]["reference"] is None
    assert load(r["fp32"]).shape == (120, 200, 3)
    assert r["heatmap_ref"] is None, "no reference, no vs-reference heatmaps"


def test_compare_simulated_phone_photo_is_seeded(client, tmp_path):
    p = write_png(tmp_path / "clean.png", photo(96, 128, 2, (0.5, 0.55, 0.6)))
    a = compare(client, p, simulate=True, seed=5, model_set="shipped")  # the restoration set: scored vs the upload
    b = compare(client, p, simulate=True, seed=5, model_set="shipped")
    c = compare(client, p, simulate=True, seed=6, model_set="shipped")
    assert "seed 5" in a["notice"]
    assert a["metrics_json"]["reference"] == "simulated" and a["metrics_json"]["seed"] == 5
    assert a["metrics"]["headers"][1] == "PSNR vs reference (dB)"
    assert np.array_equal(load(a["input"]), load(b["input"])), "same seed, same degraded photo"
    assert not np.array_equal(load(a["input"]), load(c["input"])), "another seed, another degradation"
    assert not np.array_equal(load(a["input"]), load(p)), "the photo was degraded"


def test_zoom_endpoint_uses_this_sessions_result(server, client, tmp_path):
    compare(client, EXAMPLES / "coffee_input.png")
    z = load(client.predict(10, 90, 16, api_name="/zoom"))
    assert z.shape[0] > 200 and z.shape[1] > 500, "a grid of enlarged crops"
    fresh = Client(server.url, verbose=False)  # another session has no result to zoom into
    expect_error(lambda: fresh.predict(50, 50, 48, api_name="/zoom"), "run a comparison first")


def test_zoom_moved_during_timing_runs_is_kept(tmp_path, monkeypatch):
    """A zoom moved while the compare still times its models is where the final result leaves it.
    Driven in-process (the handlers the /compare and /zoom endpoints call, sharing the session's
    state as Gradio does): the compare generator waits at each update, so the zoom is moved at the
    update that starts the timing runs on every machine. (Through the server, a fast machine
    finished the timing runs before the zoom arrived and the test had nothing to check.)"""
    from app import config, models
    from app.compare import handlers as app_compare

    monkeypatch.setattr(config, "TIMING_RUNS", 3)
    monkeypatch.setattr(config, "TIMING_BUDGET_S", config.COMPARE_DEADLINE_S)  # every round, whatever the CPU
    path = write_png(tmp_path / "p.png", photo(120, 160, 13))
    zoomed, after = None, []
    for update in app_compare.compare_named(str(path), model_set=models.SHIPPED_KEY):
        if zoomed is None and update.get("state"):  # the analysis: the session's result exists from here on
            assert "Timing more runs" in update["notice"], update["notice"]
            zoomed = app_compare.zoom(update["state"], 12.5, 87.5, 32)
        elif zoomed is not None:
            after.append(update)
    final = after[-1]
    assert len(after) >= config.TIMING_RUNS - 1, "the timing rounds did not stream after the zoom"
    assert {v["runs"] for v in final["metrics_json"]["latency_ms"].values()} == {config.TIMING_RUNS}
    assert (final["zoom_x"], final["zoom_y"]) == (12.5, 87.5)
    assert np.array_equal(load(final["zoom"]), load(zoomed))


def test_example_results_are_cached_lazily(client):
    inp, ref = EXAMPLES / "astronaut_input.png", EXAMPLES / "astronaut_reference.png"
    first = compare(client, inp, reference=handle_file(str(ref)))
    t0 = time.perf_counter()
    again = compare(client, inp, reference=handle_file(str(ref)))
    assert "cached" in again["notice"]
    assert again["metrics_json"]["latency_ms"] == first["metrics_json"]["latency_ms"]
    assert np.array_equal(load(first["qat"]), load(again["qat"]))
    print(f"cached example replayed in {time.perf_counter() - t0:.2f} s")


# --------------------------------------------------------------------------------------------
# Bad inputs: a clear gr.Error, never a traceback, and the queue keeps working
# --------------------------------------------------------------------------------------------

def _exif_jpeg(path: Path, orientation: int) -> Path:
    img = Image.fromarray(photo(80, 120, 3, (0.3, 0.5, 0.7)))  # 120 wide × 80 tall as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


BAD = {
    "corrupt.png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8), ("corrupt", "not an image")),
    "empty.png": (lambda p: p.write_bytes(b""), ("empty",)),
    "notes.txt": (lambda p: p.write_text("this is not a photo\n"), ("not an image",)),
    "tiny.png": (lambda p: write_png(p, np.zeros((1, 1, 3), np.uint8)), ("too small",)),
    "truncated.jpg": (lambda p: p.write_bytes(_jpeg_bytes()[:600]), ("corrupt", "truncated")),
}


def _jpeg_bytes() -> bytes:
    b = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(b, format="JPEG")
    return b.getvalue()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_image_is_a_clear_error(client, tmp_path, name):
    make, needles = BAD[name]
    path = tmp_path / name
    make(path)
    msg = expect_error(lambda: compare(client, path), *needles)
    assert name in msg, f"the message should name the file: {msg!r}"


def test_bad_reference_is_a_clear_error(client, tmp_path):
    good = write_png(tmp_path / "ok.png", photo(64, 96))
    bad = tmp_path / "ref.txt"
    bad.write_text("nope")
    expect_error(lambda: compare(client, good, reference=handle_file(str(bad))), "reference", "not an image")
    other = write_png(tmp_path / "other.png", photo(96, 40))
    expect_error(lambda: compare(client, good, reference=handle_file(str(other))), "same picture")


def test_16bit_png(client, tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 96).reshape(64, 96)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)  # uint16 → mode I;16
    r = compare(client, path)
    assert "16-bit" in r["notice"]
    shown = load(r["input"])
    assert shown.shape == (64, 96, 3) and shown[0, 0, 0] < 5 and shown[-1, -1, 0] > 250


def test_cmyk_jpeg(client, tmp_path):
    path = tmp_path / "print.jpg"
    Image.fromarray(photo(64, 80, 4, (0.8, 0.2, 0.2))).convert("CMYK").save(path, format="JPEG", quality=95)
    r = compare(client, path)
    assert "CMYK" in r["notice"]
    shown = load(r["input"]).astype(float)
    assert shown[..., 0].mean() > shown[..., 1].mean() + 60, "still red after CMYK → RGB"


def test_rgba_png_is_composited_on_white(client, tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = photo(64, 64, 5, (0.1, 0.6, 0.2))
    rgba[:, 32:, 3] = 255  # left half fully transparent
    path = write_png(tmp_path / "alpha.png", rgba)
    r = compare(client, path)
    assert "transparent" in r["notice"]
    shown = load(r["input"])
    assert (shown[:, :32] == 255).all() and shown[:, 40:, 1].mean() > shown[:, 40:, 0].mean()


def test_exif_rotated_jpeg_is_upright(client, tmp_path):
    r = compare(client, _exif_jpeg(tmp_path / "rotated.jpg", 6))
    assert "EXIF" in r["notice"]
    assert load(r["input"]).shape == (120, 80, 3)
    assert load(r["qat"]).shape == (120, 80, 3)


def _huge_png(path: Path) -> Path:
    h, w = 5800, 8660  # 50.2 MP
    row = (np.linspace(30, 220, w)).astype(np.uint8)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = row[None, :]
    img[..., 1] = np.linspace(40, 200, h).astype(np.uint8)[:, None]
    img[..., 2] = 128
    Image.fromarray(img).save(path, format="PNG", compress_level=1)
    return path


def test_50_megapixel_photo_is_downscaled_or_refused_quickly(client, tmp_path):
    path = _huge_png(tmp_path / "huge.png")
    t0 = time.perf_counter()
    job = client.submit(handle_file(str(path)), api_name="/compare")
    notice = fp32 = None
    while time.perf_counter() - t0 < 90 and not job.done() and fp32 is None:
        for upd in map(named, job.outputs()):
            notice = upd["notice"] if isinstance(upd["notice"], str) else notice
            fp32 = upd["fp32"] if isinstance(upd["fp32"], str) and upd["fp32"].endswith(".png") else fp32
        time.sleep(0.05)
    took = time.perf_counter() - t0
    try:
        job.cancel()  # the downscaled outputs are what this test is about, not the timing runs
    except Exception:  # the cancel request may time out while a timing pass runs; harmless
        pass
    assert fp32 is not None, f"no outputs after {took:.1f} s"
    assert "Downscaled" in notice and "8660×5800" in notice
    h, w = load(fp32).shape[:2]
    # at most the app's limit, the aspect kept: each side is rounded down to whole pixels
    # (app.render.fit_size), so the width is within a pixel of the height × the photo's aspect
    assert h * w <= app_config.MAX_INPUT_MP * 1e6 and abs(w - round(h * 8660 / 5800)) <= 1, (w, h)
    t0 = time.perf_counter()
    expect_error(lambda: compare(client, path, full_size=True), "limited to")
    assert time.perf_counter() - t0 < 30
    print(f"50-MP photo: downscaled outputs on the client after {took:.1f} s")


def _onnx_with_wrong_signature(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, None, None])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, None, None])
    graph = helper.make_graph([helper.make_node("Identity", ["pixels"], ["out"])], "not_qatie", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by ONNX Runtime: the app must reject it for its signature
    onnx.save(model, path)
    return path


def test_wrong_model_files_are_clear_errors(client, tmp_path):
    good = write_png(tmp_path / "ok.png", photo(64, 64))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not a protobuf" * 10)
    expect_error(lambda: compare(client, good, custom_ptq=handle_file(str(junk))), "could not be loaded", "corrupt")
    wrong = _onnx_with_wrong_signature(tmp_path / "other_model.onnx")
    expect_error(lambda: compare(client, good, custom_qat=handle_file(str(wrong))), "not a qatie model")
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    expect_error(lambda: compare(client, good, custom_fp32=handle_file(str(txt))), "not an .onnx")
    expect_error(lambda: compare(client, good, model_set="no-such-set"), "unknown model set")


def test_custom_model_upload_replaces_one_slot(client, tmp_path):
    good = write_png(tmp_path / "ok.png", photo(64, 80, 7))
    r = compare(client, good, model_set="shipped",  # the set whose PTQ file goes into the QAT slot
                custom_qat=handle_file(str(SHIPPED[1])))
    assert "int8_ptq.onnx" in r["notice"]
    assert np.array_equal(load(r["ptq"]), load(r["qat"])), "same model in both INT8 slots → same output"


def test_uploaded_model_that_can_saturate_is_run_and_named_in_the_notice(client, tmp_path):
    """A model from elsewhere whose int8 weights can overflow the 16-bit pair sums of CPUs without
    VNNI still runs; the notice says so in plain words, with what this CPU's kernels made of it on
    the photo shown (measured against the exact result where they saturate). A pair-safe upload
    (QATIE's own) gets no such line."""
    from qatie.runtime.cpu import int8_exact, int8_path
    from qatie.export.to_onnx import export_int8
    from qatie.runtime.int8_reference import saturable_pairs
    from qatie.model.quant import calibrate

    m = random_model(8, seed=5)
    ranges = calibrate(m, [make_image(48, 56, seed=2)], "minmax")
    with saturating_weights():
        v2 = export_int8(m, ranges, tmp_path / "from_elsewhere.onnx", source="ptq-minmax")
    pairs = saturable_pairs(v2)
    assert pairs > 0
    good = write_png(tmp_path / "ok.png", photo(64, 80, 7))
    r = compare(client, good, model_set="shipped", custom_qat=handle_file(str(v2)))
    assert f"from_elsewhere.onnx'**: {pairs:,} of its int8 weight pairs can overflow the 16-bit sums" in r["notice"]
    path = int8_path()
    if int8_exact(path):
        assert f"this CPU's kernels ({path}) add exactly" in r["notice"]
    else:
        assert re.search(rf"as this CPU \({re.escape(path)}\) does(: on this photo its output is up to \d+ levels off"
                         r"|; on this photo its output is still the exact integer result)", r["notice"]), r["notice"]
    safe = compare(client, good, model_set="shipped", custom_qat=handle_file(str(SHIPPED[1])))
    assert "weight pairs can overflow" not in safe["notice"]


def test_queue_still_works_after_errors(client, tmp_path):
    r = compare(client, write_png(tmp_path / "fine.png", photo(48, 64, 8)))
    assert load(r["fp32"]).shape == (48, 64, 3)


# --------------------------------------------------------------------------------------------
# Concurrency and sessions
# --------------------------------------------------------------------------------------------

COLOURS = [(0.85, 0.2, 0.2), (0.2, 0.8, 0.25), (0.2, 0.3, 0.85), (0.85, 0.8, 0.2),
           (0.2, 0.8, 0.8), (0.8, 0.25, 0.8), (0.55, 0.55, 0.55), (0.35, 0.3, 0.25)]


def test_eight_concurrent_compares_get_their_own_results(server, tmp_path):
    photos = []
    for i, colour in enumerate(COLOURS):  # distinct colours *and* distinct sizes
        photos.append(write_png(tmp_path / f"p{i}.png", photo(64 + 8 * i, 96 + 16 * i, 10 + i, colour)))
    clients = [Client(server.url, verbose=False) for _ in photos]

    def run(i):
        t0 = time.perf_counter()
        r = compare(clients[i], photos[i])
        return r, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(photos)) as pool:
        results = list(pool.map(run, range(len(photos))))
    wall = time.perf_counter() - t0
    corrs = []
    for i, (r, _) in enumerate(results):
        src = load(photos[i])
        assert np.array_equal(load(r["input"]), src), f"request {i} got someone else's input"
        luma = src.astype(float).mean(axis=2).ravel()
        for role in ("fp32", "ptq", "qat"):
            out = load(r[role])
            # Every photo has its own size, so the size alone says whose result this is; the
            # picture's structure must be its photo's too (an enhancer changes tone, not layout).
            assert out.shape == src.shape, f"request {i}: {role} output {out.shape} is not its photo's {src.shape}"
            corr = np.corrcoef(luma, out.astype(float).mean(axis=2).ravel())[0, 1]
            corrs.append(corr)
            assert corr > TOLERANCES["enhanced_vs_own_photo_min_luma_corr"], (
                f"request {i}: {role} output does not look like its photo (r = {corr:.2f})")
        assert r["metrics_json"]["size"] == [src.shape[1], src.shape[0]]
    print(f"8 concurrent compares: {wall:.1f} s wall, each {min(t for _, t in results):.1f}–{max(t for _, t in results):.1f} s; "
          f"luma correlation with the own photo {min(corrs):.3f}–{max(corrs):.3f}")


# --------------------------------------------------------------------------------------------
# Benchmark and Train
# --------------------------------------------------------------------------------------------

def test_benchmark_endpoint(client):
    """The three models; where ai-edge-litert is installed, the INT8 ones on LiteRT too (the
    default), or not when the caller says so."""
    import importlib.util

    plot, table, status = client.predict("shipped", sizes=["256×256"], threads=1, runs=1, api_name="/benchmark")
    assert load(plot).shape[1] > 400
    on_litert = ["PTQ-INT8 on LiteRT", "QAT-INT8 on LiteRT"] if importlib.util.find_spec("ai_edge_litert") else []
    assert [row[0] for row in table["data"]] == ["FP32", "PTQ-INT8", "QAT-INT8"] + on_litert
    assert ("on LiteRT" in status) is bool(on_litert)
    _, plain, _ = client.predict("shipped", sizes=["256×256"], threads=1, runs=1, litert=False, api_name="/benchmark")
    assert [row[0] for row in plain["data"]] == ["FP32", "PTQ-INT8", "QAT-INT8"]
    assert all(row[1] == "256x256" for row in table["data"])
    assert "Done" in status
    expect_error(lambda: client.predict("shipped", sizes=[], threads=1, runs=1, api_name="/benchmark"), "at least one")


def _train(client, **kw):
    args = dict(data="Built-in sample photos (scikit-image)", init="Scratch (a new network)", width=16, fp32_steps=2,
                qat_steps=1, batch_size=2, patch=32, lr=1e-3, qat_lr=1e-4, ptq_method="minmax")
    args.update(kw)
    return client.predict(api_name="/train", **args)


def test_train_bad_inputs(client, tmp_path):
    expect_error(lambda: _train(client, data="My photos (upload below)"), "no photos")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    expect_error(lambda: _train(client, data="My photos (upload below)", photos=[handle_file(str(txt))]),
                 "invalid file type", "not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    msg = expect_error(lambda: _train(client, data="My photos (upload below)", photos=[handle_file(str(broken))]),
                       "corrupt", "not an image")
    assert "broken.png" in msg
    expect_error(lambda: _train(client, width=20), "width must be", "not in the list of choices")


def test_train_adds_a_model_set_to_this_session_only(server, tmp_path):
    me = Client(server.url, verbose=False)
    status, curves, files, choice, _bench_choice = _train(me)
    assert "Done" in status, status
    names = sorted(Path(f).name for f in files)
    assert {"fp32.onnx", "int8_ptq.onnx", "int8_qat.onnx", "fp32.pt", "qat.pt", "int8_ptq.json",
            "int8_qat.json"} <= set(names)
    for f in files:  # what the Train tab writes is exact on every CPU
        if Path(f).name.startswith("int8_") and Path(f).suffix == ".onnx":
            assert_exact_on_every_cpu(f)
    leaks = [s for s in _strings_in_downloads(files) if "qatie-app-" in s or re.search(r"(^|:)/(tmp|work|home)/", s)]
    assert not leaks, f"the downloads name server paths: {leaks[:5]}"
    assert load(curves).shape[1] >= 800, "the loss / validation curves"
    key = choice["value"] if isinstance(choice, dict) else choice
    assert str(key).startswith("trained-")
    img = write_png(tmp_path / "t.png", photo(64, 64, 9))
    r = compare(me, img, model_set=key)
    assert "Trained #1" in r["notice"]
    other = Client(server.url, verbose=False)
    expect_error(lambda: compare(other, img, model_set=key), "unknown model set")


def _strings_in_downloads(files) -> list[str]:
    """Every string inside the trained checkpoints and sidecars a user downloads."""
    import json

    import torch

    found: list[str] = []

    def walk(v):
        if isinstance(v, str):
            found.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    for f in map(Path, files):
        if f.suffix == ".pt":
            walk(torch.load(f, map_location="cpu", weights_only=True))
        elif f.suffix == ".json":
            walk(json.loads(f.read_text()))
    return found


def test_train_cancel_stops_the_worker(server):
    me = Client(server.url, verbose=False)
    job = me.submit(api_name="/train", data="Built-in sample photos (scikit-image)", init="Scratch (a new network)",
                    width=16, fp32_steps=2000, qat_steps=10, batch_size=2, patch=32, lr=1e-3, qat_lr=1e-4,
                    ptq_method="minmax")
    deadline = time.time() + 60
    while time.time() < deadline and not any("elapsed" in str(o[0]) for o in job.outputs()):
        time.sleep(0.2)
    assert me.predict(api_name="/debug_modules")["training_threads"] == 1
    job.cancel()
    deadline = time.time() + 30
    while time.time() < deadline and me.predict(api_name="/debug_modules")["training_threads"]:
        time.sleep(0.3)
    assert me.predict(api_name="/debug_modules")["training_threads"] == 0, "training kept running after cancel"


def test_measure_times_each_stage_of_a_compare_as_a_browser_sees_it(server, tmp_path):
    """`python -m app.measure`'s client: the outputs, the metrics, each LiteRT picture shown and the
    final update, in that order, every file of them downloaded once."""
    from app import measure
    from app.compare import authors, litert

    c = Client(server.url, verbose=False, download_files=False)
    warm_up, photo = measure.one_mp_photos(2, tmp_path)
    measure.time_compare(c, warm_up)  # a new client's first job may see its first updates late (measure skips it too)
    r = measure.time_compare(c, photo)
    assert 0 < r["first_outputs_s"] <= r["analysis_s"] <= r["final_s"]
    shown = {"authors_s": litert.available() and authors.PATH.is_file(), "litert_s": litert.available()}
    for key, expected in shown.items():  # the paper set, which the server opens with
        assert (r[key] is not None) == expected, (key, r)
        if expected:
            assert r["analysis_s"] <= r[key] <= r["final_s"]
    if shown["authors_s"] and shown["litert_s"]:
        assert r["authors_s"] <= r["litert_s"], "the authors' picture comes first: LiteRT's run follows, alone"
    assert set(r["latency_ms"]) == {"fp32", "ptq", "qat"}
    assert ("litert" in r["picture_latency_ms"]) == shown["litert_s"]
    assert "picture" in measure._pictures_text({"litert_s": 1.0}) and measure._pictures_text({}) == ""
