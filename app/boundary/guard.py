"""Deadlines for heavy work — enforced by something that can stop it, not by hoping it ends.

* `Deadline`: a watchdog timer per request. Model runs inside `deadline.onnx()` use its ONNX
  Runtime `RunOptions`; when the timer fires it sets `terminate`, ORT abandons the run at its
  next node, and the caller gets a `DeadlineError` with a clear message. Python-side steps
  between runs call `deadline.check()`.
* `run_in_child`: work that is not ONNX Runtime (the Inspect panel builds PTQ models with
  torch) runs in a child process that is killed when its deadline passes.

Gradio's own `time_limit` does not stop a click handler that is busy in C code, which is why
these exist. Heavy work shares Gradio's `concurrency_id` `HEAVY` (admission, `config.HEAVY_ADMIT`)
and then `app.boundary.slots` (who runs, `config.HEAVY_SLOTS` at a time, visitors in turn).
"""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar

from qatie.errors import QatieError

from app import config

HEAVY = "heavy"  # the concurrency_id every heavy event shares


class DeadlineError(QatieError):
    """Heavy work ran past its deadline and was stopped (message shown to the user as is)."""


def public_text(msg: str) -> str:
    """A message without server internals: absolute paths (uploads, scratch, library sources)
    become <path>, ONNX Runtime's C++ locations are dropped."""
    msg = re.sub(r"\s*/onnxruntime_src/\S+", "", msg)
    return re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+[\w.+-]*", "<path>", msg)


def deadline_message(what: str, seconds: float) -> str:
    return (f"{what} was stopped after {seconds:.0f} s — the time limit for one request on this public demo. "
            "Try again with a smaller photo or lighter settings.")


#: A run config that hands the session's arena memory back after each run. Without it the three
#: shipped sessions each keep an arena sized for the largest photo they ever saw (2.9 GB RSS after
#: three 2-MP runs, measured); with it RSS returns to ~0.3 GB and the runs were no slower.
SHRINK = ("memory.enable_memory_arena_shrinkage", "cpu:0")


def shrinking_options():
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry(*SHRINK)
    return options


_ACTIVE: ContextVar["Deadline | None"] = ContextVar("qatie_deadline", default=None)


def active_deadline() -> "Deadline | None":
    """The deadline of the `Deadline.onnx()` block running now (work in the box takes its time
    limit from it)."""
    return _ACTIVE.get()


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (glibc's `malloc_trim`). A request's numpy
    arrays are freed when it ends, but glibc keeps the pages of its per-thread arenas: after 12
    concurrent 1-MP compares the server stayed at 964 MB instead of ~420 (measured)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class Deadline:
    """A watchdog for one request: `seconds` from now it terminates the ONNX Runtime runs started
    in `onnx()` blocks and makes `check()` raise."""

    def __init__(self, seconds: float, what: str, shrink: bool = True):
        import onnxruntime as ort

        self.seconds = float(seconds)
        self.what = what
        self.end = time.monotonic() + self.seconds
        self.options = ort.RunOptions()
        self.plain = ort.RunOptions()  # for sessions without an arena (uploaded models)
        if shrink:  # see `SHRINK`
            self.options.add_run_config_entry(*SHRINK)
        self.fired = threading.Event()
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def extend(self, extra_s: float) -> None:
        """Allow `extra_s` more seconds (once the size of the work is known)."""
        if self.fired.is_set() or extra_s <= 0:
            return
        self._timer.cancel()
        self.seconds += extra_s
        self.end += extra_s
        self._timer = threading.Timer(max(0.0, self.end - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        self.options.terminate = True
        self.plain.terminate = True

    def error(self) -> DeadlineError:
        return DeadlineError(deadline_message(self.what, self.seconds))

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def check(self) -> None:
        if self.fired.is_set() or time.monotonic() >= self.end:
            self._fire()
            raise self.error()

    @contextmanager
    def onnx(self):
        """Model runs in this block stop when the deadline fires (→ DeadlineError)."""
        from qatie.runtime.enhancer import run_options_scope

        self.check()
        token = _ACTIVE.set(self)
        try:
            with run_options_scope(self.options, self.plain):
                yield self
        except DeadlineError:
            raise
        except Exception:
            if self.fired.is_set():
                raise self.error() from None
            raise
        finally:
            _ACTIVE.reset(token)
        self.check()

    def cancel(self) -> None:
        """Stop the watchdog and any run still using these options (the request is over)."""
        self._timer.cancel()
        self.options.terminate = True
        self.plain.terminate = True

    def __enter__(self) -> "Deadline":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


# --------------------------------------------------------------------------------------------
# A killable child process
# --------------------------------------------------------------------------------------------

def _child() -> None:
    """Child side of `run_in_child`: unpickle (fn, args, kwargs) from stdin, pickle the result."""
    fn, args, kwargs = pickle.load(sys.stdin.buffer)
    channel = os.fdopen(os.dup(1), "wb")  # the result goes here; anything the work prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        result = ("ok", fn(*args, **kwargs))
    except QatieError as exc:
        result = ("user", str(exc))
    except MemoryError:
        result = ("user", "out of memory")
    except BaseException as exc:  # reported by the parent; details stay in this (server) log
        import traceback

        traceback.print_exc()
        result = ("error", type(exc).__name__)
    pickle.dump(result, channel)
    channel.flush()
    os._exit(0)  # no waiting on the work's leftover threads


def run_in_child(fn, *args, seconds: float, what: str, **kwargs):
    """`fn(*args, **kwargs)` in a fresh Python process, killed after `seconds` (DeadlineError).
    `fn` must be importable (module level); arguments and result are pickled. QatieErrors come
    back with their message; anything else as a short 'failed' message."""
    payload = pickle.dumps((fn, args, kwargs))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(config.REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               QATIE_CACHE_DIR=str(config.analysis_cache()))
    proc = subprocess.Popen([sys.executable, "-c", "from app.boundary.guard import _child; _child()"], cwd=config.REPO_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env)
    try:
        out, _ = proc.communicate(payload, timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DeadlineError(deadline_message(what, seconds)) from None
    finally:
        if proc.poll() is None:  # the request was abandoned (GeneratorExit, KeyboardInterrupt…)
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not out:
        raise QatieError(f"{what} stopped unexpectedly (exit status {proc.returncode}; out of memory?)")
    status, value = pickle.loads(out)
    if status == "ok":
        return value
    if status == "user":
        raise QatieError(value)
    raise QatieError(f"{what} failed ({value}); the server log has the details")
