"""The box: untrusted work (decoding an uploaded photo with its metadata, loading and running an
uploaded model) runs in a worker process with hard limits, so a bomb can only kill a worker.

* A worker is a fresh Python process (`_serve`) that has imported only what the work needs
  (numpy, Pillow, ONNX Runtime — no Gradio, no server state). Its first message sets its limits:
  `RLIMIT_AS` (address space above what the imports mapped) and `RLIMIT_CPU`; then it runs jobs
  `(fn, args, kwargs)` one after the other until its pipe closes.
* `Box` leases one worker for one request and kills it when the request ends: whatever the
  upload did to that process's memory is returned to the system with it.
* Spare workers are started ahead (`config.BOX_SPARES`, replenished when a box closes, once no heavy
  request runs: a start never competes with a timed model pass), so a
  request does not wait for the imports.
* Results come back through a restricted unpickler: plain values and numpy arrays only, never an
  arbitrary class — a worker whose memory an upload corrupted cannot run code in the server.
  A `QatieError` raised in the worker is re-raised in the server as the same class and message.

`config.BOX_MEMORY_MB` and `config.BOX_CPU_S` are the limits; the wall-clock limit of each call
is the request's deadline (`app.boundary.guard`), enforced by killing the worker.
"""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import weakref

from qatie.errors import QatieError

from app import config

log = logging.getLogger("qatie.app")

#: What a worker imports before it waits for work (what decoding and running models use).
PRELOAD = ("numpy", "PIL.Image", "onnxruntime", "qatie.imageio", "qatie.runtime.enhancer")
#: Exception classes a worker may send back (re-raised in the server with their message).
ERRORS = {
    ("qatie.errors", "QatieError"), ("qatie.errors", "ImageReadError"), ("qatie.errors", "ModelFileError"),
    ("app.boundary.uploads", "AppInputError"), ("app.boundary.guard", "DeadlineError"),
}
#: The only globals a worker's result may name: what numpy's arrays and scalars pickle to.
_NUMPY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class BoxError(QatieError):
    """The worker was stopped by a limit or died (message shown to the user as is)."""


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------

def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _apply_limits(memory_mb: float, cpu_s: float) -> None:
    import resource

    if memory_mb > 0:
        limit = _vm_bytes() + int(memory_mb * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_s > 0:
        used = sum(os.times()[:2])
        soft = int(used + cpu_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))  # SIGXCPU at soft, SIGKILL at hard


def _error_result(exc: BaseException):
    cls = type(exc)
    if (cls.__module__, cls.__name__) in ERRORS:
        return ("raise", cls.__module__, cls.__name__, str(exc))
    if isinstance(exc, QatieError):
        return ("raise", "qatie.errors", "QatieError", str(exc))
    if isinstance(exc, MemoryError) or any(m in str(exc) for m in ("bad_alloc", "Failed to allocate memory")):
        return ("memory",)  # Python's, or ONNX Runtime's C++ allocation failure under RLIMIT_AS
    import traceback

    traceback.print_exc()  # the server log (stderr) has the details; the user gets the type
    return ("error", cls.__name__)


