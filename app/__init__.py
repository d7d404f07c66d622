"""The QATIE Gradio app: compare FP32 / PTQ-INT8 / QAT-INT8 on a photo, train and quantize from
the UI, benchmark. `app.py` at the repository root launches it (`python app.py`).

Modules: `config` (limits, paths, threads), `box` (untrusted work in limited worker processes),
`uploads` (reading uploaded photos, in the box), `model_check` (uploaded models: checked and run
in the box), `slots` (one heavy request per session, visitors served in turn), `upload_quota`,
`models` (model sets, shared ONNX Runtime sessions),
`core` (the torch-free compare pipeline), `render` (PNG encoding, heatmaps, zoom), `verdict`
(plain-language summary), `modelcard` (model card / manifest), `train_tab` (torch, imported
lazily), `bench_tab`, `ui` (the Blocks), `make_examples` and `measure` (scripts).
"""
