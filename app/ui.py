"""The Gradio Blocks: Compare (default), Train, Benchmark and About tabs, and how to launch them.

Public API endpoints (usable with `gradio_client`): `/compare`, `/zoom`, `/train`, `/benchmark`.
Everything else is private. Queue: compare runs at most 2 at a time (a 2-vCPU machine gains
nothing from more), training and benchmarking 1 each, every event has a time limit so nothing
can hold the queue forever. State is per browser session: the last result (for the zoom) and
the model sets trained in that session.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time

import gradio as gr

from . import guard
from . import (about, authors, bench_tab, compare, config, example_cache, first_view, inspect_panel, modelcard, models,
               train_tab, zoom)

log = logging.getLogger("qatie.app")

CSS = """
#zoom img, #slider-crop img, #out-input img, #out-fp32 img, #out-ptq img, #out-qat img { image-rendering: pixelated; }
#notice p { margin: 0.2em 0; }
#header h2 { margin: 0 0 0.2em 0; }
#header p { margin: 0; }
#headline .headline { font-size: 1.15em; line-height: 1.5; padding: 0.35em 0.6em; border-radius: 6px;
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

#: After an example click: bring the result into view when it is not (phones: it is below the inputs).
SCROLL_TO_RESULT_JS = """() => {
  const el = document.getElementById('headline');
  if (!el) return;
  const r = el.getBoundingClientRect();
  if (r.top < 0 || r.top > window.innerHeight * 0.6) el.scrollIntoView({behavior: 'smooth', block: 'start'});
}"""


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


def _inspect_paths(key, session_sets) -> dict | None:
    try:
        return {r: str(p) for r, p in models.resolve_set(key, session_sets).paths.items()}
    except Exception:  # reported by the Compare action itself
        return None


