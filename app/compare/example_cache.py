"""The bundled examples' results, kept after their first run and replayed on the next click,
keyed by the example files' contents, the options, the model files' signature and the threads."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from qatie.util import LRU

from app import config, models
from app.compare import pipeline as core


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def example_rows() -> list[list[str]]:
    """[[input, reference], …] for gr.Examples, from assets/examples (empty if absent)."""
    rows = []
    for inp in sorted(config.EXAMPLES_DIR.glob("*_input.png")):
        ref = inp.with_name(inp.name.replace("_input.png", "_reference.png"))
        rows.append([str(inp), str(ref) if ref.is_file() else None])
    return rows


#: Request folders of pinned results (the first view's): never removed with an evicted entry.
_PINNED: set[Path] = set()


def _drop_files(_key, result: dict) -> None:
    shown = result.get("input")
    if isinstance(shown, str) and Path(shown).parent not in _PINNED:  # its request folder holds them all
        shutil.rmtree(Path(shown).parent, ignore_errors=True)


def pin(result: dict) -> None:
    """Keep this result's files for the life of the process (the page-load view serves them)."""
    if isinstance(result.get("input"), str):
        _PINNED.add(Path(result["input"]).parent)


def replay(result: dict) -> dict:
    """A kept result (a Compare update by output name) as one update for another request: the
    notice says where it came from, and the session gets its own copy of the state (the zoom
    writes into it)."""
    update = dict(result)
    update["notice"] = result["notice"] + "\n\n*Example: result cached from its first run (timings from that run).*"
    update["state"] = dict(result["state"])
    return update


_EXAMPLE_SHAS: set[str] | None = None
#: Results of the bundled examples, least recently used dropped first with their folders
#: ('simulate' with a new seed each time is a new key).
_CACHE = LRU(config.EXAMPLE_CACHE_MAX, on_evict=_drop_files)


def remember(key: str, final: dict) -> None:
    """Keep an example's result (its files stay in its request folder)."""
    _CACHE.put(key, dict(final))


def get(key: str) -> dict | None:
    return _CACHE.get(key)


def _is_example(sha: str) -> bool:
    global _EXAMPLE_SHAS
    if _EXAMPLE_SHAS is None:
        _EXAMPLE_SHAS = {_sha(Path(p)) for row in example_rows() for p in row if p}
    return sha in _EXAMPLE_SHAS


def key(prep: core.Prepared, model_set: models.ModelSet, custom: bool) -> str | None:
    """The cache key of a comparison of a bundled example (None: not an example, or custom models)."""
    if custom or not _is_example(prep.keys["photo"]):
        return None
    if "reference" in prep.keys and not _is_example(prep.keys["reference"]):
        return None
    parts = [f"{k}={prep.keys[k]}" for k in sorted(prep.keys)] + [model_set.signature(), str(config.THREADS)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
