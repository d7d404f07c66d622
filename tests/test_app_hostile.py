"""Hostile requests against the real server (`python app.py`, one per module, through
`gradio_client`): each must end in a clear message or a correct result within a deadline, with
the server's memory (its own RSS plus any child's, sampled every 50 ms) bounded during the
request and back down after it, and a normal compare served right after.

The full-size (tiled) path is tested here too: not a hostile request, but this server's small
limits keep it fast. The inputs are as small as still proves each point. Numbers (seconds, peak and after-RSS) are
printed per row (`pytest -s`) and, with QATIE_HOSTILE_REPORT=path, written there as JSON.
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from tolerances import TOLERANCES

sys.path.insert(0, str(REPO_ROOT))
gradio_client = pytest.importorskip("gradio_client")
psutil = pytest.importorskip("psutil")
from gradio_client import Client, handle_file  # noqa: E402

from app.server import AppServer, rss_mb  # noqa: E402  (RSS of the server with its workers)
from test_app_api import compare, load, named, write_png  # noqa: E402  (the API tests' client helpers)

SHIPPED = [REPO_ROOT / "checkpoints" / n for n in ("fp32.onnx", "int8_ptq.onnx", "int8_qat.onnx")]
EXAMPLES = REPO_ROOT / "assets" / "examples"
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in SHIPPED),
                                reason="shipped ONNX models (checkpoints/*.onnx) are not present")

BUDGET = TOLERANCES["hostile_request"]  # with the reasons
DEADLINE_S = BUDGET["seconds"]  # every row ends within this
NORMAL_COMPARE_S = BUDGET["normal_compare_s"]  # …and a normal compare answers within this after it
PEAK_MB = BUDGET["peak_rss_mb"]  # server RSS (with children) while a row runs
AFTER_MB = BUDGET["after_rss_mb"]  # … and once it is done
INSPECT_DEADLINE_S = 6  # the test server's deadline for the Inspect panel's slow handlers
EXAMPLE_CACHE = 1
MAX_MP = 0.5  # the server's downscale threshold: the huge files' point is their decode, not 2-MP inference
UPLOAD_QUOTA_MB = 100.0  # per sender per hour: the rows' own uploads stay far below it
FULL_SIZE_MAX_MP = 1.0  # "Full size (tiled)" accepts up to this: the tiled path is tested on a small photo
REPORT: list[dict] = []


# --------------------------------------------------------------------------------------------
# The server, and measuring it
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def work_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("work")
    # Leftovers of app processes that ended badly: one unlocked folder, one of a dead pid.
    for name in ("qatie-app-0123456789ab", "qatie-app-999999999"):
        (root / name / "train" / "x").mkdir(parents=True)
        (root / name / "train" / "x" / "fp32.pt").write_bytes(b"0" * 1000)
    (root / "qatie-app-0123456789ab" / ".lock").write_text("")
    return root


@pytest.fixture(scope="module")
def server(work_root):
    env = {"QATIE_APP_WORK_DIR": str(work_root), "QATIE_LOG_LEVEL": "WARNING", "QATIE_TRAIN_THREADS": "1",
           "QATIE_EXAMPLE_CACHE": str(EXAMPLE_CACHE), "QATIE_INSPECT_BUILD_DEADLINE_S": str(INSPECT_DEADLINE_S),
           "QATIE_TIMING_RUNS": "1", "QATIE_MAX_MP": str(MAX_MP),
           "QATIE_FULL_SIZE_MAX_MP": str(FULL_SIZE_MAX_MP), "QATIE_TILE": "512",
           "QATIE_UPLOAD_QUOTA_MB": str(UPLOAD_QUOTA_MB)}
    with AppServer(env=env, timeout=120) as srv:
        yield srv
    if REPORT:
        lines = [f"{r['row']:<34} {r['seconds']:6.2f} s  peak {r['peak_mb']:6.0f} MB  after {r['after_mb']:6.0f} MB"
                 for r in REPORT]
        print("\nhostile requests (server RSS incl. children):\n" + "\n".join(lines))
        if os.environ.get("QATIE_HOSTILE_REPORT"):
            Path(os.environ["QATIE_HOSTILE_REPORT"]).write_text(json.dumps(REPORT, indent=1))


@pytest.fixture(scope="module")
def client(server):
    c = Client(server.url, verbose=False)
    c.predict(handle_file(str(_small_photo())), api_name="/compare")  # warm: rows measure their own work
    return c


class Watch:
    """Samples the server's RSS (children included) every 50 ms while a row runs."""

    def __init__(self, server, row: str, requests: int = 1, limit_s: float | None = None):
        self.pid, self.row, self.peak = server.proc.pid, row, 0.0
        self.limit_s = limit_s or DEADLINE_S * requests
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(0.05)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        if exc[0] is not None:
            return False
        after = _settled_rss(self.pid)
        REPORT.append({"row": self.row, "seconds": round(self.seconds, 2), "peak_mb": round(self.peak),
                       "after_mb": round(after)})
        assert self.seconds < self.limit_s, f"{self.row}: {self.seconds:.1f} s (limit {self.limit_s:.0f} s)"
        assert self.peak < PEAK_MB, f"{self.row}: server RSS peaked at {self.peak:.0f} MB"
        assert after < AFTER_MB, f"{self.row}: server RSS {after:.0f} MB after the request"
        return False


