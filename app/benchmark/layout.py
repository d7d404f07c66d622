"""The Benchmark tab's layout and events, apart from `app/ui.py` so the page's composition stays short.

`build()` creates the settings, the results and the model card's latency tables, returning them in
a `BenchmarkTab`; `wire()` connects them to `app.benchmark.handlers`. The model list is also filled by the
Train tab (wired by `app/ui.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from app import config, models
from app.benchmark import handlers as bench_tab
from app.boundary import guard


@dataclass
class BenchmarkTab:
    model_set: gr.Dropdown
    sizes: gr.CheckboxGroup
    threads: gr.Radio
    runs: gr.Slider
    litert: gr.Checkbox
    run: gr.Button
    files: gr.Markdown
    status: gr.Markdown
    plot: gr.Image
    table: gr.Dataframe


def build(default_set: str, card) -> BenchmarkTab:
    """The tab's components, in the current Tab context; `card` is the loaded model card
    (`app.about.modelcard.load()`), whose latency tables close the tab."""
    gr.Markdown("Latency of the three models at several resolutions on *this* server's CPU "
                f"({config.effective_cpus()} usable cores), through ONNX Runtime: one warm-up, then "
                "interleaved timed runs (the order rotates each round, so noise hits all models alike)."
                + (" The INT8 models can also run on LiteRT, the phone runtime the paper targets (rows "
                   "\"… on LiteRT\")." if bench_tab.litert_available() else ""))
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
            # Where ai-edge-litert is installed: the INT8 models' LiteRT exports in the same rounds.
            b_litert = gr.Checkbox(value=True, label="Also time the INT8 models on LiteRT (the phone runtime)",
                                   info="Each written to LiteRT with QATIE's own scales, once per size "
                                        "(about a second the first time).",
                                   visible=bench_tab.litert_available())
            b_run = gr.Button("Run benchmark", variant="primary")
            b_files = gr.Markdown(bench_tab.files_md(models.shipped_set(default_set)), elem_id="bench-files",
                                  elem_classes="card-tables")
        with gr.Column(scale=2):
            b_status = gr.Markdown()
            b_plot = gr.Image(label="Latency vs resolution", format="png", interactive=False,
                              alt_text="Latency of the FP32, PTQ-INT8 and QAT-INT8 models at each image size"
                                       + (", and of the INT8 ones on LiteRT" if bench_tab.litert_available() else ""))
            b_table = gr.Dataframe(bench_tab.empty_table(), label="Results", interactive=False)
    gr.Markdown("### The model card's numbers\n\n" + card.tables_md(("latency", "median ms", "bench")),
                elem_classes=["card-tables"])
    return BenchmarkTab(model_set=b_model_set, sizes=b_sizes, threads=b_threads, runs=b_runs, litert=b_litert, run=b_run,
                        files=b_files, status=b_status, plot=b_plot, table=b_table)


def wire(tab: BenchmarkTab, session_sets: gr.State) -> None:
    """Run (the public /benchmark endpoint) and the file list that follows the chosen set."""
    by_name = {"plot": tab.plot, "table": tab.table, "status": tab.status}
    tab.run.click(bench_tab.run, [tab.model_set, session_sets, tab.sizes, tab.threads, tab.runs, tab.litert],
                  [by_name[name] for name in bench_tab.BENCH_OUTPUTS],  # the order `app.outputs.as_slots` lays out
                  api_name="benchmark", concurrency_limit=config.HEAVY_ADMIT, concurrency_id=guard.HEAVY,
                  time_limit=900)
    tab.model_set.change(bench_tab.files_for, [tab.model_set, session_sets], tab.files, api_visibility="private",
                         queue=False)
