"""The page opens with an answer, and the example photos behave like examples.

* An example's comparison is computed once, in the background, when the app starts (after the
  model warm-up) and cached like every example result; each page load then shows it at once —
  a visitor's first sight is a comparison, not a form. The example is the first of
  `assets/examples` (or `QATIE_FIRST_EXAMPLE=<name>`), on whatever model set the Compare tab
  uses by default.
* The example gallery's click loads the photo and its clean reference.
* A reference that came with an example never scores a photo the user uploads afterwards: a new
  photo (or clearing it) removes it. A reference the user uploaded stays, and a note under the
  Compare button says which reference the scores are against.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import gradio as gr

from app.boundary import uploads
from app import models
from app.compare import handlers as compare
from app.compare import example_cache

log = logging.getLogger("qatie.app")

_READY = threading.Event()
_LOCK = threading.Lock()
_STATE: dict = {"started": False, "error": None, "seconds": None, "model_set": None, "result": None}
#: How long a page load waits for the start-up comparison before showing the empty form.
LOAD_WAIT_S = 90.0


def examples() -> list[tuple[str, str | None, str]]:
    """(photo, reference or None, label) of each bundled example."""
    out = []
    for photo, ref in example_cache.example_rows():
        out.append((photo, ref, Path(photo).name.replace("_input.png", "").replace("_", " ")))
    return out


def first_example() -> tuple[str, str | None] | None:
    rows = examples()
    if not rows:
        return None
    wanted = os.environ.get("QATIE_FIRST_EXAMPLE", "").strip().lower()
    for photo, ref, label in rows:
        if label == wanted:
            return photo, ref
    return rows[0][0], rows[0][1]


def _run(model_key: str) -> None:
    t0 = time.perf_counter()
    try:
        ex = first_example()
        if ex is None:
            _STATE["error"] = "no example photos in assets/examples"
            return
        if model_key in models.BUILTIN_SETS:  # the warm-up loads the default built-in set's sessions
            models.wait_warm()
        final = None
        for final in compare.compare_named(ex[0], ex[1], model_set=model_key):
            pass  # the last update carries every output
        if final is not None:  # pinned: page loads serve it, whatever the example cache evicts
            example_cache.pin(final)
            _STATE["result"] = final
    except Exception as exc:  # the page then opens with the empty form; compare reports the real error
        _STATE["error"] = str(getattr(exc, "message", exc))
        log.warning("start-up example failed: %s", _STATE["error"])
    finally:
        _STATE["seconds"] = round(time.perf_counter() - t0, 2)
        _READY.set()


def start(model_key: str | None = None) -> None:
    """Compute the first example's comparison in a daemon thread (idempotent); `model_key` None
    is the default set (`models.default_set()`)."""
    model_key = model_key or models.default_set()
    with _LOCK:
        if _STATE["started"]:
            return
        _STATE.update(started=True, model_set=model_key)
    threading.Thread(target=_run, args=(model_key,), name="qatie-first-view", daemon=True).start()


def state() -> dict:
    return dict(_STATE, ready=_READY.is_set())


def on_load(model_key: str | None = None) -> list:
    """Page load: [photo, reference, *compare outputs] of the first example — the start-up
    comparison's result, pinned. A plain function (no queue round trips: this is on every
    visitor's critical path), so it never computes: it serves only what the start-up thread
    computed (30 page loads at once cost 30 copies of a list, not 30 comparisons outside the queue)."""
    ex = first_example()
    if ex is None:
        return [gr.skip()] * (2 + len(compare.OUTPUT_NAMES))
    model_key = model_key or models.default_set()
    start(model_key)  # normally started with the app; this covers a demo launched another way
    _READY.wait(LOAD_WAIT_S)
    result = _STATE["result"]
    if not _READY.is_set() or _STATE["error"] or result is None or model_key != _STATE["model_set"]:
        return [gr.skip(), gr.skip(),
                *compare.as_slots(compare.empty_outputs("Upload a photo or click an example, then **Compare**."))]
    return [ex[0], ex[1], *compare.as_slots(example_cache.replay(result))]


def pick(evt: gr.SelectData):
    """Gallery click → (photo, reference) of that example."""
    rows = examples()
    try:
        photo, ref, _ = rows[int(evt.index)]
    except (TypeError, ValueError, IndexError):
        raise gr.Error("Unknown example: reload the page.") from None
    return photo, ref


# --------------------------------------------------------------------------------------------
# References that came with an example
# --------------------------------------------------------------------------------------------

_REF_SHAS: set[str] | None = None


def _sha(path: str | Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def is_example_reference(payload) -> bool:
    global _REF_SHAS
    found = uploads.payload_path(payload)
    if found is None:
        return False
    if _REF_SHAS is None:
        _REF_SHAS = {s for _, ref, _ in examples() if ref and (s := _sha(ref))}
    return _sha(found[0]) in _REF_SHAS


#: The headline while a newly uploaded photo waits for Compare (the result below is the old one).
NEW_PHOTO_HEADLINE = ('<div class="headline">📷 <b>New photo loaded</b> — press <b>Compare</b> to rate it; '
                      "the result below is still the previous photo's.</div>")


NEW_MODELS_HEADLINE = ('<div class="headline">🔁 <b>Other models selected</b> — press <b>Compare</b> to rate them; '
                       "the result below is still the previous models'.</div>")


def models_changed() -> str:
    """The model set changed (picked, or a training just finished): the result shown is stale."""
    return NEW_MODELS_HEADLINE


def photo_changed(with_gallery: bool):
    """A photo of the user's own replaced the input: say the result is stale, unmark the example."""
    return (NEW_PHOTO_HEADLINE, gr.update(selected_index=None)) if with_gallery else NEW_PHOTO_HEADLINE


def drop_example_reference(reference):
    """The user put in a photo of their own (or cleared it): an example's reference goes."""
    return None if is_example_reference(reference) else gr.skip()


def reference_note(reference, simulate=False, model_set=None) -> str:
    """The line under the Compare button saying what the scores are measured against."""
    if (model_set or models.default_set()) == models.PAPER_KEY and (simulate or uploads.payload_path(reference)):
        return ("The paper set is rated by agreement with full precision: its network re-grades colour on purpose, "
                "so a restoration target is not used.")
    if simulate:
        return "Scores are against your clean upload (*simulate a phone photo* is on, under **Advanced**)."
    found = uploads.payload_path(reference)
    if found is None:
        return ""
    if is_example_reference(reference):
        return "Scored against the example's clean photo (**Advanced › Ground truth**); a photo of your own removes it."
    return f"Scored against your reference `{found[1]}` (**Advanced › Ground truth**)."

