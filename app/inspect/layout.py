"""The Inspect panel's layout (`build_inspect_panel`, a `Panel` of named components, no events) and
its events (`wire`), calling `app.inspect.handlers`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from app import config
from app.boundary import guard, slots
from app.inspect.handlers import DEFAULT_K, analyse, calibration, histogram, mixed_precision

INTRO = ("**Inspect** — the signal-to-quantization-noise ratio (SQNR, dB; higher = closer to FP32) of every "
         "quantized tensor of the INT8 models on *this* photo, PTQ and QAT side by side, grouped by network stage. "
         "The bars are cumulative (everything upstream included); the dark ticks are each tensor's own range "
         "and step alone. Pick a tensor to see *why*: its FP32 values with each model's range drawn on them.")


@dataclass
class Panel:
    run: Any
    status: Any
    bars: Any
    table: Any
    files: Any
    tensor: Any
    hist: Any
    hist_note: Any
    calib_run: Any
    calib_table: Any
    calib_note: Any
    k_values: Any
    mixed_run: Any
    mixed_plot: Any
    mixed_table: Any
    mixed_note: Any


def build_inspect_panel(open: bool = False) -> Panel:
    """Create the Inspect panel's components in the current Blocks context (no events)."""
    with gr.Accordion("Inspect: where does the INT8 error come from?", open=open):
        gr.Markdown(INTRO)
        with gr.Row():
            run = gr.Button("Analyse this photo", variant="secondary", scale=0, min_width=200)
            status = gr.Markdown()
        bars = gr.Plot(label="SQNR per quantized tensor (PTQ vs QAT)")
        with gr.Row():
            table = gr.Dataframe(label="Per tensor (◀ = among the worst)", interactive=False, max_height=320)
        files = gr.File(label="Download (CSV, JSON)", file_count="multiple", interactive=False)
        with gr.Row():
            tensor = gr.Dropdown(choices=[], label="Tensor to inspect", allow_custom_value=False, scale=1)
        hist = gr.Plot(label="FP32 activations and the INT8 ranges")
        hist_note = gr.Markdown()
        with gr.Accordion("Calibration choice (PTQ: minmax / percentile / entropy)", open=False):
            calib_run = gr.Button("Compare calibration methods on this photo (builds 3 PTQ models the first time)")
            calib_table = gr.Dataframe(interactive=False)
            calib_note = gr.Markdown()
        with gr.Accordion("Mixed precision: keep the K most sensitive convs float", open=False):
            with gr.Row():
                k_values = gr.Textbox(DEFAULT_K, label="K values", scale=2)
                mixed_run = gr.Button("Measure the trade-off (first time: minutes)", scale=1)
            mixed_plot = gr.Plot(label="Quality vs latency")
            mixed_table = gr.Dataframe(interactive=False)
            mixed_note = gr.Markdown()
    return Panel(run, status, bars, table, files, tensor, hist, hist_note, calib_run, calib_table, calib_note,
                 k_values, mixed_run, mixed_plot, mixed_table, mixed_note)


def wire(panel: Panel, image_component, paths_component, to_paths: Callable[[Any], dict] = lambda v: v) -> None:
    """Connect the panel's buttons. `paths_component` is one component (e.g. a `gr.State`) whose
    value `to_paths` turns into the {fp32, ptq, qat} paths of the models the Compare tab shows."""

    def gated(what: str, request, fn, *args, **kwargs):
        try:
            with slots.one_per_session(request, what), slots.heavy_slot(request, what):
                return fn(*args, **kwargs)
        except (slots.BusyError, slots.SlotWaitError) as exc:
            raise gr.Error(str(exc), title="One request at a time") from None

    def run(image, value, request: gr.Request = None):
        return gated("The analysis", request, analyse, image, to_paths(value))

    def hist(image, tensor, value, request: gr.Request = None):
        try:
            with slots.heavy_slot(request, "The histogram"):  # follows the tensor choice: no session gate
                return histogram(image, to_paths(value), tensor)
        except slots.SlotWaitError as exc:
            raise gr.Error(str(exc)) from None

    def calib(image, value, progress=gr.Progress(), request: gr.Request = None):
        return gated("The calibration comparison", request, calibration, image, to_paths(value), progress=progress)

    def mixed_(image, ks, value, progress=gr.Progress(), request: gr.Request = None):
        return gated("The mixed-precision measurement", request, mixed_precision, image, to_paths(value), ks,
                     progress=progress)

    panel.run.click(run, [image_component, paths_component],
                    [panel.bars, panel.table, panel.files, panel.tensor, panel.status], api_name=False,
                    concurrency_limit=config.HEAVY_ADMIT, concurrency_id=guard.HEAVY, preprocess=False)
    panel.tensor.change(hist, [image_component, panel.tensor, paths_component], [panel.hist, panel.hist_note],
                        api_name=False, concurrency_limit=config.HEAVY_ADMIT,
                        concurrency_id=guard.HEAVY, preprocess=False)
    panel.calib_run.click(calib, [image_component, paths_component], [panel.calib_table, panel.calib_note],
                          api_name=False, concurrency_limit=config.HEAVY_ADMIT,
                          concurrency_id=guard.HEAVY, preprocess=False)
    panel.mixed_run.click(mixed_, [image_component, panel.k_values, paths_component],
                          [panel.mixed_plot, panel.mixed_table, panel.mixed_note], api_name=False,
                          concurrency_limit=config.HEAVY_ADMIT, concurrency_id=guard.HEAVY, preprocess=False)