def _settled_rss(pid: int, wait_s: float = 5.0) -> float:
    """RSS once the request's memory is given back (allocators return it within a moment)."""
    end = time.perf_counter() + wait_s
    rss = rss_mb(pid)
    while rss >= AFTER_MB and time.perf_counter() < end:
        time.sleep(0.2)
        rss = rss_mb(pid)
    return rss


def _error(job_or_call) -> str:
    """The message of the gr.Error a request ends with (fails if it succeeds)."""
    try:
        job_or_call() if callable(job_or_call) else job_or_call.result()
    except Exception as exc:  # gradio_client.exceptions.AppError
        return str(exc)
    raise AssertionError("the request succeeded; it should have been refused with a message")


def _clean(msg: str, server) -> None:
    """A message meant for a user: no server paths, library source paths or process ids."""
    assert not re.search(r"(?<![\w.])/(tmp|proc|home|root|usr|work|var)/", msg), msg
    assert "onnxruntime_src" not in msg and ".cc:" not in msg and "qatie-app-" not in msg, msg
    assert str(server.proc.pid) not in msg, msg


_PHOTO = {}


def _small_photo() -> Path:
    if "p" not in _PHOTO:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"qatie-hostile-photo-{os.getpid()}.png"
        x = np.linspace(0, 255, 256, dtype=np.float32)
        img = np.stack([np.add.outer(x, x) / 2, np.tile(x, (256, 1)), np.tile(x[:, None], (1, 256))], -1)
        Image.fromarray(img.astype(np.uint8)).save(path)
        _PHOTO["p"] = path
    return _PHOTO["p"]


def _normal_compare_still_works(client) -> None:
    t0 = time.perf_counter()
    result = named(client.predict(handle_file(str(_small_photo())), api_name="/compare"))
    assert time.perf_counter() - t0 < NORMAL_COMPARE_S, "a normal compare after the attack was slow"
    js = result["metrics_json"]
    assert isinstance(js, dict) and js["size"] == [256, 256], js
    assert all(isinstance(result[k], str) and result[k].endswith(".png") for k in ("fp32", "ptq", "qat"))


# --------------------------------------------------------------------------------------------
# Hostile ONNX files (a few hundred bytes each)
# --------------------------------------------------------------------------------------------

def _onnx(tmp: Path, name: str, nodes, inits, out_ch: int = 3) -> Path:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("image", T.FLOAT, ["N", 3, "H", "W"])],
                     [h.make_tensor_value_info("out", T.FLOAT, ["N", out_ch, "H", "W"])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp / f"{name}.onnx"
    onnx.save(m, path)
    return path


def _arr(name, value, dtype=np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype), name)


def loop_model(tmp):
    from onnx import TensorProto as T
    from onnx import helper as h

    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Identity", ["x_in"], ["x_out"])],
                        "body", [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
                                 h.make_tensor_value_info("x_in", T.FLOAT, None)],
                        [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("x_out", T.FLOAT, None)])
    return _onnx(tmp, "loop", [h.make_node("Loop", ["M", "cond", "image"], ["out"], body=body)],
                 [_arr("M", 10 ** 12, np.int64), _arr("cond", True, np.bool_)])


