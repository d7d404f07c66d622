"""Shared fixtures: the repository root, the optional ../shared folder, tiny images and folders,
and a helper to run the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_CLEAN = SHARED / "data" / "clean"

needs_shared = pytest.mark.skipif(not SHARED_CLEAN.is_dir(), reason=f"{SHARED_CLEAN} is absent (shared data not available)")

#: Fixtures that start the real app (a server, a browser) or build the model card: every test that
#: uses one is `slow` (`pytest -m "not slow"` is the quick run after an edit; CI runs everything).
SLOW_FIXTURES = {"app_server", "server", "client", "browser", "card", "trained"}


#: The modules whose tests use the session's app server (`app_server`). Run in parallel
#: (`pytest -n 2`, pytest-xdist), one worker takes all of them, so the run still starts one server.
APP_SERVER_MODULES = {"test_app_api.py", "test_app_browser.py", "test_app_paper.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if "app_server" in fixtures:
            assert item.path.name in APP_SERVER_MODULES, f"add {item.path.name} to APP_SERVER_MODULES"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """In parallel, a worker takes whole modules (each module fixture is built once: the model
    card, trained runs), and the app-server modules together (one server)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAppServerTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "app_server" if Path(module).name in APP_SERVER_MODULES else module

    return ModulesAppServerTogether(config, log)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run torch single-threaded in tests. On a 2-core machine that is also doing other work,
    torch's 2 OpenMP threads spin-wait on each other: a 3 s training test was measured taking
    260 s. torch is not imported here (some tests check that a code path stays torch-free)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def app_server():
    """The one `python app.py` (shipped checkpoints, default limits) that the API, browser and
    paper tests share: started when the first of them needs it, stopped at the end of the run.
    Only the tests that need other limits start their own: tests/test_app_hostile.py (small
    downscale and full-size limits, a one-entry example cache, a short Inspect deadline). Sessions keep the tests apart: each test talks to it
    through its own client or page, so no test sees another's results or trained sets."""
    sys.path.insert(0, str(REPO_ROOT))  # the app package lives at the repository root
    from app.server import AppServer

    env = {"QATIE_APP_DEBUG": "1", "QATIE_TRAIN_THREADS": "1", "QATIE_LOG_LEVEL": "WARNING",
           "QATIE_TIMING_BUDGET_S": "300"}  # every timing round, whatever the CPU (the budget: test_app_core)
    with AppServer(env=env, timeout=120) as srv:
        yield srv


@pytest.fixture(scope="session")
def shared_clean() -> Path:
    if not SHARED_CLEAN.is_dir():
        pytest.skip(f"{SHARED_CLEAN} is absent (shared data not available)")
    return SHARED_CLEAN


def make_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like H×W×3 float32 image in [0,1] (gradients plus blobs, some texture)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fy, fx, ph = rng.uniform(0.02, 0.15), rng.uniform(0.02, 0.15), rng.uniform(0, 6.28)
        img[..., c] = 0.5 + 0.3 * np.sin(fy * yy + ph) * np.cos(fx * xx + c)
    img += 0.05 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture
def tiny_image() -> np.ndarray:
    return make_image(24, 32)


@pytest.fixture
def clean_dir(tmp_path) -> Path:
    """A folder of three small clean PNG photos (crops of scikit-image's samples)."""
    from qatie.data.datasets import sample_images
    from qatie.imageio import write_image

    d = tmp_path / "clean"
    for i, (name, img) in enumerate(list(sample_images(("astronaut", "coffee", "chelsea")).items())):
        write_image(d / f"{name}.png", img[40:40 + 48 + 8 * i, 60:60 + 64])
    return d


