"""The app as a subprocess on a free localhost port: what the API, browser and hostile tests and
`python -m app.measure` launch (`AppServer`), and the RSS of it with its worker processes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from qatie.paths import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except Exception:
        return 0


class AppServer:
    """`python app.py` in a subprocess on localhost:PORT; waits until the page is usable."""

    def __init__(self, port: int | None = None, env: dict | None = None, timeout: float = 120.0,
                 log_path: str | os.PathLike | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.timeout = timeout
        self.extra_env = env or {}
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="qatie-app-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __enter__(self) -> "AppServer":
        env = dict(os.environ)
        env.update({"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                    "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.extra_env)
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py")], cwd=REPO_ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = t0 + self.timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log()}")
            if _get(self.url) == 200 and _get(self.url + "config") == 200:
                self.startup_s = time.perf_counter() - t0
                return self
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"app not up after {self.timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` and all its children (the box's workers), in MiB."""
    import psutil

    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2 ** 20