def alloc_models(tmp):
    """ConstantOfShape, Expand and Tile of 2 GB, folded into the image so the output looks right."""
    from onnx import helper as h

    shape = _arr("shape", [512, 1024, 1024], np.int64)
    big = {
        "constantofshape": [h.make_node("ConstantOfShape", ["shape"], ["big"], value=_arr("v", [0.0]))],
        "expand": [h.make_node("Expand", ["zero", "shape"], ["big"])],
        "tile": [h.make_node("Tile", ["zero3", "shape"], ["big"])],
    }
    tail = [h.make_node("ReduceMax", ["big"], ["m"], keepdims=0), h.make_node("Add", ["image", "m"], ["out"])]
    inits = [shape, _arr("zero", [0.0]), _arr("zero3", np.zeros((1, 1, 1)))]
    return {k: _onnx(tmp, k, nodes + tail, inits) for k, nodes in big.items()}


def bad_output_models(tmp):
    from onnx import helper as h

    mul = [h.make_node("Mul", ["image", "k"], ["out"])]
    return {
        "NaN output": (_onnx(tmp, "nan", mul, [_arr("k", np.nan)]), "NaN or infinite"),
        "Inf output": (_onnx(tmp, "inf", mul, [_arr("k", np.inf)]), "NaN or infinite"),
        "half-size output": (_onnx(tmp, "half", [h.make_node("MaxPool", ["image"], ["out"], kernel_shape=[2, 2],
                                                             strides=[2, 2])], []), "input's size"),
        "1-channel output": (_onnx(tmp, "gray", [h.make_node("Conv", ["image", "w"], ["out"])],
                                   [_arr("w", np.full((1, 3, 1, 1), 1 / 3))], out_ch=1), "3 channels"),
    }


def strings_model(tmp):
    """24 copies of the image cast to STRING and back: ~34 bytes an element, not 4."""
    from onnx import TensorProto as T
    from onnx import helper as h

    nodes = [h.make_node("Concat", ["image"] * 24, ["c"], axis=1), h.make_node("Cast", ["c"], ["s"], to=T.STRING),
             h.make_node("Cast", ["s"], ["f"], to=T.FLOAT), h.make_node("Slice", ["f", "s0", "e3", "a1"], ["out"])]
    return _onnx(tmp, "strings", nodes, [_arr("s0", [0], np.int64), _arr("e3", [3], np.int64), _arr("a1", [1], np.int64)])


def outer_product_model(tmp, rows: int = 41):
    """A column of the image through a conv `rows` tall → H − rows + 1 values; every pixel times
    each of them: a tensor that grows with the height squared, right only where H is small."""
    from onnx import helper as h

    nodes = [h.make_node("Slice", ["image", "s00", "e11", "a13"], ["col"]), h.make_node("Conv", ["col", "k"], ["tall"]),
             h.make_node("Reshape", ["tall", "row"], ["r"]), h.make_node("Reshape", ["image", "column"], ["pix"]),
             h.make_node("Mul", ["pix", "r"], ["outer"]), h.make_node("Slice", ["outer", "s0", "e1", "a1"], ["one"]),
             h.make_node("Shape", ["image"], ["shape"]), h.make_node("Reshape", ["one", "shape"], ["out"])]
    i64 = lambda n, v: _arr(n, v, np.int64)  # noqa: E731
    inits = [i64("s00", [0, 0]), i64("e11", [1, 1]), i64("a13", [1, 3]), i64("row", [1, -1]), i64("column", [-1, 1]),
             i64("s0", [0]), i64("e1", [1]), i64("a1", [1]), _arr("k", np.ones((1, 1, rows, 1)))]
    return _onnx(tmp, "outer", nodes, inits)


def folding_model(tmp, convs: int = 6):
    """Convs of stored tensors only (ONNX Runtime would fold them while loading the model)."""
    from onnx import helper as h

    nodes = [h.make_node("Conv", ["a", "k"], [f"f{i}"]) for i in range(convs)]
    nodes.append(h.make_node("Add", ["image", "image"], ["out"]))
    return _onnx(tmp, "folding", nodes, [_arr("a", np.ones((1, 3, 96, 96))), _arr("k", np.ones((3, 3, 31, 31)))])


