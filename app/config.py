"""Paths, limits and thread counts of the app — the one place they are chosen.

Everything here can be overridden with environment variables (documented in README's App
section), so a Space, a test or a benchmark can change them without code edits.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
EXAMPLES_DIR = ASSETS / "examples"
CHECKPOINTS = REPO_ROOT / "checkpoints"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def effective_cpus() -> int:
    """CPUs this process may really use: affinity mask and cgroup quota (a Space's 2 vCPU show up
    as a cgroup quota while os.cpu_count() reports the host's cores)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(float(quota) / float(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return max(1, n)


#: ONNX Runtime intra-op threads per session (QATIE_THREADS; default: usable CPUs, at most 2 —
#: the Spaces cpu-basic machine has 2 vCPU and more threads than cores only adds contention).
THREADS = max(1, int(_env_float("QATIE_THREADS", min(2, effective_cpus()))))

#: Uploads above this many megapixels are downscaled (with a notice) unless "full size" is ticked.
MAX_INPUT_MP = _env_float("QATIE_MAX_MP", 2.0)
#: "Full size (tiled)" is refused above this: three models, metrics and PNGs of a bigger photo
#: take minutes and hundreds of MB on a 2-vCPU machine.
FULL_SIZE_MAX_MP = _env_float("QATIE_FULL_SIZE_MAX_MP", 12.0)
#: Shown images are capped at this size (full-size results are offered as downloads instead).
DISPLAY_MAX_MP = MAX_INPUT_MP
#: Longest side / shortest side the app accepts (panoramas up to 10:1; a 16×100000 strip is
#: refused with a message instead of costing gigabytes in padding and figures).
MAX_ASPECT = max(1.0, _env_float("QATIE_MAX_ASPECT", 10.0))
#: Smallest side the app accepts (the network downsamples 8× internally).
MIN_SIDE = 16
#: Tiles for full-size processing (pixels, overlap): big tiles keep InstanceNorm statistics close
#: to whole-image ones.
TILE = max(64, int(_env_float("QATIE_TILE", 1024)))
TILE_OVERLAP = min(64, TILE // 8)
#: Latency shown = median of this many timed passes per model (the first is the pass that
#: produced the outputs; the rest stream in afterwards).
TIMING_RUNS = max(1, int(_env_float("QATIE_TIMING_RUNS", 3)))
#: Upload size limit handed to Gradio.
MAX_FILE_SIZE = os.environ.get("QATIE_MAX_FILE_SIZE", "200mb")

#: Per-process scratch space (request folders, trained models, cached examples), removed when the
#: app exits: always a fresh folder of its own, inside QATIE_APP_WORK_DIR (default: the temp dir).
WORK_DIR = Path(os.environ.get("QATIE_APP_WORK_DIR") or tempfile.gettempdir()) / f"qatie-app-{os.getpid()}"


def work_dir(*parts: str) -> Path:
    path = WORK_DIR.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
