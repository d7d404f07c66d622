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
#: How long the authors' tiles run before LiteRT's interpreter is loaded: the load holds Python's
#: GIL for ~0.2 s, which stalls the serving of the three outputs' files just sent (measured on a
#: 2-core AMD EPYC: 0.24 s to fetch them instead of 0.03 s); a tile holds it for well under 1 ms.
HEAD_START_S = 0.3


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
    """Queue the pictures' background work on `pool`: the authors' tiles for `HEAD_START_S`, then
    LiteRT's single run, then the authors' tiles left — which the request's thread joins once the
    analysis is done (`authors.Beside.finish`), so both cores stay busy until the last picture is
    in, and LiteRT's one unsplittable run is not what the visitor waits for at the end."""
    tiles, whole = pictures.get("authors"), pictures.get("litert")
    if tiles is not None:
        pool.submit(tiles.background, time.perf_counter() + HEAD_START_S if whole is not None else None)
    if whole is not None:
        pool.submit(whole.background)
        if tiles is not None:
            pool.submit(tiles.background)
