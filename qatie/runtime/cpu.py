"""Which integer kernels ONNX Runtime's MLAS runs for our INT8 convs on this CPU — and whether
they compute the exact int32 sum.

Our QLinearConvs are U8S8 (uint8 activations × int8 weights). MLAS picks its U8S8 kernels from
the CPU's features (onnxruntime/core/mlas/lib/platform.cpp, same order as below):

* ``avx2`` — VPMADDUBSW multiplies u8 × s8 and adds each *pair* of adjacent products into a
  **saturating int16** before the int32 sum: when both activations of a pair are large and both
  weights are large with the same sign (|a0·w0 + a1·w1| > 32767) the sum is clipped. Not exact.
* ``avx-vnni`` — VPDPBUSDS sums four products straight into int32 (it saturates only at the
  int32 limits, far beyond any conv here): exact.
* ``avx512-core`` — AVX-512BW without VNNI: VPMADDUBSW again (512-bit). Not exact.
* ``avx512-vnni`` — VPDPBUSD(S): exact. ``amx`` — AMX-INT8 tiles for GEMMs (convs with
  channels that fit MLAS's symmetric-conv kernel still run on AVX-512 VNNI): exact.
* ``neon``, ``neon-dot``, ``neon-i8mm`` (ARM64): widening multiplies / dot products into int32:
  exact. ``sse`` (x86 without AVX2) and anything else: reported, exactness not established.

Feature flags come from numpy's run-time CPU detection (CPUID + XGETBV: right under an emulator
such as ``qemu-x86_64 -cpu Haswell`` and when the OS has not enabled AVX-512 state) and, for
features numpy does not know (AVX-VNNI, AMX, I8MM), from /proc/cpuinfo. No torch, no onnxruntime.
"""
from __future__ import annotations

import functools
import os
import platform
from typing import Optional

#: Paths whose U8S8 kernels clip pair sums to int16 (VPMADDUBSW); see `qatie.runtime.int8_reference`.
SATURATING = frozenset({"avx2", "avx512-core"})
#: Paths whose U8S8 kernels accumulate every product exactly in int32.
EXACT = frozenset({"avx512-vnni", "amx", "avx-vnni", "neon", "neon-dot", "neon-i8mm"})

# numpy's feature name → the Linux /proc/cpuinfo flag it decides
_NUMPY_FLAGS = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512DQ": "avx512dq", "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni",
                "ASIMD": "asimd", "ASIMDDP": "asimddp"}


def _proc_cpuinfo() -> tuple[Optional[str], set[str]]:
    """(model name, flags) from /proc/cpuinfo; (None, set()) where there is none."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and name is None:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            return {}
    return dict(feats)


def masked() -> bool:
    """This process runs under `qatie.runtime.cpu_mask` (AVX-512, VNNI and AMX hidden from CPUID)."""
    return os.environ.get("QATIE_CPU_MASKED") == "avx2" and "cpu_mask" in os.environ.get("LD_PRELOAD", "")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's features as Linux flag names: numpy's run-time detection wins for the features
    it knows; /proc/cpuinfo adds the others (avx_vnni, amx_int8, amx_tile, i8mm)."""
    _, flags = _proc_cpuinfo()
    if masked():  # CPUID hides these too
        flags -= {"avx_vnni", "amx_int8", "amx_tile", "amx_bf16"}
    for np_name, flag in _NUMPY_FLAGS.items():
        detected = _numpy_features().get(np_name)
        if detected is True:
            flags.add(flag)
        elif detected is False:
            flags.discard(flag)
    return frozenset(flags)


def int8_path(flags: Optional[set[str]] = None, machine: Optional[str] = None) -> str:
    """The MLAS U8S8 kernel family ONNX Runtime uses on a CPU with these features (see the module
    docstring); `flags`/`machine` default to this machine's."""
    flags = cpu_flags() if flags is None else set(flags)
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if not {"avx2", "fma"} <= flags:
            return "sse"
        path = "avx-vnni" if "avx_vnni" in flags else "avx2"
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
            path = "avx512-vnni" if "avx512_vnni" in flags else "avx512-core"
        if {"amx_int8", "amx_tile"} <= flags:
            path = "amx"
        return path
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "neon-i8mm"
        return "neon-dot" if ("asimddp" in flags or machine == "arm64") else "neon"
    return machine or "unknown"


def int8_exact(path: str) -> Optional[bool]:
    """True: the U8S8 kernels sum exactly in int32; False: pair sums saturate to int16; None: not established."""
    return True if path in EXACT else False if path in SATURATING else None


def cpu_name() -> Optional[str]:
    """The CPU's model name — marked when `qatie.runtime.cpu_mask` hides its newer features, so a
    figure measured that way never passes for the CPU's own."""
    name, _ = _proc_cpuinfo()
    name = name or platform.processor() or None
    if name and masked():
        name += " (AVX-512/VNNI hidden: qatie.runtime.cpu_mask)"
    return name


def machine_summary(threads: Optional[int] = None) -> dict:
    """{cpu, threads, int8_path, int8_exact}: what a latency or parity figure was measured on."""
    path = int8_path()
    return {"cpu": cpu_name(), "threads": threads if threads is not None else os.cpu_count(),
            "int8_path": path, "int8_exact": int8_exact(path)}


def describe(summary: Optional[dict] = None) -> str:
    """One line for people: 'AMD EPYC, 2 threads, INT8 kernels: avx512-vnni (exact int32 sums)'."""
    s = summary or machine_summary()
    exact = {True: "exact int32 sums", False: "int16 pair sums saturate", None: "exactness not established"}
    n = s.get("threads")
    threads = f", {n} thread{'s' if n != 1 else ''}" if n else ""
    return f"{s.get('cpu') or 'CPU'}{threads}, INT8 kernels: {s['int8_path']} ({exact[s.get('int8_exact')]})"
