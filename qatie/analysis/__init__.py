"""Where does the INT8 error come from? Per-tensor SQNR, activation ranges, calibration choice,
the mixed-precision trade-off (`qatie inspect` and the app's Inspect panel).

Torch-free (ONNX Runtime + numpy + matplotlib), so the app can call it on its inference path;
only `compare_calibration` and `trade_off_curve` build PTQ models and import torch, lazily,
inside the call. One module per concern: `probe` (sessions with every quantized tensor exposed,
image fitting), `sqnr`, `histograms`, `plots`, `calibration`, `tradeoff`.

* `layer_sqnr(fp32_onnx, [ptq_onnx, qat_onnx], image)` — for one image, the signal-to-
  quantization-noise ratio of every quantized tensor of the INT8 models' sidecars, INT8 vs FP32.
  Each model runs once with every sidecar tensor exposed as an extra graph output (an in-memory
  copy of the graph; sessions are cached per file). The INT8 models expose the *quantized*
  (uint8) tensor — the output of the QuantizeLinear node, i.e. what the integer kernels really
  produce; exposing it keeps all 35 QLinearConv fusions — and it is dequantized here with the
  scale and zero point read from the graph. The FP32 model exposes the sidecar's `onnx_tensor`
  (the float tensor at the same point). SQNR_dB = 10·log10(Σ fp32² / Σ (int8 − fp32)²) over
  the image area (padding cropped off at every scale); identical tensors give +inf.
  The error is *cumulative*: it includes everything upstream. `range_sqnr_<label>_db` is the
  local part: the FP32 tensor quantized alone with that model's (scale, zero point), i.e. what
  this tensor's range and step cost on this image, independent of upstream layers.
* `activation_histogram` / `plot_histogram` — one tensor's FP32 values on the image with each
  INT8 model's [min, max] and step drawn on it (why a range loses detail: tails, outliers).
* `plot_sqnr` — the bar chart (PTQ and QAT side by side, grouped by network stage, worst
  highlighted); `write_json` / `write_csv` / `format_table` — the same as files and text.
* `compare_calibration` — PTQ with minmax / percentile / entropy calibration scored on images
  (PSNR vs FP32 output, latency), models cached per checkpoint content and settings.
* `trade_off_curve` — PTQ with the K most sensitive convs float (`qatie.quantize.keep_float`), per K.

ONNX Runtime's `onnxruntime.quantization.qdq_loss_debug` does the same exposed-outputs trick,
but it matches tensors by the naming scheme of ORT's own quantizer (`*_QuantizeLinear_Output`)
and saves augmented models to disk; our sidecar already names every pair, so this module pairs
them directly and keeps the modified sessions in memory.
"""
from __future__ import annotations

from qatie.export.sidecar import STAGE_NAMES, STAGES, model_label, read_sidecar, stage_of
from qatie.analysis.calibration import EXPORT_FORM, cached_fp32_onnx, cached_ptq, compare_calibration, format_calibration, score_models
from qatie.analysis.histograms import activation_histogram
from qatie.analysis.plots import plot_histogram, plot_sqnr, plot_trade_off
from qatie.analysis.probe import DEFAULT_MAX_SIDE, clear_cache, fit_image
from qatie.analysis.sqnr import (fake_quant, format_table, inspect_image, layer_sqnr, sqnr_db, sqnr_keys, worst_layers, write_csv,
                   write_json)
from qatie.analysis.tradeoff import DEFAULT_K, format_trade_off, trade_off_curve

__all__ = ["STAGE_NAMES", "STAGES", "model_label", "read_sidecar", "stage_of", "EXPORT_FORM", "cached_fp32_onnx",
           "cached_ptq", "compare_calibration", "format_calibration", "score_models", "activation_histogram",
           "plot_histogram", "plot_sqnr", "plot_trade_off", "DEFAULT_MAX_SIDE", "clear_cache", "fit_image", "fake_quant",
           "format_table", "inspect_image", "layer_sqnr", "sqnr_db", "sqnr_keys", "worst_layers", "write_csv",
           "write_json", "DEFAULT_K", "format_trade_off", "trade_off_curve"]
