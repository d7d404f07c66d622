"""The Train tab's layout and events, apart from `app/ui.py` so the page's composition stays short.

`build()` creates the settings, the buttons and the live status, curves and downloads, returning
them in a `TrainTab`; `wire()` connects Train and Cancel to `app.train.handlers`. A finished training
adds its set to the session and to the other tabs' model lists, so `wire()` takes those dropdowns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import gradio as gr

from app import config
from app.boundary import guard
from app.train import handlers as train_tab


@dataclass
class TrainTab:
    data: gr.Radio
    photos: gr.File
    init: gr.Radio
    width: gr.Radio
    fp32: gr.Slider
    qat: gr.Slider
    batch: gr.Slider
    patch: gr.Slider
    lr: gr.Number
    qat_lr: gr.Number
    method: gr.Radio
    run: gr.Button
    cancel: gr.Button
    status: gr.Markdown
    curves: gr.Image
    files: gr.File


def build() -> TrainTab:
    """The tab's components, in the current Tab context."""
    gr.Markdown(
        "Train a small FP32 model, quantize it with **PTQ** (calibration only) and **QAT** (a short "
        "fine-tune with simulated INT8), and export all three to ONNX. The new set joins the Compare and "
        "Benchmark tabs' model lists for *this browser session* only. Short trainings make weak "
        "enhancers — the point is to watch what quantization does to them.")
    with gr.Accordion("Compute budget of this demo", open=False):
        gr.Markdown(train_tab.budget_md(), elem_id="train-budget")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            t_data = gr.Radio([train_tab.DATA_SAMPLES, train_tab.DATA_UPLOADS],
                              value=train_tab.DATA_SAMPLES, label="Training photos")
            t_photos = gr.File(label=f"Your photos (clean and well exposed; up to "
                                     f"{train_tab.MAX_TRAIN_PHOTOS}; degraded on the fly)",
                               file_count="multiple", file_types=["image"], type="filepath",
                               visible=False)  # shown when "My photos" is picked (`wire`)
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
        with gr.Column(scale=2):
            # The button with the progress line right under it, at the top: both on the first screen.
            with gr.Row():
                t_run = gr.Button("Train and quantize", variant="primary", elem_id="train-btn")
                t_cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            t_status = gr.Markdown("Set the run on the left (the defaults take a few minutes), then press "
                                   "**Train and quantize**.", elem_id="train-status")
            gr.Markdown("**Training curves** (live)")
            t_curves = gr.Image(label="Training curves (live)", show_label=False, format="png", interactive=False,
                                elem_id="train-curves",
                                alt_text="Training loss and validation PSNR of the model and of the unprocessed "
                                         "input, by step, FP32 then QAT")
            t_files = gr.File(label="Download the models (.onnx, .pt, INT8 sidecars)",
                              file_count="multiple", interactive=False)
    return TrainTab(data=t_data, photos=t_photos, init=t_init, width=t_width, fp32=t_fp32, qat=t_qat,
                    batch=t_batch, patch=t_patch, lr=t_lr, qat_lr=t_qat_lr, method=t_method, run=t_run,
                    cancel=t_cancel, status=t_status, curves=t_curves, files=t_files)


def wire(tab: TrainTab, session_sets: gr.State, model_dropdowns: Sequence[gr.Dropdown]) -> None:
    """Train (the public /train endpoint) and Cancel. The trained set goes into `session_sets`
    and into each of `model_dropdowns` (the Compare and Benchmark tabs' model lists)."""
    compare_models, bench_models = model_dropdowns
    by_name = {"status": tab.status, "curves": tab.curves, "files": tab.files, "sets": session_sets,
               "compare_models": compare_models, "bench_models": bench_models}
    t_evt = tab.run.click(
        train_tab.train,
        [tab.data, tab.init, tab.width, tab.fp32, tab.qat, tab.batch, tab.patch, tab.lr, tab.qat_lr, tab.method,
         tab.photos, session_sets],
        [by_name[name] for name in train_tab.TRAIN_OUTPUTS],  # the order `app.outputs.as_slots` lays out
        api_name="train", concurrency_limit=config.HEAVY_ADMIT, concurrency_id=guard.HEAVY, time_limit=3600,
        show_progress="hidden",  # one progress display: the status line (no overlay on the curves)
    )
    tab.cancel.click(train_tab.cancel, None, tab.status, cancels=[t_evt], queue=False, api_visibility="private")
    # The upload box only when it is used: the Train button stays on the first screen.
    tab.data.change(lambda d: gr.update(visible=d == train_tab.DATA_UPLOADS), tab.data, tab.photos, queue=False,
                    api_visibility="private")
