"""The one background thread a comparison computes its extra pictures on (`handlers.BESIDE`:
the authors' TFLite file, QATIE's QAT-INT8 on LiteRT) while the request's thread runs the
analysis — so the two cores are the analysis's and the pictures' — and the order of their work
on it (`schedule`). The thread runs at a lower priority (`NICE`): the analysis, and the serving of
the output files the visitor is downloading meanwhile, get the cores first."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

#: How much lower the pictures' thread runs than the request's (Linux niceness).
NICE = 10
#: Without the authors' tiles to run first, how long the pictures' thread waits before loading
#: LiteRT's interpreter, so the three outputs' files just sent are served first (the analysis,
#: which the run waits for anyway, takes longer than this).
SERVE_FIRST_S = 0.5


def lower_priority() -> None:
    """Lower the calling thread's priority to the process's + `NICE` (Linux: a thread id is a
    process id to setpriority); elsewhere, or where it is refused, it runs as it is."""
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + NICE)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


def worker() -> ThreadPoolExecutor:
    """A comparison's pictures' thread (shut down by the comparison when it ends)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="qatie-beside", initializer=lower_priority)


def schedule(pool: ThreadPoolExecutor, pictures: dict) -> None:
    """Queue the pictures' background work on `pool`: the authors' tiles — which the request's
    thread joins once the analysis is done (`authors.Beside.finish`), so both cores stay busy —
    then the loading of LiteRT's interpreter, whose run comes after, alone (`litert.Beside.finish`).
    Loading it holds Python's GIL for ~0.2 s, which would stall the serving of the files just sent
    (measured on a 2-core AMD EPYC: the three outputs fetched in 0.24 s instead of 0.03 s): by the
    time the tiles are taken, they have been fetched; without tiles, it waits `SERVE_FIRST_S`."""
    if "authors" in pictures:
        pool.submit(pictures["authors"].background)
    if "litert" in pictures:
        if "authors" not in pictures:
            pool.submit(time.sleep, SERVE_FIRST_S)
        pool.submit(pictures["litert"].background)