def live_tensors_model(tmp, n: int = 40, copies: int = 8):
    """Within every static budget (no tensor over 8× the image, 953× in all), but `n` tensors of
    8× the image stay alive at once: 2 GB of activations for a 0.5-MP photo. Summed forwards and
    backwards, the result is the image again, so the probe passes."""
    from onnx import helper as h

    nodes = [h.make_node("Concat", ["image"] * copies, ["c"], axis=1)]
    nodes += [h.make_node("Mul", ["c", f"k{i}"], [f"t{i}"]) for i in range(n)]
    forward, backward = "t0", f"t{n - 1}"
    for i in range(1, n):
        nodes.append(h.make_node("Add", [forward, f"t{i}"], [f"s{i}"]))
        forward = f"s{i}"
    for i in range(n - 2, -1, -1):
        nodes.append(h.make_node("Add", [backward, f"t{i}"], [f"b{i}"]))
        backward = f"b{i}"
    nodes += [h.make_node("Sub", [forward, backward], ["d"]), h.make_node("Slice", ["d", "s0", "e3", "a1"], ["z"]),
              h.make_node("Add", ["z", "image"], ["out"])]
    inits = [_arr(f"k{i}", [1.0 + i / 64]) for i in range(n)]
    inits += [_arr("s0", [0], np.int64), _arr("e3", [3], np.int64), _arr("a1", [1], np.int64)]
    return _onnx(tmp, "live", nodes, inits)


def _compare_with(client, photo: Path | None = None, **models) -> str:
    kw = {f"custom_{role}": handle_file(str(path)) for role, path in models.items()}
    return _error(lambda: client.predict(handle_file(str(photo or _small_photo())), api_name="/compare", **kw))


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------

def test_startup_removed_leftover_scratch(server, work_root):
    left = sorted(p.name for p in work_root.glob("qatie-app-*"))
    assert len(left) == 1, f"leftover scratch folders were not removed at start-up: {left}"


def test_extreme_aspect_strip(server, client, tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (100_000, 16), (120, 60, 30)).save(path)
    assert path.stat().st_size < 1_000_000
    with Watch(server, "16×100000 PNG"):
        msg = _error(lambda: client.predict(handle_file(str(path)), api_name="/compare"))
    assert "aspect ratio" in msg and "Crop it" in msg, msg
    _clean(msg, server)
    _normal_compare_still_works(client)


def test_loop_model_refused(server, client, tmp_path):
    with Watch(server, "ONNX with a Loop"):
        msg = _compare_with(client, fp32=loop_model(tmp_path))
    assert "Loop" in msg and "operators" in msg, msg
    _clean(msg, server)
    _normal_compare_still_works(client)


def test_allocating_models_refused(server, client, tmp_path):
    models = alloc_models(tmp_path)
    with Watch(server, "3 ONNX allocating 2 GB each", requests=3):
        msgs = {k: _compare_with(client, **{role: p}) for (k, p), role in zip(models.items(), ("fp32", "ptq", "qat"))}
    for k, msg in msgs.items():
        assert "operators" in msg and k.lower() in msg.lower(), (k, msg)
        _clean(msg, server)
    _normal_compare_still_works(client)


def test_bad_outputs_refused(server, client, tmp_path):
    for row, (path, expected) in bad_output_models(tmp_path).items():
        with Watch(server, f"ONNX with {row}"):
            msg = _compare_with(client, qat=path)
        assert expected in msg, (row, msg)
        _clean(msg, server)
    _normal_compare_still_works(client)