def graph_counts(model=None) -> dict:
    """The counts of an INT8 export's non-conv parts that graph tests check, derived from the
    network (the full variant by default), never typed in. `tanh_tables`: each gated encoder
    quantizes both branches' tanh twice — for its gate (q_ta, q_tb) and for a later concat (q_ca,
    q_cb) — one lookup table (QLinearSigmoid) each; `instance_norms`: the float islands (each a
    DequantizeLinear before, a QuantizeLinear after); `uint8_copies`: nodes that move a quantized
    tensor without arithmetic — each refine block's and fuse's concat, the interleave of each
    up-conv but the merged one (up1: its phases feed delta), and the interleave of delta computed
    on up1's phases; `phase_slices`: tensors that are channels of a wider one — up1's phases (one
    merged conv) and delta's phases (padded to more outputs)."""
    import torch

    from qatie.model.network import PHASES, Fuse, GatedEncoder, Refine, Up, build_model

    model = model if model is not None else build_model(8)
    n = lambda kind: sum(isinstance(m, kind) for m in model.modules())  # noqa: E731
    return {"tanh_tables": sum(len((e.q_ta, e.q_tb, e.q_ca, e.q_cb)) for e in model.modules() if isinstance(e, GatedEncoder)),
            "instance_norms": n(torch.nn.InstanceNorm2d), "uint8_copies": n(Refine) + n(Fuse) + (n(Up) - 1) + 1,
            "phase_slices": len(PHASES) + 1}