def build_demo() -> gr.Blocks:
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
            # ---------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        gr.Markdown("**Examples** (phone-camera photos with their clean originals): click one",
                                    elem_id="examples-label")
                        gallery = gr.Gallery([(p, label) for p, _, label in first_view.examples()],
                                             label="Examples: click one", show_label=False, columns=4, rows=1,
                                             height=100,
                                             allow_preview=False, object_fit="cover", buttons=[],
                                             interactive=False, elem_id="examples") if rows else None
                        image_in = gr.Image(label="Your photo", type="filepath", sources=["upload", "clipboard"],
                                            format="png", height=220, elem_id="photo")
                        ref_note = gr.Markdown("", elem_id="ref-note")
                        run_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                        api_btn = gr.Button("Compare (API)", visible=False)
                        with gr.Accordion("Advanced: full size, models, ground truth", open=False, elem_id="advanced"):
                            full_size = gr.Checkbox(
                                label=f"Full size (tiled): don't downscale photos over {config.MAX_INPUT_MP:g} MP "
                                      f"(up to {config.FULL_SIZE_MAX_MP:g} MP; slower)", value=False)
                            model_set = gr.Dropdown(models.choices(None), value=default_set, label="Models",
                                                    allow_custom_value=True,
                                                    info="Sets you train in the Train tab appear here (this session only).")
                            gr.Markdown("**Ground truth (optional):** simulate a phone photo, or add a reference.")
                            simulate = gr.Checkbox(label="Simulate a phone photo: degrade my clean upload first "
                                                         "(the upload becomes the ground truth)", value=False)
                            with gr.Row():
                                seed = gr.Number(label="Degradation seed", value=0, precision=0, minimum=0,
                                                 maximum=2 ** 32 - 1, scale=3)
                                dice = gr.Button("New seed", size="sm", scale=1)
                            reference_in = gr.Image(label="Reference: the same picture, as it should look",
                                                    type="filepath", sources=["upload", "clipboard"], format="png",
                                                    height=160, elem_id="reference")
                            gr.Markdown("**Your own models** (.onnx; each replaces that slot)")
                            custom_fp32 = gr.File(label="FP32 model", file_types=[".onnx"], type="filepath")
                            custom_ptq = gr.File(label="PTQ-INT8 model", file_types=[".onnx"], type="filepath")
                            custom_qat = gr.File(label="QAT-INT8 model", file_types=[".onnx"], type="filepath")
                    with gr.Column(scale=3):
                        headline_html = gr.HTML("", elem_id="headline")
                        notice = gr.Markdown("Loading an example comparison… (or upload a photo and press "
                                             "**Compare**)", elem_id="notice")
                        zoom_img = gr.Image(label="Where INT8 differs most from FP32 (enlarged crops)", format="png",
                                            show_label=False, interactive=False, elem_id="zoom",
                                            buttons=["fullscreen"])
                        with gr.Row():
                            slider_crop = gr.ImageSlider(label="Before/after at that spot (drag the handle)",
                                                         show_label=False, format="png", interactive=False,
                                                         elem_id="slider-crop", buttons=["fullscreen"], scale=3)
                            with gr.Column(scale=2, min_width=240):
                                gr.Markdown("**Before/after at that spot:** drag the handle between FP32 (left) "
                                            "and the INT8 model that differs more (right). " + about.ZOOM_HELP)
                                zoom_x = gr.Slider(0, 100, value=50, step=0.1, label="Zoom x (% of width)")
                                zoom_y = gr.Slider(0, 100, value=50, step=0.1, label="Zoom y (% of height)")
                                zoom_window = gr.Dropdown(list(zoom.ZOOM_WINDOWS), value=zoom.DEFAULT_WINDOW,
                                                          label="Zoom window (pixels)")
                        gr.Markdown("**Error heatmaps** — " + about.HEATMAP_HELP)
                        heatmap = gr.Image(label="Error heatmaps (INT8 vs FP32, 0–16 levels)", show_label=False,
                                           format="png", interactive=False, elem_id="heatmap", buttons=["fullscreen"])
                        with gr.Accordion("Error against the reference (with a ground truth)", open=False,
                                          elem_id="vs-ref"):
                            heatmap_ref = gr.Image(label="Each model vs the reference (0–64 levels)", show_label=False,
                                                   format="png", interactive=False, elem_id="heatmap-ref",
                                                   buttons=["fullscreen"])
                        with gr.Accordion("Details: the measurements and what they mean", open=False,
                                          elem_id="details"):
                            verdict_md = gr.Markdown(elem_id="verdict")
                            metrics_df = gr.Dataframe(compare.empty_table(),
                                                      label="Metrics (latency: one pass of the model in ONNX Runtime "
                                                            "on this server's CPU)", interactive=False, wrap=True,
                                                      elem_id="metrics")
                            with gr.Accordion("All numbers (JSON)", open=False):
                                metrics_json = gr.JSON(label="Metrics")
                            with gr.Accordion("Full-size outputs (PNG; filled in 'Full size (tiled)' mode)",
                                              open=False):
                                downloads = gr.File(label="Full-size outputs", file_count="multiple", interactive=False)
                        gr.Markdown("**The full pictures** — click one to zoom there.")
                        with gr.Row(equal_height=True):
                            out_input = gr.Image(label="Input", format="png", interactive=False, elem_id="out-input",
                                                 buttons=["fullscreen"], min_width=120)
                            out_fp32 = gr.Image(label="FP32", format="png", interactive=False, elem_id="out-fp32",
                                                buttons=["fullscreen"], min_width=120)
                            out_ptq = gr.Image(label="PTQ-INT8", format="png", interactive=False, elem_id="out-ptq",
                                               buttons=["fullscreen"], min_width=120)
                            out_qat = gr.Image(label="QAT-INT8", format="png", interactive=False, elem_id="out-qat",
                                               buttons=["fullscreen"], min_width=120)
                            # The authors' own INT8 TFLite (paper set, with ai-edge-litert installed).
                            out_authors = gr.Image(label=authors.LABEL, format="png", interactive=False,
                                                   elem_id="out-authors", buttons=["fullscreen"], min_width=120,
                                                   visible=_authors_visible(default_set))
                        with gr.Row():
                            slider_ptq = gr.ImageSlider(label="Before/after: FP32 ↔ PTQ-INT8", format="png",
                                                        interactive=False, elem_id="slider-ptq", buttons=["fullscreen"])
                            slider_qat = gr.ImageSlider(label="Before/after: FP32 ↔ QAT-INT8", format="png",
                                                        interactive=False, elem_id="slider-qat", buttons=["fullscreen"])
                        inspect = inspect_panel.build_inspect_panel(open=False)

            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train"):
                gr.Markdown(
                    "Train a small FP32 model, quantize it with **PTQ** (calibration only) and **QAT** (a short "
                    "fine-tune with simulated INT8), and export all three to ONNX. The line above the curves shows "
                    "the step, the time elapsed and the time left at the measured speed. The new set joins the Compare and Benchmark tabs' model lists "
                    "for *this browser session* only; the shipped models stay. Short trainings make weak "
                    "enhancers — the point is to watch what quantization does to them.")
                gr.Markdown(train_tab.budget_md(), elem_id="train-budget")
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        t_data = gr.Radio([train_tab.DATA_SAMPLES, train_tab.DATA_UPLOADS],
                                          value=train_tab.DATA_SAMPLES, label="Training photos")
                        t_photos = gr.File(label=f"Your photos (clean and well exposed; up to "
                                                 f"{train_tab.MAX_TRAIN_PHOTOS}; degraded on the fly)",
                                           file_count="multiple", file_types=["image"], type="filepath")
                        t_init = gr.Radio([train_tab.INIT_SCRATCH, train_tab.INIT_SHIPPED],
                                          value=train_tab.INIT_SCRATCH, label="Start from")
                        d = train_tab.DEFAULTS
                        t_width = gr.Radio([16, 24, 32], value=d.width, label="Network width c (from scratch)")
                        t_fp32 = gr.Slider(0, train_tab.MAX_FP32_STEPS, value=d.fp32_steps, step=1, label="FP32 training steps (0: only with the shipped model)")
                        t_qat = gr.Slider(1, train_tab.MAX_QAT_STEPS, value=d.qat_steps, step=1, label="QAT fine-tuning steps")
                        with gr.Accordion("More settings", open=False):
                            t_batch = gr.Slider(1, train_tab.MAX_BATCH, value=d.batch_size, step=1, label="Batch size")
                            t_patch = gr.Slider(32, train_tab.MAX_PATCH, value=d.patch, step=16, label="Crop size (pixels)")
                            t_lr = gr.Number(value=d.lr, label="FP32 learning rate")
                            t_qat_lr = gr.Number(value=d.qat_lr, label="QAT learning rate")
                            t_method = gr.Radio(["minmax", "percentile", "entropy"], value=d.ptq_method,
                                                label="PTQ calibration method")
                        with gr.Row():
                            t_run = gr.Button("Train and quantize", variant="primary", elem_id="train-btn")
                            t_cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                    with gr.Column(scale=2):
                        t_status = gr.Markdown("Press **Train and quantize** to start.", elem_id="train-status")
                        t_curves = gr.Image(label="Training curves (live)", format="png", interactive=False,
                                            elem_id="train-curves")
                        t_files = gr.File(label="Download the models (.onnx, .pt, INT8 sidecars)",
                                          file_count="multiple", interactive=False)

            # ---------------------------------------------------------------- Benchmark
            with gr.Tab("Benchmark", id="benchmark"):
                gr.Markdown("Latency of the three models at several resolutions on *this* server's CPU "
                            f"({config.effective_cpus()} usable cores), through ONNX Runtime: one warm-up, then "
                            "interleaved timed runs (the order rotates each round, so noise hits all models alike).")
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        b_model_set = gr.Dropdown(models.choices(None), value=default_set, label="Models",
                                                  allow_custom_value=True)
                        b_sizes = gr.CheckboxGroup(list(bench_tab.SIZES), value=bench_tab.DEFAULT_SIZES,
                                                   label="Image sizes")
                        threads = bench_tab.thread_choices()
                        b_threads = gr.Radio(threads, value=config.THREADS if config.THREADS in threads else threads[0],
                                             label="ONNX Runtime threads")
                        b_runs = gr.Slider(1, 10, value=3, step=1, label="Timed runs per model and size")
                        b_run = gr.Button("Run benchmark", variant="primary")
                        b_files = gr.Markdown(bench_tab.files_md(models.shipped_set(default_set)))
                    with gr.Column(scale=2):
                        b_status = gr.Markdown()
                        b_plot = gr.Image(label="Latency vs resolution", format="png", interactive=False)
                        b_table = gr.Dataframe(bench_tab.empty_table(), label="Results", interactive=False)
                gr.Markdown("### The model card's numbers\n\n" + card.tables_md(("latency", "median ms", "bench")),
                            elem_classes=["card-tables"])

            # ---------------------------------------------------------------- About
            with gr.Tab("About", id="about"):
                gr.Markdown(about.ABOUT)
                gr.Markdown("## The model card\n\n" + card.tables_md(), elem_classes=["card-tables"])
                figure = config.ASSETS / "model_card_crops.png"
                if card.present and figure.is_file():
                    gr.Markdown("### Where the INT8 error is\n\nThe model card's figure: test-photo crops where "
                                "minmax PTQ differs most from FP32 — input, FP32, PTQ-INT8, QAT-INT8 and the two error "
                                "maps on one colour scale (8-bit levels).")
                    gr.Image(str(figure), label="Model card figure", show_label=False, format="png", interactive=False)
                files = card.files_md()
                if files:
                    gr.Markdown("### Shipped files (`checkpoints/manifest.json`)\n\n" + files)

        # ---------------------------------------------------------------- events
        compare_inputs = [image_in, reference_in, simulate, seed, full_size, model_set, custom_fp32, custom_ptq,
                          custom_qat, session_sets]
        compare_outputs = [notice, out_input, out_fp32, out_ptq, out_qat, slider_ptq, slider_qat, verdict_md,
                           metrics_df, heatmap, zoom_img, zoom_x, zoom_y, metrics_json, downloads, headline_html,
                           slider_crop, heatmap_ref, out_authors, result_state]
        assert len(compare_outputs) == compare.N_OUT
        run_btn.click(compare.compare_ui, compare_inputs, compare_outputs, api_visibility="private",
                      preprocess=False, concurrency_limit=config.HEAVY_SLOTS, concurrency_id=guard.HEAVY,
                      time_limit=600, show_progress="minimal")
        # The public /compare endpoint (raises on bad input, so API callers get an exception) hangs
        # off an invisible button: the visible one reports errors in the notice line instead.
        api_btn.click(compare.compare, compare_inputs, compare_outputs, api_name="compare", preprocess=False,
                      concurrency_limit=config.HEAVY_SLOTS, concurrency_id=guard.HEAVY, time_limit=600)
        # The page opens with the first example's (cached) comparison.
        def first_load():
            return first_view.on_load(default_set)

        # queue=False: one HTTP round trip; the result is cached at start-up.
        demo.load(first_load, None, [image_in, reference_in, *compare_outputs], api_visibility="private",
                  queue=False, show_progress="minimal")
        if gallery is not None:
            # always_last: clicking another example while one runs queues the new one instead of
            # silently dropping it.
            gallery.select(None, None, None, js=SCROLL_TO_RESULT_JS, queue=False, api_visibility="private")
            gallery.select(first_view.pick, None, [image_in, reference_in], queue=False,
                           api_visibility="private").then(
                compare.compare_ui, compare_inputs, compare_outputs, preprocess=False,
                concurrency_limit=config.HEAVY_SLOTS, concurrency_id=guard.HEAVY, time_limit=600,
                api_visibility="private", show_progress="minimal", trigger_mode="always_last")
        # A reference that came with an example never scores the user's own photo.
        for event in (image_in.upload, image_in.clear):
            event(first_view.drop_example_reference, reference_in, reference_in, queue=False,
                  api_visibility="private")
        for event in (reference_in.change, simulate.change):
            event(first_view.reference_note, [reference_in, simulate], ref_note, queue=False,
                  api_visibility="private")
        dice.click(lambda: random.randrange(2 ** 31), None, seed, queue=False, api_visibility="private")

        zoom_inputs = [result_state, zoom_x, zoom_y, zoom_window]
        zoom_x.release(compare.zoom, zoom_inputs, zoom_img, api_name="zoom", concurrency_limit=None,
                       time_limit=60, show_progress="hidden")
        zoom_y.release(compare.zoom, zoom_inputs, zoom_img, api_visibility="private", concurrency_limit=None,
                       time_limit=60, show_progress="hidden")
        zoom_window.input(compare.zoom, zoom_inputs, zoom_img, api_visibility="private", concurrency_limit=None,
                          time_limit=60, show_progress="hidden")
        for img in (out_input, out_fp32, out_ptq, out_qat):
            img.select(compare.zoom_at_click, [result_state, zoom_window], [zoom_x, zoom_y, zoom_img],
                       api_visibility="private", concurrency_limit=None, time_limit=60, show_progress="hidden")

        t_evt = t_run.click(
            train_tab.train,
            [t_data, t_init, t_width, t_fp32, t_qat, t_batch, t_patch, t_lr, t_qat_lr, t_method, t_photos, session_sets],
            [t_status, t_curves, t_files, session_sets, model_set, b_model_set],
            api_name="train", concurrency_limit=config.HEAVY_SLOTS, concurrency_id=guard.HEAVY, time_limit=3600,
            show_progress="hidden",  # one progress display: the status line (no overlay on the curves)
        )
        t_cancel.click(train_tab.cancel, None, t_status, cancels=[t_evt], queue=False, api_visibility="private")

        b_run.click(bench_tab.run, [b_model_set, session_sets, b_sizes, b_threads, b_runs], [b_plot, b_table, b_status],
                    api_name="benchmark", concurrency_limit=config.HEAVY_SLOTS, concurrency_id=guard.HEAVY, time_limit=900)
        b_model_set.change(bench_tab.files_for, [b_model_set, session_sets], b_files, api_visibility="private",
                           queue=False)

        if os.environ.get("QATIE_APP_DEBUG") == "1":
            gr.api(debug_modules, api_name="debug_modules", api_visibility="undocumented", queue=False)
        # Inspect: per-layer error of the models the Compare tab uses (shipped or a session set).
        inspect_paths = gr.State(None)
        model_set.change(_inspect_paths, [model_set, session_sets], inspect_paths, api_visibility="private")
        model_set.change(lambda key: gr.update(visible=_authors_visible(key)), model_set, out_authors,
                         api_visibility="private", queue=False)
        inspect_panel.wire(inspect, image_in, inspect_paths,
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
    options = dict(max_file_size=config.MAX_FILE_SIZE, theme=THEME, css=CSS, ssr_mode=False, show_error=True)
    options.update(kwargs)
    log.info("launching (warm-up started in %.2f s)", time.perf_counter() - t0)
    return demo.launch(**options)