def test_corrupt_model_message_has_no_paths(server, client, tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07" + os.urandom(2000))
    with Watch(server, "corrupt .onnx"):
        msg = _compare_with(client, ptq=path)
    assert "junk.onnx" in msg, msg
    _clean(msg, server)


def test_string_and_outgrowing_models_refused(server, client, tmp_path):
    for row, path, expected in (("ONNX casting 24 image copies to STRING", strings_model(tmp_path), "not a number type"),
                                ("ONNX whose tensor grows with the height squared", outer_product_model(tmp_path),
                                 "too large|grow faster"),
                                ("ONNX convolving stored tensors only", folding_model(tmp_path), "constants only")):
        with Watch(server, row):
            msg = _compare_with(client, ptq=path)
        assert re.search(expected, msg), (row, msg)
        _clean(msg, server)
    _normal_compare_still_works(client)


def test_model_past_the_static_checks_meets_the_box(server, client, tmp_path):
    """The second line: a model every static budget accepts, which needs 2 GB for a 0.5-MP photo,
    runs in a worker whose address space is limited: the worker dies, the visitor reads why, the
    server's memory never sees it."""
    rng = np.random.default_rng(5)
    photo = write_png(tmp_path / "half_mp.png", rng.integers(0, 255, (700, 700, 3), dtype=np.uint8))  # 0.49 MP
    with Watch(server, "ONNX keeping 40 tensors of 8× the image alive (2 GB at 0.5 MP)"):
        msg = _compare_with(client, photo=photo, qat=live_tensors_model(tmp_path))
    assert "memory" in msg and "MB" in msg, msg
    _clean(msg, server)
    _normal_compare_still_works(client)


def test_one_heavy_request_per_session(server, client, tmp_path):
    """Two compares from one session at once: the second is refused at once with a message (the
    first holds one heavy slot, not both); the first completes; another session is served."""
    rng = np.random.default_rng(6)
    photo = write_png(tmp_path / "slow.png", rng.integers(0, 255, (700, 700, 3), dtype=np.uint8))
    with Watch(server, "two compares at once from one session", requests=2):
        first = client.submit(handle_file(str(photo)), api_name="/compare", full_size=True)  # ~seconds of work
        while first.status().code.name not in ("PROCESSING", "ITERATING", "FINISHED"):
            time.sleep(0.02)
        t0 = time.perf_counter()
        msg = _error(lambda: client.predict(handle_file(str(_small_photo())), api_name="/compare"))
        refused_s = time.perf_counter() - t0
        assert first.result()[13]["size"] == [700, 700]
    assert "still running" in msg and "A comparison from this browser session" in msg, msg
    assert refused_s < 10, f"the second request took {refused_s:.1f} s to be refused"
    _clean(msg, server)
    _normal_compare_still_works(Client(server.url, verbose=False))


def test_exif_bomb_photo(server, client, tmp_path):
    """A 0.9 MB PNG whose EXIF block would cost Pillow's getexif() ~12 GB: decoded in the box,
    its orientation read in place."""
    from test_imageio import _exif_bomb

    path = tmp_path / "exif_bomb.png"
    Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(path, exif=_exif_bomb())
    assert path.stat().st_size < 1_000_000
    with Watch(server, f"PNG with a 60,000-entry EXIF block ({path.stat().st_size // 1000} kB)"):
        result = named(client.predict(handle_file(str(path)), api_name="/compare"))
    js = result["metrics_json"]
    assert js["size"] == [64, 96] and "rotated upright" in result["notice"], (js, result["notice"])
    _normal_compare_still_works(client)


def _mode_png(mode: str, w: int, h: int) -> bytes:
    if mode == "P":
        im = Image.new("P", (w, h), 5)
        im.putpalette([v for i in range(256) for v in (i, 128, 255 - i)])
    elif mode == "I;16":
        im = Image.fromarray(np.full((h, w), 30000, np.uint16))
    else:
        im = Image.new(mode, (w, h), 1)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["1", "P", "I;16"])
def test_huge_low_depth_png_decodes_reduced(server, client, tmp_path, mode):
    w, h = 11_000, 9_000  # 99 MP, under the 120-MP limit; a few hundred kB on disk
    path = tmp_path / f"big_{mode.replace(';', '')}.png"
    path.write_bytes(_mode_png(mode, w, h))
    with Watch(server, f"99-MP {mode} PNG ({path.stat().st_size // 1000} kB)"):
        result = named(client.predict(handle_file(str(path)), api_name="/compare"))
    js = result["metrics_json"]
    assert js["original_size"] == [w, h] and js["size"][0] * js["size"][1] <= MAX_MP * 1e6, js
    assert "Downscaled" in result["notice"], result["notice"]


