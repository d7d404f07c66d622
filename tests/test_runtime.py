"""ONNX Runtime inference path (qatie.runtime.enhancer) and the latency benchmark (qatie.runtime.bench).

A tiny random-init FP32 model (width 8) is exported once per session; torch is used here only
to build that model and to produce reference outputs — qatie.runtime.enhancer itself must stay torch-free.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qatie.runtime import enhancer as rt
from qatie.errors import ModelFileError, QatieError
from conftest import assert_close
from tolerances import TOLERANCES

REPO = Path(__file__).resolve().parent.parent
SHARED_REF = REPO.parent / "shared" / "reference" / "qatie_official_int8_100x100.tflite"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

def _export(model, path: Path) -> None:
    """Export like the shipped models: no padding in the graph (the runtime pads).

    A 32×32 input needs no padding, so the model's pad/crop are no-ops and stay out of the trace.
    """
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, torch.rand(1, 3, 32, 32), str(path), input_names=["image"], output_names=["output"],
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}},
            opset_version=17, dynamo=False,
        )


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    import torch
    from qatie.model.network import build_model

    d = tmp_path_factory.mktemp("onnx")
    def random_net(width: int, seed: int):
        torch.manual_seed(seed)
        net = build_model(width=width).eval()
        net.delta.reset_parameters()  # the model starts as the identity; make it do something
        return net

    net = random_net(8, 0)
    _export(net, d / "fp32.onnx")
    ops = {n.op_type for n in onnx.load(str(d / "fp32.onnx")).graph.node}
    assert "Pad" not in ops, "padding was traced into the graph"
    _export(random_net(4, 1), d / "other.onnx")
    return {"torch": net, "fp32": d / "fp32.onnx", "other": d / "other.onnx", "dir": d}


@pytest.fixture(scope="session")
def enhancer(models):
    return rt.OnnxEnhancer(models["fp32"])


def _image(h: int, w: int, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.2 + 0.6 * yy, 0.2 + 0.6 * xx, 0.5 + 0.3 * np.sin(6 * xx + 3 * yy)], -1)
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 1).astype(np.float32)


def _qdq_model(path: Path) -> Path:
    """image → QuantizeLinear → DequantizeLinear → output: a minimal INT8 (QDQ) qatie-shaped model."""
    shape = ["n", 3, "h", "w"]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [1 / 255]), helper.make_tensor("z", TensorProto.UINT8, [], [0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _other_onnx(path: Path, name: str = "x", rank: int = 4) -> Path:
    shape = ["n", 3, "h", "w"][:rank]
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])], "other",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(1, 1), (17, 31), (45, 64), (16, 16)])
def test_matches_torch_on_any_size(models, enhancer, hw):
    import torch

    x = np.random.default_rng(1).random((2, 3, *hw), dtype=np.float32)
    with torch.no_grad():
        ref = models["torch"](torch.from_numpy(x)).numpy()
    y = enhancer.run_nchw(x)
    assert y.shape == x.shape and y.dtype == np.float32 and y.flags.c_contiguous
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert_close(y, ref, "fp32_onnx_vs_torch")


def test_attributes_and_enhance(models, enhancer, tmp_path):
    assert enhancer.path == models["fp32"] and enhancer.name == "fp32"
    assert enhancer.size_bytes == models["fp32"].stat().st_size > 0
    assert enhancer.is_int8 is False
    assert rt.OnnxEnhancer(_qdq_model(tmp_path / "q.onnx")).is_int8 is True

    img = _image(21, 35)
    out = enhancer.enhance(img)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, enhancer.run_nchw(img.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0))
    # uint8 in → treated as /255
    u8 = np.round(img * 255).astype(np.uint8)
    assert_close(enhancer.enhance(u8), enhancer.enhance(u8 / np.float32(255)), "uint8_vs_float_input")
    for bad in (np.zeros((8, 8), np.float32), np.zeros((8, 8, 4), np.float32)):
        with pytest.raises(QatieError, match="H×W×3"):
            enhancer.enhance(bad)
    with pytest.raises(QatieError, match="N×3×H×W"):
        enhancer.run_nchw(np.zeros((3, 8, 8), np.float32))


def test_session_options():
    so = rt.session_options(threads=3, optimized_model_path="/tmp/x.onnx")
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.optimized_model_filepath == "/tmp/x.onnx"
    with pytest.raises(QatieError):
        rt.session_options(threads=0)


# --------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,tile,overlap", [(300, 128, 32), (400, 128, 32), (129, 128, 32), (1000, 512, 32), (50, 64, 8), (257, 128, 0)])
def test_tile_starts_cover_with_overlap(n, tile, overlap):
    starts = rt.tile_starts(n, tile, overlap)
    size = min(tile, n)
    assert starts[0] == 0 and starts[-1] + size == n
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(a + size - b >= overlap for a, b in zip(starts, starts[1:]))


def test_tiled_small_image_equals_whole(enhancer):
    img = _image(37, 50)
    np.testing.assert_array_equal(enhancer.enhance_tiled(img, tile=64), enhancer.enhance(img))
    for tile, overlap in ((8, 0), (64, 40), (64, -1)):
        with pytest.raises(QatieError):
            enhancer.enhance_tiled(img, tile=tile, overlap=overlap)


@pytest.mark.parametrize("hw", [(300, 400), (131, 67), (1, 300)])
def test_tiled_shape_and_range(enhancer, hw):
    img = _image(*hw)
    out = enhancer.enhance_tiled(img, tile=64, overlap=16)
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_tiled_vs_whole_psnr(enhancer):
    img = _image(300, 400)
    whole = enhancer.enhance(img)
    tiled = enhancer.enhance_tiled(img, tile=128, overlap=32)
    psnr = _psnr(tiled, whole)
    print(f"tiled (128, overlap 32) vs whole on 300x400: PSNR {psnr:.2f} dB")
    assert psnr >= TOLERANCES["tiled_vs_whole_random_min_psnr_db"]  # catches broken stitching


def _ramp(n: int, starts: list[int], tile: int) -> list[tuple[int, int, np.ndarray]]:
    """t(x): the share of the *next* tile in column x across each overlap, as `enhance_tiled`
    documents it — over an overlap of L columns the ramp (k+1)/(L+1), k = 0…L−1 — written
    per seam: 0 left of its overlap, 1 right of it (`_seam_excess` takes one seam at a time)."""
    ramps = []
    for a, b in zip(starts, starts[1:]):
        lo, hi = b, a + tile  # overlap columns [lo, hi)
        t = np.zeros(n)
        t[lo:hi] = np.arange(1, hi - lo + 1) / (hi - lo + 1)
        t[hi:] = 1.0
        ramps.append((lo, hi, t))
    return ramps


def _seam_excess(out, whole, strips, starts, tile):
    """Per seam, how far the column-to-column change of d = out − whole exceeds what a linear
    blend of the two strips A, B it joins allows, over the columns the seam touches.

    With d_A = A − whole, d_B = B − whole and the ramp t, a linear blend d = (1−t)·d_A + t·d_B
    changes from column x to x+1 by exactly
        (1−t[x+1])·Δd_A + t[x]·Δd_B + (t[x+1]−t[x])·(d_B[x+1] − d_A[x]),
    so |Δd| is at most each strip's own change plus their disagreement times the ramp's step
    1/(L+1). Averaged over rows (and channels, before the |·|: linear), as `jump` is. A hard cut
    (t steps 0 → 1 in one column) puts the whole disagreement into one step and breaks it."""
    n = whole.shape[1]
    d = (out - whole).mean(-1)[8:-8]  # rows away from the image's top and bottom borders
    jump = np.abs(np.diff(d, axis=1)).mean(0)
    excess = []
    for (lo, hi, t), a, b in zip(_ramp(n, starts, tile), starts, starts[1:]):
        dA, dB = np.zeros_like(d), np.zeros_like(d)  # 0 where the strip is absent: its weight is 0 there
        dA[:, a:a + tile] = (strips[a] - whole[:, a:a + tile]).mean(-1)[8:-8]
        dB[:, b:b + tile] = (strips[b] - whole[:, b:b + tile]).mean(-1)[8:-8]
        cols = np.arange(lo - 1, hi)  # jumps x → x+1 where t changes
        x, x1 = cols, cols + 1
        bound = ((1 - t[x1]) * np.abs(dA[:, x1] - dA[:, x]) + t[x] * np.abs(dB[:, x1] - dB[:, x])
                 + (t[x1] - t[x]) * np.abs(dB[:, x1] - dA[:, x])).mean(0)
        excess.append(float((jump[cols] - bound).max()))
    return excess


def test_tiled_seams_blend(enhancer):
    """No tile-boundary discontinuity: across each seam the feathered result (compared to the
    whole-image output) changes no faster than a linear blend of its two tiles can — each
    tile's own change, plus their disagreement spread over the ramp's L+1 steps — while a
    hard stitch of the same tiles, which puts the whole disagreement into one step, breaks
    that bound."""
    tile, overlap = 128, 32
    img = _image(300, 400, noise=0.0)
    whole = enhancer.enhance(img)
    feathered = enhancer.enhance_tiled(img, tile=tile, overlap=overlap)
    starts = rt.tile_starts(400, tile, overlap)
    # Each vertical strip tiled as usual (its horizontal seams blended the same way as in the
    # full run): the two tiles A, B that each vertical seam joins.
    strips = {s: enhancer.enhance_tiled(img[:, s:s + tile], tile=tile, overlap=overlap) for s in starts}
    # Hard stitch: each column taken from the tile whose centre is nearest (cut mid-overlap).
    cuts = [0] + [(a + tile + b) // 2 for a, b in zip(starts, starts[1:])] + [400]
    hard = np.empty_like(img)
    for s, lo, hi in zip(starts, cuts, cuts[1:]):
        hard[:, lo:hi] = strips[s][:, lo - s:hi - s]
    f_excess = _seam_excess(feathered, whole, strips, starts, tile)
    h_excess = _seam_excess(hard, whole, strips, starts, tile)
    slack = TOLERANCES["tiled_seam_float32_rounding"]
    print(f"seam change over the linear-blend bound (levels): feathered {[f'{255 * e:.2g}' for e in f_excess]}, "
          f"hard stitch {[f'{255 * e:.2g}' for e in h_excess]}")
    assert min(h_excess) > slack, "the measure does not see a hard seam"
    assert max(f_excess) <= slack, "a seam changes faster than a linear blend of its tiles allows"


# --------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------

def _bad_files(models, d: Path) -> dict[str, Path]:
    good = models["fp32"].read_bytes()
    files = {
        "missing": d / "missing.onnx",
        "empty": d / "empty.onnx",
        "truncated": d / "truncated.onnx",
        "garbage": d / "garbage.onnx",
        "text": d / "readme.onnx",
        "png": d / "image.onnx",
        "wrong_input": _other_onnx(d / "wrong_input.onnx", name="x"),
        "wrong_rank": _other_onnx(d / "wrong_rank.onnx", name="image", rank=2),
        "directory": d / "folder.onnx",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["garbage"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["text"].write_text("this is not a model\n" * 20)
    files["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    files["directory"].mkdir()
    return files


def test_bad_model_files_raise_model_file_error(models, tmp_path):
    for kind, path in _bad_files(models, tmp_path).items():
        with pytest.raises(ModelFileError) as info:
            rt.OnnxEnhancer(path)
        assert str(path) in str(info.value), (kind, str(info.value))
    with pytest.raises(ModelFileError, match="image"):
        rt.OnnxEnhancer(tmp_path / "wrong_input.onnx")


# --------------------------------------------------------------------------------------------
# Names, cache, no torch
# --------------------------------------------------------------------------------------------

def test_resolve_onnx(models):
    assert rt.resolve_onnx(models["fp32"]) == models["fp32"]
    assert rt.resolve_onnx(str(models["fp32"])) == models["fp32"]
    with pytest.raises(ModelFileError) as info:
        rt.resolve_onnx("int4_magic")
    msg = str(info.value)
    assert "int4_magic" in msg and all(n in msg for n in ("fp32", "ptq", "qat"))
    assert rt.SHIPPED_MODELS == {
        "fp32": "checkpoints/fp32.onnx", "ptq": "checkpoints/int8_ptq.onnx", "qat": "checkpoints/int8_qat.onnx",
        "paper": "checkpoints/paper_fp32.onnx", "paper-ptq": "checkpoints/paper_int8_ptq.onnx",
        "paper-qat": "checkpoints/paper_int8_qat.onnx",
    }
    for name, rel in rt.SHIPPED_MODELS.items():
        path = rt.REPO_ROOT / rel
        if path.is_file():
            assert rt.resolve_onnx(name) == path
        else:
            with pytest.raises(ModelFileError, match=str(path)):
                rt.resolve_onnx(name)


def test_get_enhancer_cache(models, tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(models["fp32"].read_bytes())
    rt.clear_cache()
    results = []
    threads = [threading.Thread(target=lambda: results.append(rt.get_enhancer(p))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert rt.get_enhancer(str(p)) is results[0]
    assert rt.get_enhancer(p, threads=1) is not results[0]
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # "re-exported"
    fresh = rt.get_enhancer(p)
    assert fresh is not results[0]
    assert len([k for k in rt._CACHE if k[0] == str(p.resolve()) and k[2] == 2]) == 1
    rt.clear_cache()


def test_runtime_does_not_import_torch(models):
    code = (
        "import sys, numpy as np\n"
        "import qatie.runtime.enhancer as rt, qatie.runtime.bench\n"
        f"e = rt.OnnxEnhancer({str(models['fp32'])!r})\n"
        "e.enhance_tiled(np.zeros((40, 40, 3), np.float32), tile=32, overlap=8)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# Measurement and benchmark
# --------------------------------------------------------------------------------------------

def test_measure_latency_with_stub():
    calls = []

    nap_ms = 2

    def fn():
        calls.append(1)
        time.sleep(nap_ms / 1000)  # at least this long (time.sleep never returns early)

    res = rt.measure_latency(fn, warmup=2, runs=4)
    assert len(calls) == 6
    assert set(res) >= {"median_ms", "min_ms", "max_ms", "runs", "samples_ms"}
    assert res["runs"] == 4 and len(res["samples_ms"]) == 4
    assert nap_ms <= res["min_ms"] <= res["median_ms"] <= res["max_ms"] < 2000
    with pytest.raises(QatieError):
        rt.measure_latency(fn, runs=0)
    assert rt.peak_rss_mb() > 10


def test_run_benchmark_rows_and_interleaving(models, monkeypatch, tmp_path):
    from qatie.runtime import bench

    order = []
    real = rt.OnnxEnhancer.run_nchw

    def recording(self, x):
        order.append(self.name)
        return real(self, x)

    monkeypatch.setattr(rt.OnnxEnhancer, "run_nchw", recording)
    res = bench.run_benchmark([str(models["other"]), str(models["fp32"])], [(24, 40), (17, 9)], runs=3, warmup=1)

    assert res["threads"] == 2 and res["baseline"] == "fp32"
    assert {"cpu_count", "onnxruntime", "platform"} <= set(res["machine"])
    from qatie.runtime.cpu import int8_path
    assert res["machine"]["int8_path"] == int8_path() and res["machine"]["threads"] == 2 and res["machine"]["cpu"]
    rows = res["results"]
    assert len(rows) == 4
    keys = {"model", "path", "size", "median_ms", "min_ms", "max_ms", "ratio_to_fp32", "file_mb", "peak_rss_mb"}
    for r in rows:
        assert keys <= set(r)
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["file_mb"] > 0 and r["peak_rss_mb"] and r["peak_rss_mb"] > 10
        assert r["ratio_to_reference"] is None
    assert [(r["model"], r["size"]) for r in rows] == [
        ("other", "24x40"), ("fp32", "24x40"), ("other", "17x9"), ("fp32", "17x9")]
    by = {(r["model"], r["size"]): r for r in rows}
    assert by[("fp32", "24x40")]["ratio_to_fp32"] == 1.0
    other = by[("other", "24x40")]
    assert other["ratio_to_fp32"] == pytest.approx(other["median_ms"] / by[("fp32", "24x40")]["median_ms"])
    # Per size: 1 warm-up round then 3 timed rounds, every round runs each model exactly once.
    assert len(order) == 2 * 4 * 2
    for i in range(0, len(order), 2):
        assert sorted(order[i:i + 2]) == ["fp32", "other"]

    table = bench.format_table(res)
    assert "fp32" in table and "other" in table and "24x40" in table and "peak RSS" in table
    out = bench.write_json(res, tmp_path / "sub" / "bench.json")
    assert json.loads(out.read_text())["results"][0]["model"] == "other"


def test_benchmark_errors(models, monkeypatch):
    from qatie.runtime import bench

    with pytest.raises(ModelFileError, match="ptq"):
        bench.run_benchmark(["nonexistent_model"], [(16, 16)])
    with pytest.raises(QatieError):
        bench.run_benchmark([str(models["fp32"])], [])
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    with pytest.raises(QatieError, match="pip install ai-edge-litert"):
        bench.run_benchmark([str(models["fp32"])], [(16, 16)], reference_tflite=str(SHARED_REF), measure_memory=False)
    assert bench.parse_size("1920x1080") == (1920, 1080)
    with pytest.raises(QatieError):
        bench.parse_size("big")


@pytest.mark.skipif(not SHARED_REF.is_file(), reason="../shared/reference not available")
def test_benchmark_with_tflite_reference(models):
    pytest.importorskip("ai_edge_litert")
    from qatie.runtime import bench

    res = bench.run_benchmark([str(models["fp32"])], [(100, 100), (24, 40)], runs=2, warmup=1,
                              reference_tflite=str(SHARED_REF), measure_memory=False)
    rows = {(r["model"], r["size"]): r for r in res["results"]}
    assert set(rows) == {("fp32", "100x100"), ("reference_tflite", "100x100"), ("fp32", "24x40")}
    ref = rows[("reference_tflite", "100x100")]
    assert ref["ratio_to_reference"] == 1.0 and ref["ratio_to_fp32"] > 0
    assert rows[("fp32", "100x100")]["ratio_to_reference"] == pytest.approx(
        rows[("fp32", "100x100")]["median_ms"] / ref["median_ms"])
    assert rows[("fp32", "24x40")]["ratio_to_reference"] is None
    assert res["reference"]["size"] == "100x100"
    assert "x reference" in bench.format_table(res)


def test_tiled_run_shared_by_two_workers_blends_as_one_and_wait_covers_the_slow_tile():
    """Two workers share the tiles (one slow); the one that runs out first `wait`s for the other's
    last tile; the result equals a single worker's; a cancelled run releases `wait` with False."""
    img = np.random.default_rng(0).random((70, 90, 3)).astype(np.float32)
    fn = lambda tile: np.sqrt(tile)  # noqa: E731
    alone = rt.run_tiled(fn, img, 32, 4)
    run = rt.TiledRun(img, 32, 4)
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    def slow(tile):
        started.set()
        release.wait()  # held until this thread has run out of tiles
        returned.set()
        return fn(tile)

    t = threading.Thread(target=run.work, args=(slow,))
    t.start()
    started.wait()
    ran = run.work(fn)
    threading.Timer(0.2, release.set).start()
    assert run.wait() and returned.is_set(), "wait returned before the slow tile was in"
    t.join()
    assert ran == run.count - 1 and np.array_equal(run.result(), alone)
    cancelled = rt.TiledRun(img, 32, 4)
    cancelled.cancel()
    assert cancelled.wait() is False