def _serve() -> None:
    """Worker main loop: limits first, then jobs until the server closes the pipe."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    source = sys.stdin.buffer
    channel = os.fdopen(os.dup(1), "wb")  # results go here; anything the work prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    limited = False
    while True:
        try:
            job = pickle.load(source)
        except (EOFError, pickle.UnpicklingError):
            os._exit(0)
        if not limited:
            _apply_limits(*job)
            limited = True
            continue
        fn, args, kwargs = job
        try:
            result = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 — everything goes back to the server
            result = _error_result(exc)
        try:
            pickle.dump(result, channel, protocol=5)
        except MemoryError:
            pickle.dump(("memory",), channel)
        channel.flush()


# --------------------------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------------------------

class _ResultUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a worker result may not name {module}.{name}")


def _load_result(stream):
    return _ResultUnpickler(stream).load()


def _start_worker() -> subprocess.Popen:
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(config.REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    return subprocess.Popen([sys.executable, "-c", "from app.boundary.box import _serve; _serve()"], cwd=config.REPO_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env,
                            start_new_session=True)


_spares: list[subprocess.Popen] = []
_spares_lock = threading.Lock()
_filling = threading.Lock()


def _take_worker() -> subprocess.Popen:
    with _spares_lock:
        while _spares:
            proc = _spares.pop()
            if proc.poll() is None:
                return proc
            _close_pipes(proc)
    return _start_worker()


def _close_pipes(proc: subprocess.Popen) -> None:
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass


#: A spare worker's start (its imports: ~0.3 s of one core) waits while heavy requests run — at
#: most this long — so it never runs beside a model pass being timed (it made the FP32 pass that
#: follows a photo's decoding 0.2 s slower). One spare is still there for the next request.
REFILL_WAIT_S = 30.0


def _wait_until_idle(limit_s: float = REFILL_WAIT_S) -> None:
    import time

    from app.boundary.slots import SLOTS

    end = time.monotonic() + limit_s
    while SLOTS.busy() and time.monotonic() < end:
        time.sleep(0.2)


def replenish() -> None:
    """Start spare workers up to `config.BOX_SPARES` (in the background, once no heavy request runs)."""
    def fill():
        if not _filling.acquire(blocking=False):  # one filler at a time: never more than BOX_SPARES
            return
        try:
            _wait_until_idle()
            with _spares_lock:
                _spares[:] = [p for p in _spares if p.poll() is None]
                missing = config.BOX_SPARES - len(_spares)
            for _ in range(max(0, missing)):
                proc = _start_worker()
                with _spares_lock:
                    _spares.append(proc)
        finally:
            _filling.release()

    threading.Thread(target=fill, name="qatie-box-spares", daemon=True).start()


def live_workers() -> int:
    """Workers started and not yet ended (spares included)."""
    with _spares_lock:
        return sum(p.poll() is None for p in _spares) + sum(b.alive() for b in list(_open_boxes))


_open_boxes: "weakref.WeakSet[Box]" = weakref.WeakSet()  # weak: an abandoned box's __del__ still ends its worker


class Box:
    """One worker for one request: `call(fn, *args, seconds=…)` runs module-level `fn` in it.
    Use as a context manager (or call `close`): the worker is killed when the request ends."""

    def __init__(self, what: str, memory_mb: float | None = None, cpu_s: float | None = None):
        self.what = what
        self.memory_mb = config.BOX_MEMORY_MB if memory_mb is None else memory_mb
        self.cpu_s = config.BOX_CPU_S if cpu_s is None else cpu_s
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _send(self, obj) -> None:
        pickle.dump(obj, self.proc.stdin, protocol=5)
        self.proc.stdin.flush()

    def call(self, fn, *args, seconds: float, timeout_error: QatieError | None = None, **kwargs):
        """`fn(*args, **kwargs)` in the worker; its result, or its QatieError re-raised here.
        Killed after `seconds` (→ `timeout_error`, or a DeadlineError naming `what`) or when a
        limit stops it (→ BoxError). A killed worker is replaced on the next call."""
        from app.boundary.guard import DeadlineError, deadline_message

        with self.lock:
            if not self.alive():
                self.proc = _take_worker()
                _open_boxes.add(self)
                try:
                    self._send((self.memory_mb, self.cpu_s))
                except OSError:
                    pass  # reported below as a worker that died
            proc = self.proc
            fired = threading.Event()

            def kill():
                fired.set()
                proc.kill()

            timer = threading.Timer(max(0.0, seconds), kill)
            timer.daemon = True
            timer.start()
            try:
                try:
                    self._send((fn, args, kwargs))
                    result = _load_result(proc.stdout)
                except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
                    proc.kill()  # a worker that sent something unreadable is not trusted with more
                    proc.wait()
                    _close_pipes(proc)
                    if fired.is_set():
                        raise (timeout_error or DeadlineError(deadline_message(self.what, seconds))) from None
                    raise self._died(proc.returncode, exc) from None
            finally:
                timer.cancel()
        status = result[0]
        if status == "ok":
            return result[1]
        if status == "raise":
            raise _error_class(result[1], result[2])(result[3])
        if status == "memory":
            raise BoxError(f"{self.what} needed more than the {self.memory_mb:.0f} MB of memory allowed for one "
                           "request on this public demo and was stopped")
        raise QatieError(f"{self.what} failed ({result[1]}); the server log has the details")

    def _died(self, code: int | None, exc: BaseException) -> BoxError:
        import signal

        if isinstance(exc, pickle.UnpicklingError):
            log.warning("box: refused a worker result: %s", exc)
        if code == -signal.SIGXCPU:
            return BoxError(f"{self.what} used more than {self.cpu_s:.0f} s of CPU time, the limit for one request "
                            "on this public demo, and was stopped")
        return BoxError(f"{self.what} stopped unexpectedly (exit status {code}): it most likely needed more than "
                        f"the {self.memory_mb:.0f} MB of memory allowed for one request on this public demo")

    def close(self) -> None:
        with self.lock:
            proc, self.proc = self.proc, None
        _open_boxes.discard(self)
        if proc is not None:
            proc.kill()
            proc.wait()
            _close_pipes(proc)
            replenish()

    def __enter__(self) -> "Box":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a request abandoned without close(): the worker still goes
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


def _error_class(module: str, name: str) -> type:
    import importlib

    if (module, name) not in ERRORS:
        return QatieError
    return getattr(importlib.import_module(module), name)


def run(fn, *args, seconds: float, what: str, memory_mb: float | None = None, **kwargs):
    """One call in a worker of its own, ended afterwards."""
    with Box(what, memory_mb=memory_mb) as box:
        return box.call(fn, *args, seconds=seconds, **kwargs)

