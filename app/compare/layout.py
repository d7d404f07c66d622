"""The Compare tab's layout and events, apart from `app/ui.py` so the page's composition stays short.

`build()` creates the components (examples, photo, advanced settings, the results) and returns them
in a `CompareTab`; `wire()` connects the tab's own events to the handlers in `app.compare.handlers`,
`app.compare.first_view` and `app.compare.zoom`. What other tabs change here (the model list after training, the
Inspect panel) is wired by `app/ui.py`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import gradio as gr

from app import config, models
from app.about import texts as about
from app.compare import authors, litert
from app.compare import handlers as compare
from app.compare import first_view
from app.boundary import guard
from app.inspect import layout as inspect_panel
from app.compare import zoom

#: After an example click: bring the result into view when it is not (phones: it is below the inputs).
SCROLL_TO_RESULT_JS = """() => {
  const el = document.getElementById('headline');
  if (!el) return;
  const r = el.getBoundingClientRect();
  if (r.top < 0 || r.top > window.innerHeight * 0.6) el.scrollIntoView({behavior: 'smooth', block: 'start'});
}"""


@dataclass
class CompareTab:
    gallery: gr.Gallery | None
    image_in: gr.Image
    ref_note: gr.Markdown
    run_btn: gr.Button
    api_btn: gr.Button
    full_size: gr.Checkbox
    model_set: gr.Dropdown
    simulate: gr.Checkbox
    seed: gr.Number
    dice: gr.Button
    reference_in: gr.Image
    custom_fp32: gr.File
    custom_ptq: gr.File
    custom_qat: gr.File
    headline_html: gr.HTML
    notice: gr.Markdown
    zoom_img: gr.Image
    slider_crop: gr.ImageSlider
    zoom_x: gr.Slider
    zoom_y: gr.Slider
    zoom_window: gr.Dropdown
    heatmap: gr.Image
    heatmap_ref: gr.Image
    verdict_md: gr.Markdown
    metrics_df: gr.Dataframe
    metrics_json: gr.JSON
    downloads: gr.File
    out_input: gr.Image
    out_fp32: gr.Image
    out_ptq: gr.Image
    out_qat: gr.Image
    out_authors: gr.Image
    out_litert: gr.Image
    litert_note: gr.Markdown
    slider_ptq: gr.ImageSlider
    slider_qat: gr.ImageSlider
    inspect: inspect_panel.Panel


def build(default_set: str, examples: bool, authors_visible: bool, litert_visible: bool = False) -> CompareTab:
    """The tab's components, in the current Tab context. `examples`: show the example gallery;
    `authors_visible` / `litert_visible`: show the authors' TFLite picture / QATIE's QAT-INT8 on
    LiteRT for `default_set`."""
    with gr.Row(elem_id="compare-row"):
        inputs = _inputs_column(default_set, examples)
        results = _results_column(authors_visible, litert_visible)
    return CompareTab(**inputs, **results)


def _inputs_column(default_set: str, examples: bool) -> dict:
    """The left column: examples, the photo, Compare, and the Advanced options."""
    with gr.Column(scale=1, min_width=300, elem_id="compare-inputs"):
        gr.Markdown("**Examples** (phone-camera photos with their clean originals): click one",
                    elem_id="examples-label")
        gallery = gr.Gallery([(p, label) for p, _, label in first_view.examples()],
                             label="Examples: click one", show_label=False, columns=4, rows=1,
                             height=100,
                             allow_preview=False, object_fit="cover", buttons=[],
                             interactive=False, elem_id="examples") if examples else None
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
    return dict(gallery=gallery, image_in=image_in, ref_note=ref_note, run_btn=run_btn, api_btn=api_btn,
                full_size=full_size, model_set=model_set, simulate=simulate, seed=seed, dice=dice,
                reference_in=reference_in, custom_fp32=custom_fp32, custom_ptq=custom_ptq, custom_qat=custom_qat)


def _results_column(authors_visible: bool, litert_visible: bool) -> dict:
    """The right column: headline, notice, zoom, heatmaps, details, the full pictures, sliders."""
    with gr.Column(scale=3, elem_id="compare-results"):
        headline_html = gr.HTML("", elem_id="headline")
        notice = gr.Markdown("Loading an example comparison… (or upload a photo and press "
                             "**Compare**)", elem_id="notice")
        zoom_img = gr.Image(label="Where INT8 differs most from FP32 (enlarged crops)", format="png",
                            show_label=False, interactive=False, elem_id="zoom",
                            alt_text="Enlarged crops of the spot where a viewer would notice an INT8 model's "
                                     "difference most: FP32, PTQ-INT8 and QAT-INT8 side by side, with the input "
                                     "and each INT8 model's error map below",
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
                           format="png", interactive=False, elem_id="heatmap", buttons=["fullscreen"],
                           alt_text="Maps of where each INT8 model differs from FP32: colour difference ΔE00 on top, 8-bit levels below")
        with gr.Accordion("Error against the reference (with a ground truth)", open=False,
                          elem_id="vs-ref"):
            heatmap_ref = gr.Image(label="Each model vs the reference (0–64 levels)", show_label=False,
                                   format="png", interactive=False, elem_id="heatmap-ref",
                                   alt_text="Maps of each model's difference from the reference, in 8-bit levels",
                                   buttons=["fullscreen"])
        with gr.Accordion("Details: the measurements and what they mean", open=False,
                          elem_id="details"):
            verdict_md = gr.Markdown(elem_id="verdict")
            metrics_df = gr.Dataframe(compare.empty_table(),
                                      label="Metrics (latency: one pass of the model in ONNX Runtime on this "
                                            "server's CPU)", interactive=False, wrap=True,
                                      column_widths=compare.TABLE_COLUMN_WIDTHS,  # every column in view
                                      elem_id="metrics")
            with gr.Accordion("All numbers (JSON)", open=False):
                metrics_json = gr.JSON(label="Metrics")
            with gr.Accordion("Full-size outputs (PNG; filled in 'Full size (tiled)' mode)",
                              open=False):
                downloads = gr.File(label="Full-size outputs", file_count="multiple", interactive=False)
        gr.Markdown("**The full pictures** — click one to zoom there.")
        with gr.Row(equal_height=True):
            out_input = gr.Image(label="Input", format="png", interactive=False, elem_id="out-input", alt_text="The input photo as the models received it",
                                 buttons=["fullscreen"], min_width=120)
            out_fp32 = gr.Image(label="FP32", format="png", interactive=False, elem_id="out-fp32", alt_text="The full-precision (FP32) model's output",
                                buttons=["fullscreen"], min_width=120)
            out_ptq = gr.Image(label="PTQ-INT8", format="png", interactive=False, elem_id="out-ptq", alt_text="The PTQ-INT8 model's output",
                               buttons=["fullscreen"], min_width=120)
            out_qat = gr.Image(label="QAT-INT8", format="png", interactive=False, elem_id="out-qat", alt_text="The QAT-INT8 model's output",
                               buttons=["fullscreen"], min_width=120)
        # The paper set's pictures on LiteRT (with ai-edge-litert installed), a row of their own under
        # the line that rates them: the authors' INT8 TFLite as released, and QATIE's own QAT-INT8
        # written to LiteRT with its own scales.
        litert_note = gr.Markdown("", elem_id="litert-note", visible=authors_visible or litert_visible)
        with gr.Row(equal_height=True, elem_id="litert-row"):
            out_authors = gr.Image(label=authors.LABEL, format="png", interactive=False,
                                   elem_id="out-authors", alt_text="The authors' INT8 TFLite model's output, run as released", buttons=["fullscreen"], min_width=120,
                                   visible=authors_visible)
            out_litert = gr.Image(label=litert.LABEL, format="png", interactive=False, elem_id="out-litert",
                                  alt_text="QATIE's QAT-INT8 model's output on LiteRT, the phone runtime, with "
                                           "QATIE's own quantization scales",
                                  buttons=["fullscreen"], min_width=120, visible=litert_visible)
        with gr.Row():
            slider_ptq = gr.ImageSlider(label="Before/after: FP32 ↔ PTQ-INT8", format="png",
                                        interactive=False, elem_id="slider-ptq", buttons=["fullscreen"])
            slider_qat = gr.ImageSlider(label="Before/after: FP32 ↔ QAT-INT8", format="png",
                                        interactive=False, elem_id="slider-qat", buttons=["fullscreen"])
        inspect = inspect_panel.build_inspect_panel(open=False)
    return dict(headline_html=headline_html, notice=notice, zoom_img=zoom_img, slider_crop=slider_crop,
                zoom_x=zoom_x, zoom_y=zoom_y, zoom_window=zoom_window, heatmap=heatmap, heatmap_ref=heatmap_ref,
                verdict_md=verdict_md, metrics_df=metrics_df, metrics_json=metrics_json, downloads=downloads,
                out_input=out_input, out_fp32=out_fp32, out_ptq=out_ptq, out_qat=out_qat, out_authors=out_authors,
                out_litert=out_litert, litert_note=litert_note, slider_ptq=slider_ptq, slider_qat=slider_qat, inspect=inspect)


def wire(tab: CompareTab, demo: gr.Blocks, session_sets: gr.State, result_state: gr.State, default_set: str) -> None:
    """The Compare tab's own events: compare (button, API, example click), the first view on page
    load, the reference note, the seed dice and the zoom. `result_state` holds the last result
    (for the zoom); `session_sets` the sets trained in this session."""
    compare_inputs = [tab.image_in, tab.reference_in, tab.simulate, tab.seed, tab.full_size, tab.model_set,
                      tab.custom_fp32, tab.custom_ptq, tab.custom_qat, session_sets]
    by_name = {"notice": tab.notice, "input": tab.out_input, "fp32": tab.out_fp32, "ptq": tab.out_ptq,
               "qat": tab.out_qat, "slider_ptq": tab.slider_ptq, "slider_qat": tab.slider_qat,
               "verdict": tab.verdict_md, "metrics": tab.metrics_df, "heatmap": tab.heatmap, "zoom": tab.zoom_img,
               "zoom_x": tab.zoom_x, "zoom_y": tab.zoom_y, "metrics_json": tab.metrics_json,
               "downloads": tab.downloads, "headline": tab.headline_html, "slider_crop": tab.slider_crop,
               "heatmap_ref": tab.heatmap_ref, "authors": tab.out_authors, "litert": tab.out_litert,
               "litert_note": tab.litert_note, "state": result_state}
    compare_outputs = [by_name[name] for name in compare.OUTPUT_NAMES]  # the order `compare.as_slots` lays out
    tab.run_btn.click(compare.compare_ui, compare_inputs, compare_outputs, api_visibility="private",
                      preprocess=False, concurrency_limit=config.HEAVY_ADMIT, concurrency_id=guard.HEAVY,
                      time_limit=600, show_progress="minimal")
    # The public /compare endpoint (raises on bad input, so API callers get an exception) hangs
    # off an invisible button: the visible one reports errors in the notice line instead.
    tab.api_btn.click(compare.compare, compare_inputs, compare_outputs, api_name="compare", preprocess=False,
                      concurrency_limit=config.HEAVY_ADMIT, concurrency_id=guard.HEAVY, time_limit=600)
    # The page opens with the first example's (cached) comparison.
    def first_load():
        return first_view.on_load(default_set)

    # queue=False: one HTTP round trip; the result is cached at start-up.
    demo.load(first_load, None, [tab.image_in, tab.reference_in, *compare_outputs], api_visibility="private",
              queue=False, show_progress="minimal")
    if tab.gallery is not None:
        # always_last: clicking another example while one runs queues the new one instead of
        # silently dropping it.
        tab.gallery.select(None, None, None, js=SCROLL_TO_RESULT_JS, queue=False, api_visibility="private")
        tab.gallery.select(first_view.pick, None, [tab.image_in, tab.reference_in], queue=False,
                           api_visibility="private").then(
            compare.compare_ui, compare_inputs, compare_outputs, preprocess=False,
            concurrency_limit=config.HEAVY_ADMIT, concurrency_id=guard.HEAVY, time_limit=600,
            api_visibility="private", show_progress="minimal", trigger_mode="always_last")
    # A photo of the user's own: the headline says the result shown is the previous photo's.
    with_gallery = tab.gallery is not None
    tab.image_in.upload(lambda: first_view.photo_changed(with_gallery), None,
                        [tab.headline_html, tab.gallery] if with_gallery else tab.headline_html, queue=False,
                        api_visibility="private")
    # A reference that came with an example never scores the user's own photo.
    for event in (tab.image_in.upload, tab.image_in.clear):
        event(first_view.drop_example_reference, tab.reference_in, tab.reference_in, queue=False,
              api_visibility="private")
    # Other models (picked, or a training that just finished selects its set): the result is the old ones'.
    tab.model_set.change(first_view.models_changed, None, tab.headline_html, queue=False, api_visibility="private")
    for event in (tab.reference_in.change, tab.simulate.change, tab.model_set.change):
        event(first_view.reference_note, [tab.reference_in, tab.simulate, tab.model_set], tab.ref_note, queue=False,
              api_visibility="private")
    tab.dice.click(lambda: random.randrange(2 ** 31), None, tab.seed, queue=False, api_visibility="private")

    zoom_inputs = [result_state, tab.zoom_x, tab.zoom_y, tab.zoom_window]
    tab.zoom_x.release(compare.zoom, zoom_inputs, tab.zoom_img, api_name="zoom", concurrency_limit=None,
                       time_limit=60, show_progress="hidden")
    tab.zoom_y.release(compare.zoom, zoom_inputs, tab.zoom_img, api_visibility="private", concurrency_limit=None,
                       time_limit=60, show_progress="hidden")
    tab.zoom_window.input(compare.zoom, zoom_inputs, tab.zoom_img, api_visibility="private", concurrency_limit=None,
                          time_limit=60, show_progress="hidden")
    for img in (tab.out_input, tab.out_fp32, tab.out_ptq, tab.out_qat, tab.out_authors, tab.out_litert):
        img.select(compare.zoom_at_click, [result_state, tab.zoom_window], [tab.zoom_x, tab.zoom_y, tab.zoom_img],
                   api_visibility="private", concurrency_limit=None, time_limit=60, show_progress="hidden")