def test_multipage_tiff_first_page_only(server, client, tmp_path):
    pages = [Image.new("RGB", (640, 480), (i, 255 - i, 90)) for i in range(200)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:], compression="tiff_deflate")
    with Watch(server, f"200-page TIFF ({path.stat().st_size // 1000} kB)"):
        result = named(client.predict(handle_file(str(path)), api_name="/compare"))
    assert result["metrics_json"]["size"] == [640, 480], result["metrics_json"]
    _normal_compare_still_works(client)


def test_example_cache_is_a_small_lru(server, client, work_root):
    inputs = sorted(EXAMPLES.glob("*_input.png"))
    if not inputs:
        pytest.skip("no bundled examples")
    requests = next(work_root.glob("qatie-app-*")) / "requests"
    with Watch(server, f"example, simulate, {EXAMPLE_CACHE + 2} seeds", requests=EXAMPLE_CACHE + 2):
        for seed in range(1, EXAMPLE_CACHE + 3):
            client.predict(handle_file(str(inputs[0])), simulate=True, seed=seed, api_name="/compare")
    kept = [p for p in requests.iterdir()] if requests.is_dir() else []
    # the LRU's folders, plus the first view's result, pinned for page loads (app.compare.first_view)
    assert len(kept) <= EXAMPLE_CACHE + 1, f"{len(kept)} cached example folders kept, limit {EXAMPLE_CACHE} + 1"


TRAIN_KW = dict(data="Built-in sample photos (scikit-image)", init="Scratch (a new network)", lr=1e-3, qat_lr=1e-4,
                ptq_method="minmax")


def test_training_over_budget_refused(server, client):
    with Watch(server, "Train beyond the step limits, and over the budget within them", requests=2):
        old_max = _error(lambda: client.predict(api_name="/train", width=32, fp32_steps=3000, qat_steps=1000,
                                                batch_size=32, patch=256, **TRAIN_KW))
        in_range = _error(lambda: client.predict(api_name="/train", width=32, fp32_steps=2000, qat_steps=500,
                                                 batch_size=16, patch=128, **TRAIN_KW))
    assert re.search(r"between|greater than maximum", old_max), old_max
    assert "budget" in in_range and "units of compute" in in_range, in_range


