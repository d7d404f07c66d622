"""Run a command as if this x86-64 CPU had AVX2 and no AVX-512 or VNNI — at native speed.

ONNX Runtime's INT8 kernels differ by CPU (`qatie.runtime.cpu`): on AVX2 without VNNI their pair
sums saturate. To see a model's result on those kernels without such a machine, this masks the
CPU's newer features from CPUID for one process tree (`cpu_mask.c`, preloaded; Linux's CPUID
faulting), so MLAS, XNNPACK and numpy pick their AVX2 kernels. Unlike `qemu-x86_64 -cpu Haswell`
it runs at full speed — the *kernels* are an AVX2 machine's, the core is still this one, so
latencies are this CPU's on AVX2 code, not an older CPU's.

    python -m qatie.runtime.cpu_mask python -m app.measure --runs 3
    python -m qatie.runtime.cpu_mask --check          # which INT8 path a masked process sees

Needs Linux x86-64 with the `cpuid_fault` CPU flag and a C compiler (`cc`); `available()` says
why not where it cannot run."""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from qatie.errors import QatieError
from qatie.paths import cache_dir

SOURCE = Path(__file__).with_name("cpu_mask.c")
#: Set in a masked process's environment: `qatie.runtime.cpu` then ignores the /proc/cpuinfo flags
#: the mask cannot hide (AVX-VNNI, AMX), as CPUID no longer reports them.
MASKED_ENV = "QATIE_CPU_MASKED"


def unavailable_reason() -> str | None:
    """Why the mask cannot run on this machine, or None."""
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the CPU mask needs Linux on x86-64 (this is {sys.platform} on {platform.machine()})"
    from qatie.runtime.cpu import _proc_cpuinfo

    if "cpuid_fault" not in _proc_cpuinfo()[1]:
        return "this CPU (or its hypervisor) offers no CPUID faulting (no 'cpuid_fault' flag in /proc/cpuinfo)"
    if not shutil.which("cc"):
        return "no C compiler ('cc') to build the CPU mask"
    return None


def library() -> Path:
    """The mask's shared library, built once per source version into the cache folder."""
    reason = unavailable_reason()
    if reason:
        raise QatieError(reason)
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    lib = cache_dir() / f"cpu_mask-{digest}.so"
    if not lib.is_file():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise QatieError(f"building the CPU mask failed: {done.stderr.strip()[:500]}")
        tmp.replace(lib)
    return lib


def environment(base: dict | None = None) -> dict:
    """`base` (default: this process's environment) with the mask preloaded."""
    env = dict(os.environ if base is None else base)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library()}{' ' + preload if preload else ''}"
    env[MASKED_ENV] = "avx2"
    return env


def masked_int8_path(python: str = sys.executable) -> str:
    """The INT8 kernel path a masked Python process detects (`qatie.runtime.cpu.int8_path`)."""
    code = "from qatie.runtime.cpu import int8_path; print(int8_path())"
    done = subprocess.run([python, "-c", code], env=environment(), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise QatieError(f"a masked Python process failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        if argv == ["--check"]:
            print(f"masked INT8 path: {masked_int8_path()}")
            return 0
        env = environment()
    except QatieError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return subprocess.call(argv, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