def tolerance(key: str):
    """The entry `key` of tests/tolerances.py's TOLERANCES; a dotted key reaches into a nested
    entry ("qat_sim_vs_ort.max_levels")."""
    from tolerances import TOLERANCES

    entry = TOLERANCES
    for part in key.split("."):
        if not isinstance(entry, dict) or part not in entry:
            raise KeyError(f"{key!r} is not an entry of tests/tolerances.py")
        entry = entry[part]
    return entry


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here: some tests stay torch-free)
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(actual, expected, key: str) -> float:
    """kornia-style: `actual` equals `expected` within the tolerance `key` of tests/tolerances.py,
    elementwise. The entry is a number (the largest absolute difference allowed) or a dict with
    `max_abs`, or `abs` and/or `rel` (|actual − expected| ≤ abs + rel·|expected|, as numpy's
    allclose). Numbers, arrays and torch tensors; `expected` may broadcast to `actual`'s shape.
    Fails naming the key, the bound and the measured difference (for arrays: the largest and
    where); returns the largest absolute difference."""
    entry = tolerance(key)
    if isinstance(entry, dict):
        unknown = set(entry) - {"max_abs", "abs", "rel"}
        if unknown or not entry:
            raise KeyError(f"tolerance {key!r} has no max_abs / abs / rel (it has {sorted(entry)}): name its leaf")
        abs_tol, rel_tol = entry.get("max_abs", entry.get("abs", 0.0)), entry.get("rel", 0.0)
    else:
        abs_tol, rel_tol = float(entry), 0.0
    a, e = _as_array(actual), _as_array(expected)
    if np.broadcast_shapes(a.shape, e.shape) != a.shape:
        raise AssertionError(f"{key}: shapes differ: actual {a.shape}, expected {e.shape}")
    e = np.broadcast_to(e, a.shape)
    diff = np.abs(a - e)
    bound = abs_tol + rel_tol * np.abs(e)
    worst = float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else 0.0
    bad = ~(diff <= bound)  # NaN anywhere fails
    if bad.any():
        over = np.where(bad, np.nan_to_num(diff - bound, nan=np.inf), -np.inf)
        i = np.unravel_index(int(np.argmax(over)), a.shape)
        where = f" at {tuple(int(k) for k in i)}" if a.ndim else ""
        rule = f"{abs_tol:.3g}" + (f" + {rel_tol:.3g}·|expected|" if rel_tol else "")
        raise AssertionError(
            f"{key} (tests/tolerances.py): |actual − expected| = {float(diff[i]):.4g}{where} "
            f"(actual {float(a[i]):.8g}, expected {float(e[i]):.8g}) exceeds the bound {rule} = {float(bound[i]):.4g}; "
            f"{int(bad.sum())} of {a.size} values over, largest difference {worst:.4g}")
    return worst


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, cwd=None, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m qatie.cli.main ARGS` in a subprocess; on unexpected failure the output is shown."""
    proc = subprocess.run([sys.executable, "-m", "qatie.cli.main", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"qatie {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def cli():
    return run_cli


@contextmanager
def non_saturating_weights():
    """Quantize weights to −64…64 instead of −127…127 while exporting and simulating (patches the
    QuantSpec where it is read). QuantSpec v3's pair-safe weights are exact in the layout the
    exporter writes (after its graph passes); with |w| ≤ 64 no pair can saturate in *any* layout,
    which tests that export without the passes (or regroup products) need on every CPU
    (derivation: tests/tolerances.py)."""
    import dataclasses

    import qatie.export.to_onnx
    import qatie.model.quant
    from tolerances import NON_SATURATING_WEIGHT_MAX as wmax

    spec = dataclasses.replace(qatie.model.quant.SPEC, weight_qmin=-wmax, weight_qmax=wmax)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qatie.model.quant, "SPEC", spec)
        mp.setattr(qatie.export.to_onnx, "SPEC", spec)
        yield spec


@contextmanager
def saturating_weights():
    """Export as QuantSpec v2 did — nearest level at max|w| / 127, no pair limit — so a model can
    saturate the int16 pair sums of CPUs without VNNI: a model from elsewhere (an upload), for the
    tests of detecting and reporting it."""
    import torch

    import qatie.export.to_onnx
    from qatie.model.quant import SPEC

    def v2_levels(w):
        scale = (torch.clamp(w.detach().abs().flatten(1).amax(1), min=1e-12) / SPEC.weight_qmax).float()
        return torch.clamp(torch.round(w / scale.reshape(-1, 1, 1, 1)), SPEC.weight_qmin, SPEC.weight_qmax), scale

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qatie.export.to_onnx, "weight_levels", v2_levels)
        yield


def assert_exact_on_every_cpu(path) -> None:
    """The invariant every INT8 model QATIE writes keeps (QuantSpec v3), from its weights alone:
    no weight pair that can saturate, in the file's layout, in the graph ONNX Runtime runs, and
    as the sidecar recorded it at export — so on every CPU its output is the exact integer result."""
    import json
    from pathlib import Path

    from qatie.runtime.int8_reference import int_convs, runtime_saturable_pairs, saturable_pairs

    path = Path(path)
    assert int_convs(path), f"{path.name} has no INT8 convs"
    assert saturable_pairs(path) == 0, f"{path.name}: {saturable_pairs(path)} saturable weight pairs (file layout)"
    assert runtime_saturable_pairs(path) == 0, f"{path.name}: saturable weight pairs in ONNX Runtime's graph"
    side = path.with_suffix(".json")
    if side.is_file():
        assert json.loads(side.read_text())["saturable_pairs"] == 0, f"{side.name} records saturable pairs"


def random_model(width: int = 8, seed: int = 0):
    """A small network with every weight random (the delta conv too: not the identity)."""
    import torch

    from qatie.model.network import build_model

    torch.manual_seed(seed)
    m = build_model(width)
    torch.nn.init.normal_(m.delta.weight, std=0.05)
    return m.eval()


def optimized_nodes(path, tmp_path) -> list:
    """The nodes of the graph ONNX Runtime actually runs for `path` (its optimized model)."""
    import onnx
    import onnxruntime as ort

    from qatie.runtime.enhancer import session_options

    out = tmp_path / (path.stem + "_opt.onnx")
    ort.InferenceSession(str(path), session_options(1, str(out)), providers=["CPUExecutionProvider"])
    return list(onnx.load(str(out)).graph.node)


def conv_counts(model=None) -> dict:
    """The conv counts graph tests check, derived from the network (the full variant by default),
    never typed in. `convs`: its convolutions (module names); `up_convs`: those exported as one
    2×2 conv per output phase (`qatie.model.network.Up`); `onnx`: the exported graph's convs (an up-conv
    counts once per phase); `int8`: the integer convs ONNX Runtime runs after graph_opt, which
    merges the phase convs of `merged_up` (the up-conv that feeds delta) back into one."""
    from qatie.model.network import PHASES, Up, build_model

    model = model if model is not None else build_model(8)
    names = {m: n for n, m in model.named_modules()}
    ups = [f"{n}.conv" for n, m in model.named_modules() if isinstance(m, Up)]
    per_up = len(PHASES) - 1  # extra convs per up-conv
    onnx_convs = len(model.convs()) + per_up * len(ups)
    return {"convs": sorted(names[c] for c in model.convs()), "up_convs": ups, "onnx": onnx_convs,
            "int8": onnx_convs - per_up, "merged_up": f"{names[model.up1]}.conv", "phases": len(PHASES)}