def _raw_call(server, fn_index: int, data: list, timeout: float = 60) -> str:
    """Call an event by number over Gradio's queue protocol, as a script would (gradio_client
    refuses events without an API name); returns the error message it ends with."""
    import httpx

    session = f"hostile{int(time.time() * 1000)}"
    with httpx.Client(base_url=server.url, timeout=timeout) as http:
        http.post("gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                  "event_data": None, "trigger_id": None}).raise_for_status()
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    assert not msg.get("success"), f"event {fn_index} succeeded: {str(out)[:200]}"
                    return str(out.get("error") or out)
    raise AssertionError(f"event {fn_index} never completed")


def _upload(server, path: Path) -> dict:
    import httpx

    with open(path, "rb") as fh:
        r = httpx.post(server.url + "gradio_api/upload", files={"files": (path.name, fh, "image/png")}, timeout=30)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_upload_quota_per_sender(server, tmp_path):
    """One sender (a session_hash of its own) uploads 24-MB files until refused: the quota stops it
    with a 429 and a message before the body is stored, and other senders still upload."""
    import httpx

    blob = tmp_path / "noise.bin"
    blob.write_bytes(os.urandom(24_000_000))
    codes, messages = [], []
    with Watch(server, f"24-MB uploads from one sender until refused (quota {UPLOAD_QUOTA_MB:g} MB)", requests=6):
        for _ in range(6):
            with open(blob, "rb") as fh:
                r = httpx.post(server.url + "gradio_api/upload", files={"files": ("noise.png", fh, "image/png")},
                               headers={"session_hash": "hostile-uploader"}, timeout=60)
            codes.append(r.status_code)
            messages.append(r.text)
    accepted = int(UPLOAD_QUOTA_MB * 1e6 // blob.stat().st_size)
    assert codes[:accepted] == [200] * accepted and set(codes[accepted:]) == {429}, codes
    assert "Upload quota reached" in messages[-1] and "Try again in" in messages[-1], messages[-1]
    _clean(messages[-1], server)
    assert _upload(server, _small_photo())["path"]  # another sender is not affected


def _fn_index(client, button_label: str) -> int:
    """The dependency a button triggers (the Inspect panel's handlers have no API name)."""
    cfg = client.config
    ids = [c["id"] for c in cfg["components"] if c.get("props", {}).get("value") == button_label]
    assert ids, f"no button {button_label!r}"
    for i, dep in enumerate(cfg["dependencies"]):
        if any(t[0] in ids for t in dep.get("targets", [])):
            return dep.get("id", i)
    raise AssertionError(f"no event on {button_label!r}")


@pytest.mark.slow
def test_inspect_handler_stopped_at_deadline(server, client):
    idx = _fn_index(client, "Measure the trade-off (first time: minutes)")
    with Watch(server, "Inspect mixed precision by fn_index"):
        msg = _raw_call(server, idx, [_upload(server, _small_photo()), "0,1,2,4,8,16,35", None])
    assert f"stopped after {INSPECT_DEADLINE_S} s" in msg, msg
    _clean(msg, server)
    time.sleep(0.5)
    inspect_children = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                        if "_child()" in " ".join(p.cmdline())]  # (the box's spare workers stay)
    assert not inspect_children, "the Inspect child process was not killed"
    _normal_compare_still_works(client)


@pytest.mark.slow
def test_cancelled_training_leaves_no_folder(server, client, work_root):
    train_root = next(work_root.glob("qatie-app-*")) / "train"
    with Watch(server, "Train, cancelled"):
        job = client.submit(api_name="/train", width=16, fp32_steps=400, qat_steps=50, batch_size=4, patch=32,
                            **TRAIN_KW)
        end = time.perf_counter() + 20
        while time.perf_counter() < end and not any(train_root.glob("*/*/fp32_run")):
            time.sleep(0.2)
        assert any(train_root.glob("*/*")), "the training never started"
        job.cancel()
        end = time.perf_counter() + 20
        while time.perf_counter() < end and any(train_root.glob("*/*")):
            time.sleep(0.2)
    left = list(train_root.glob("*/*"))
    assert not left, f"a cancelled training left {left}"
    _normal_compare_still_works(client)


# --------------------------------------------------------------------------------------------
# Full size (tiled): this server's small limits keep the test fast (not a hostile request)
# --------------------------------------------------------------------------------------------

def test_full_size_is_tiled_with_full_size_downloads(server, client, tmp_path):
    rng = np.random.default_rng(11)
    src = rng.integers(60, 200, (600, 900, 3), dtype=np.uint8)  # 0.54 MP: over MAX_MP, under FULL_SIZE_MAX_MP
    path = write_png(tmp_path / "big.png", src)
    r = compare(client, path, full_size=True)
    assert "tiles" in r["notice"] and r["metrics_json"]["tiled"] is True
    shown = load(r["fp32"])
    assert shown.shape[0] * shown.shape[1] <= MAX_MP * 1e6, "the image shown is a downscaled copy"
    full = {Path(p).name: load(p) for p in r["downloads"]}
    beside = {f for name, f in (("authors", "full_authors_tflite.png"), ("litert", "full_qat_litert.png"))
              if r[name] is not None}  # paper set, ai-edge-litert
    assert set(full) == {"full_input.png", "full_fp32.png", "full_ptq.png", "full_qat.png"} | beside
    assert all(a.shape == src.shape for a in full.values())
    assert np.array_equal(full["full_input.png"], src)
    assert r["metrics_json"]["size"] == [900, 600]

    small = compare(client, path)  # the same photo without "full size": downscaled, with a notice
    assert "Downscaled" in small["notice"] and small["metrics_json"]["tiled"] is False
    assert small["downloads"] is None

    big = write_png(tmp_path / "bigger.png", rng.integers(0, 255, (1000, 1200, 3), dtype=np.uint8))  # 1.2 MP > the cap
    msg = _error(lambda: compare(client, big, full_size=True))
    assert "limited to 1 MP" in msg, msg
    _clean(msg, server)
