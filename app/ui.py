"""The Gradio Blocks: Compare (default), Train, Benchmark and About tabs, and how to launch them.
Each tab is a package of its own (`app/compare/`, `app/train/`, `app/benchmark/`, `app/about/`; its `layout`
lays out and wires it); this module composes them and wires what they share.

Public API endpoints (usable with `gradio_client`): `/compare`, `/zoom`, `/train`, `/benchmark`.
Everything else is private. Queue: compare runs at most 2 at a time (a 2-vCPU machine gains
nothing from more), training and benchmarking 1 each, every event has a time limit so nothing
can hold the queue forever. State is per browser session: the last result (for the zoom) and
the model sets trained in that session.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import gradio as gr

from app import config, models
from app.about import texts as about
from app.compare import authors, litert
from app.compare import example_cache
from app.compare import first_view
from app.inspect import layout as inspect_panel
from app.about import modelcard
from app.train import handlers as train_tab
from app.about import layout as tab_about
from app.benchmark import layout as tab_benchmark
from app.compare import layout as tab_compare
from app.train import layout as tab_train

log = logging.getLogger("qatie.app")

CSS = """
#zoom img, #slider-crop img, #out-input img, #out-fp32 img, #out-ptq img, #out-qat img, #out-authors img,
#out-litert img { image-rendering: pixelated; }
#litert-row > * { max-width: calc(50% - var(--layout-gap) / 2); }
#litert-note p { margin: 0.2em 0; }
#notice p { margin: 0.2em 0; }
#header h2 { margin: 0 0 0.2em 0; }
#header p { margin: 0; }
#headline .headline { font-size: 1.05em; line-height: 1.4; padding: 0.3em 0.6em; border-radius: 6px;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.error-notice { color: #b91c1c; }
#ref-note p { margin: 0; font-size: 0.9em; }
.card-tables table { display: block; overflow-x: auto; border: none; width: fit-content; max-width: 100%; }
.card-tables td, .card-tables th { white-space: nowrap; }
#metrics th, #metrics td { min-width: 8em; word-break: normal; overflow-wrap: normal; }
#examples .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; grid-auto-rows: auto !important; }
#examples .thumbnail-item { width: 100%; height: auto; aspect-ratio: 1; }
#examples { height: auto !important; }
@media (max-width: 600px) {
  #header h2 { font-size: 1.2em; }
  #header p { font-size: 0.9em; line-height: 1.35; }
  #tabs .tab-container button { padding: 0 8px; }
  #examples .caption-label { font-size: 0.75em; padding: 1px 4px; }
  #photo { max-height: 230px; }
  /* The answer first: headline, the enlarged crops and the notice above the examples and the upload. */
  #compare-row { flex-direction: column !important; }
  #compare-inputs, #compare-results { display: contents !important; }
  #compare-row > div > * { order: 10; }
  #compare-row #headline { order: 1; } #compare-row #zoom { order: 2; } #compare-row #notice { order: 3; }
  #notice { font-size: 0.9em; }
  #compare-row #examples-label { order: 4; } #compare-row #examples { order: 5; }
  #compare-row #photo { order: 6; } #compare-row #ref-note { order: 7; } #compare-row #compare-btn { order: 8; }
  #zoom img { max-height: 330px; object-fit: contain; }
}
"""

THEME = gr.themes.Soft(
    # System fonts only: the default theme fetches Google Fonts, and the app must work offline.
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)

COMPARE_CONCURRENCY = 2
#: The model set the Compare and Benchmark tabs (and the first view's example) use unless the user
#: picks another: the paper's network when its three files are in checkpoints/, else the restoration set.
DEFAULT_SET = models.default_set()

def debug_modules() -> dict:
    """Which heavy modules this server process has imported (enabled by QATIE_APP_DEBUG=1)."""
    import threading

    return {"torch": "torch" in sys.modules, "onnxruntime": "onnxruntime" in sys.modules,
            "ai_edge_litert": "ai_edge_litert" in sys.modules,
            "modules": len(sys.modules), "warm_up": models.warm_state(), "first_view": first_view.state(),
            "training_threads": sum(t.name.startswith("qatie-train-") and t.is_alive() for t in threading.enumerate())}


def _authors_visible(key) -> bool:
    """The authors' TFLite picture is there for the paper set, when ai-edge-litert is installed."""
    return key == models.PAPER_KEY and authors.available()


def _litert_visible(key) -> bool:
    """QATIE's QAT-INT8 on LiteRT is there for the paper set, when ai-edge-litert is installed."""
    return key == models.PAPER_KEY and litert.available()


def _inspect_paths(key, session_sets) -> dict | None:
    try:
        return {r: str(p) for r, p in models.resolve_set(key, session_sets).paths.items()}
    except Exception:  # reported by the Compare action itself
        return None


