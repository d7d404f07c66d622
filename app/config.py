"""Paths, limits and thread counts of the app — the one place they are chosen.

Everything here can be overridden with environment variables (documented in docs/app.md,
"Settings"), so a Space, a test or a benchmark can change them without code edits.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from qatie.paths import REPO_ROOT

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
#: …as long as the compare's stream ends within this many seconds: a round of three passes is
#: timed only when it fits (a 2-core machine without VNNI fits none for a 1-MP photo; one with
#: VNNI fits both extra rounds).
TIMING_BUDGET_S = _env_float("QATIE_TIMING_BUDGET_S", 6.0)
#: Heavy requests (compare, benchmark, training, the Inspect panel) that run at once, all kinds
#: together: one Gradio concurrency group (`app.boundary.guard.HEAVY`). A 2-vCPU Space gains nothing from
#: more, and training holds one slot for its whole run.
HEAVY_SLOTS = max(1, int(_env_float("QATIE_HEAVY_SLOTS", 2)))
#: Heavy requests Gradio lets in at once; beyond the slots they wait in `app.boundary.slots`, which serves
#: visitors in turn (Gradio's own queue is first-come-first-served), for at most SLOT_WAIT_S.
HEAVY_ADMIT = max(HEAVY_SLOTS, int(_env_float("QATIE_HEAVY_ADMIT", 32)))
SLOT_WAIT_S = _env_float("QATIE_SLOT_WAIT_S", 600.0)
#: Deadlines (seconds) enforced by `app.boundary.guard`: a compare (a base plus a share per megapixel: a
#: 12-MP tiled compare is ~30 s on an idle 2 vCPU and was measured several times slower on a busy
#: one), a benchmark, the Inspect panel's quick (analysis, histogram) and slow (calibration
#: methods, mixed precision: they build PTQ models) handlers.
COMPARE_DEADLINE_S = _env_float("QATIE_COMPARE_DEADLINE_S", 120.0)
COMPARE_DEADLINE_PER_MP_S = _env_float("QATIE_COMPARE_DEADLINE_PER_MP_S", 20.0)  # added per megapixel processed
BENCH_DEADLINE_S = _env_float("QATIE_BENCH_DEADLINE_S", 300.0)
INSPECT_DEADLINE_S = _env_float("QATIE_INSPECT_DEADLINE_S", 60.0)
INSPECT_BUILD_DEADLINE_S = _env_float("QATIE_INSPECT_BUILD_DEADLINE_S", 300.0)
#: Uploaded models: file size (qatie's are 1–4 MB).
MAX_MODEL_MB = _env_float("QATIE_MAX_MODEL_MB", 32.0)
#: Example results kept for replay (each holds its images in memory — about 13 MB for the bundled
#: examples — and on disk): the four examples plus a few 'simulate' seeds.
EXAMPLE_CACHE_MAX = max(1, int(_env_float("QATIE_EXAMPLE_CACHE", 8)))
#: Upload size limit handed to Gradio.
MAX_FILE_SIZE = os.environ.get("QATIE_MAX_FILE_SIZE", "200mb")

#: Per-process scratch space (request folders, trained models, cached examples), removed when the
#: app exits: always a fresh folder of its own, inside QATIE_APP_WORK_DIR (default: the temp dir),
#: named by a random token (no process id in any path a user might see).
WORK_ROOT = Path(os.environ.get("QATIE_APP_WORK_DIR") or tempfile.gettempdir())
WORK_DIR = WORK_ROOT / f"qatie-app-{uuid.uuid4().hex[:12]}"
_WORK_LOCK = None


def claim_work_dir() -> list[Path]:
    """Lock this process's scratch folder (a lock released by the kernel when the process dies,
    however it dies) and remove the folders of app processes that are gone — a crash or a kill
    leaves its scratch behind. Returns the folders removed."""
    import fcntl
    import shutil

    global _WORK_LOCK
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    if _WORK_LOCK is None:
        _WORK_LOCK = open(WORK_DIR / ".lock", "w")
        fcntl.flock(_WORK_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB)
    removed = []
    for d in WORK_ROOT.glob("qatie-app-*"):
        if d == WORK_DIR or not d.is_dir():
            continue
        lock = d / ".lock"
        if lock.is_file():
            with open(lock, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its app is running
        else:  # older layout: qatie-app-<pid>
            pid = d.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


#: The Inspect panel's built models (PTQ variants, sensitivity rankings): their folder and cap.
ANALYSIS_CACHE_MB = _env_float("QATIE_ANALYSIS_CACHE_MB", 200.0)


def analysis_cache() -> Path:
    """QATIE_CACHE_DIR if set, else a folder in this process's scratch space."""
    path = Path(os.environ.get("QATIE_CACHE_DIR") or WORK_DIR / "analysis")
    path.mkdir(parents=True, exist_ok=True)
    return path


def prune(folder: Path, max_mb: float) -> None:
    """Delete the least recently modified files (and emptied folders) under `folder` until it
    holds at most `max_mb` megabytes."""
    files = []
    for p in Path(folder).rglob("*"):
        try:
            if p.is_file():
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        except OSError:
            pass
    total = sum(f[1] for f in files)
    for _, size, p in sorted(files, key=lambda f: f[0]):
        if total <= max_mb * 1e6:
            break
        p.unlink(missing_ok=True)
        total -= size
        parent = p.parent
        while parent != Path(folder) and Path(folder) in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def work_dir(*parts: str) -> Path:
    path = WORK_DIR.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

#: The box for untrusted work (`app.boundary.box`): memory (MB of address space above a worker's imports)
#: and CPU seconds one request's worker may use, and how many workers wait ready.
BOX_MEMORY_MB = _env_float("QATIE_BOX_MEMORY_MB", 1536.0)
BOX_CPU_S = _env_float("QATIE_BOX_CPU_S", 600.0)
BOX_SPARES = max(0, int(_env_float("QATIE_BOX_SPARES", 2)))
#: Upload quotas (`app.boundary.upload_quota`): MB one visitor, and all visitors together, may upload per
#: window of this many seconds.
UPLOAD_QUOTA_MB = _env_float("QATIE_UPLOAD_QUOTA_MB", 400.0)
UPLOAD_TOTAL_MB = _env_float("QATIE_UPLOAD_TOTAL_MB", 3000.0)
UPLOAD_WINDOW_S = _env_float("QATIE_UPLOAD_WINDOW_S", 3600.0)
