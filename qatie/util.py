"""Small helpers every stage shares: content hashes, atomic writes, strict JSON, an LRU."""
from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np


def sha256(path) -> str:
    """SHA-256 of a file's content (hex), read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha(path, n: int = 16) -> str:
    """A short content hash: part of cache keys, so a changed file is never served stale."""
    return sha256(Path(path))[:n]


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' (H×W, height first — the order NCHW/NHWC dims and the authors' file names
    use; 'x', 'X' or '×') → (1920, 1080)."""
    from qatie.errors import QatieError

    parts = str(text).lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise QatieError(f"size {text!r} is not HxW (e.g. 1920x1080, height first)") from None
    if h < 1 or w < 1:
        raise QatieError(f"size {text!r} must be at least 1x1")
    return h, w


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`: a reader
    (or a crash) never sees half a file. The temporary name keeps the suffix (image writers and
    ONNX read it) and carries the process and thread, so concurrent writers do not collide."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def jsonable(obj):
    """A copy of `obj` safe for strict JSON: non-finite floats (an exact match's inf PSNR) → None."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


class LRU:
    """A thread-safe least-recently-used map of at most `max_items` entries (and, when `size`
    is given, at most `max_bytes` by that measure). Evicted values are passed to `on_evict`."""

    def __init__(self, max_items: int, max_bytes: float = math.inf, size: Callable[[object], int] | None = None,
                 on_evict: Callable[[object, object], None] | None = None):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._size, self._on_evict = size, on_evict
        self._items: "OrderedDict[object, object]" = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key, default=None):
        with self.lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self.lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items or (len(self._items) > 1 and self.nbytes() > self.max_bytes):
                old_key, old = self._items.popitem(last=False)
                if self._on_evict:
                    self._on_evict(old_key, old)

    def nbytes(self) -> int:
        with self.lock:
            return sum(self._size(v) for v in self._items.values()) if self._size else 0

    def clear(self) -> None:
        with self.lock:
            self._items.clear()

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)