def build_demo() -> gr.Blocks:
    """The page: header, the four tabs (each laid out and wired by its package's `layout` module), and
    what crosses tabs — the session's trained sets, the last result, and the Inspect panel."""
    card = modelcard.load()
    rows = example_cache.example_rows()
    missing = models.shipped_missing()
    default_set = DEFAULT_SET
    with gr.Blocks(title="QATIE — FP32 vs PTQ-INT8 vs QAT-INT8", delete_cache=(1800, 3600)) as demo:
        # Trained sets live as long as the session (and at most a day); their files go with them.
        session_sets = gr.State({}, time_to_live=24 * 3600, delete_callback=train_tab.forget)
        # The last result (8-bit images and error maps, for the zoom): per session, 30 minutes.
        result_state = gr.State(None, time_to_live=1800)
        gr.Markdown(about.HEADER, elem_id="header")
        with gr.Accordion("What am I looking at?", open=False, elem_id="what"):
            gr.Markdown(about.INTRO)
        if missing:
            gr.Markdown("> **The shipped models are missing** (" + ", ".join(f"`{m}`" for m in missing) + "). "
                        "Train a set in the Train tab, or upload your own .onnx files in Compare.")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Compare", id="compare"):
                compare = tab_compare.build(default_set, examples=bool(rows),
                                            authors_visible=_authors_visible(default_set),
                                            litert_visible=_litert_visible(default_set))
            with gr.Tab("Train", id="train"):
                train = tab_train.build()
            with gr.Tab("Benchmark", id="benchmark"):
                bench = tab_benchmark.build(default_set, card)
            with gr.Tab("About", id="about"):
                info = tab_about.build(card)

        # ---------------------------------------------------------------- events
        tab_compare.wire(compare, demo, session_sets, result_state, default_set)
        # A finished training joins the session's sets and both tabs' model lists.
        tab_train.wire(train, session_sets, model_dropdowns=[compare.model_set, bench.model_set])
        tab_benchmark.wire(bench, session_sets)
        tab_about.wire(info)

        if os.environ.get("QATIE_APP_DEBUG") == "1":
            gr.api(debug_modules, api_name="debug_modules", api_visibility="undocumented", queue=False)
        # Inspect: per-layer error of the models the Compare tab uses (shipped or a session set).
        inspect_paths = gr.State(None)
        compare.model_set.change(_inspect_paths, [compare.model_set, session_sets], inspect_paths,
                                 api_visibility="private")
        compare.model_set.change(lambda key: (gr.update(visible=_authors_visible(key)),
                                              gr.update(visible=_litert_visible(key)),
                                              gr.update(visible=_authors_visible(key) or _litert_visible(key))),
                                 compare.model_set, [compare.out_authors, compare.out_litert, compare.litert_note],
                                 api_visibility="private", queue=False)
        inspect_panel.wire(compare.inspect, compare.image_in, inspect_paths,
                           to_paths=lambda v: v or {r: str(p) for r, p in models.shipped_paths(default_set).items()})
    return demo


def _cleanup_on_exit(demo: gr.Blocks) -> None:
    """Remove this process's scratch folder (and Gradio's copies of the files it served) when
    the app ends. SIGTERM (a Space stopping, a test tearing down) cleans up and exits at once:
    Gradio's own graceful shutdown waits seconds for open connections, and an exception raised
    from a signal handler could land anywhere in the main thread."""
    import atexit
    import shutil
    import signal
    import threading

    def cleanup() -> None:
        shutil.rmtree(config.WORK_DIR, ignore_errors=True)
        try:
            from gradio.route_utils import delete_files_created_by_app

            delete_files_created_by_app(demo, None)
        except Exception:
            pass

    atexit.register(cleanup)
    if threading.current_thread() is threading.main_thread():
        def _term(signum, frame):
            cleanup()
            os._exit(0)

        signal.signal(signal.SIGTERM, _term)


def launch(demo: gr.Blocks, **kwargs):
    """Queue + launch with the app's settings. Host and port come from GRADIO_SERVER_NAME and
    GRADIO_SERVER_PORT (Gradio reads them); `kwargs` override anything."""
    t0 = time.perf_counter()
    _cleanup_on_exit(demo)
    gone = config.claim_work_dir()
    if gone:
        log.info("removed %d scratch folder(s) left by app processes that ended", len(gone))
    models.start_warm_up()
    first_view.start(DEFAULT_SET)  # the page opens with this example's comparison, computed now
    demo.queue(default_concurrency_limit=1, max_size=64)
    from starlette.middleware import Middleware

    from app.boundary.upload_quota import UploadQuota

    options = dict(max_file_size=config.MAX_FILE_SIZE, theme=THEME, css=CSS, ssr_mode=False, show_error=True,
                   app_kwargs={"middleware": [Middleware(UploadQuota)]},
                   max_threads=config.HEAVY_ADMIT + 40)  # admitted heavy requests wait in app.boundary.slots on a thread
    options.update(kwargs)
    log.info("launching (warm-up started in %.2f s)", time.perf_counter() - t0)
    return demo.launch(**options)
