"""Texts of the app: the About tab and short help lines. Plain words first, details after."""
from __future__ import annotations

from . import config

PAPER_TITLE = ("Bridging the Training-Deployment Gap: Gated Encoding and Multi-Scale Refinement for "
               "Efficient Quantization-Aware Image Enhancement")
PAPER = (f"*{PAPER_TITLE}* — Dat To-Thanh, Nghia Nguyen-Trong, Hoang Vo, Hieu Bui-Minh, Tinh-Anh Nguyen-Nhu "
         "(CVPR Workshops 2026, arXiv:2604.21743; authors' code: github.com/GenAI4E/QATIE).")

INTRO = """\
# QATIE — what INT8 does to a photo enhancer

Upload a photo taken with a cheap phone camera (or click an example). The same enhancement network
runs three times: in **full precision (FP32)**, and as two **8-bit integer (INT8)** models — one made
by **post-training quantization (PTQ)**, one by **quantization-aware training (QAT)**. INT8 models
are about 4× smaller and faster on CPUs and phones; the question is what they cost in picture
quality. Compare the outputs, slide between them, zoom into single pixels and read the numbers.
"""

ABOUT = f"""\
## PTQ and QAT in plain words

A neural network computes with millions of decimal numbers. **Quantization** stores and computes
them as 8-bit integers instead: each number is rounded to one of 256 steps of a range. That makes
the model about 4× smaller and, on CPUs with integer instructions, faster — but rounding adds a
little error at every layer, and in an image-enhancement network those errors add up in the
picture itself (colour casts, grain, blotches in smooth skies).

- **PTQ — post-training quantization.** Take the finished full-precision model, run a few photos
  through it to see what range each internal value covers ("calibration"), and round to those
  ranges. Fast and needs no training, but the network never saw the rounding, and a few extreme
  values can stretch a range so much that ordinary values lose precision.
- **QAT — quantization-aware training.** Continue training the model for a while *with the
  rounding simulated* (fake quantization). The network learns weights and ranges that survive
  8-bit rounding. It costs a short training run; the INT8 model then stays much closer to full
  precision.

Both INT8 models here use the same scheme (8-bit weights per output channel, 8-bit activations
per tensor, the same ONNX Runtime integer kernels): they differ only in where the ranges and
weights came from. That is what makes the comparison fair.

## The paper

{PAPER} The network is its three-scale design (gated encoder blocks, multi-scale refinement);
this project retrains it, quantizes it both ways and measures the difference on your photo.

## How to read the heatmaps

- Each map shows, for every pixel, how far one picture is from another in **8-bit levels**: the
  largest difference over the red, green and blue channels. 1 level is the smallest step a PNG or
  JPEG can store; 1–2 levels are invisible, a few levels show only when zoomed in, tens of
  levels are visible at a glance.
- **|PTQ-INT8 − FP32|** and **|QAT-INT8 − FP32|** isolate the quantization error: full precision
  is the model's intended output. Dark = identical; bright = different.
- With a reference (an uploaded ground truth, or the clean photo when you simulate a phone
  photo) the second row shows each model's error **against the reference** — that is the
  enhancement's quality, of which quantization is one part.
- All maps share **one colour scale** (the colour bar, in levels); the scale is square-root, so
  small errors stay visible next to big ones, and it tops out at the 99.9th percentile of all
  maps (an arrow on the colour bar means a few pixels are brighter still — the panel titles give
  each map's true maximum). Large photos are shrunk for display by taking the
  *maximum* of each block, so one bad pixel never disappears; the zoom shows exact pixels.

## How the numbers are measured

- **PSNR / SSIM vs the reference**: the usual image-quality scores (higher is better; PSNR in
  dB). Without a reference the table shows **agreement with full precision** — the same scores
  computed against the FP32 output: how much of the full-precision picture survives INT8.
- **Max error / pixels > 2 levels off**: from the |INT8 − FP32| map.
- All metrics are computed on the 8-bit images you see and download (PNG — lossless; WebP or
  JPEG would add artifacts of their own).
- **Latency**: one model pass in ONNX Runtime on this server's CPU ({config.THREADS} thread(s)), sessions
  created once and warm; the first pass produced the outputs, more passes stream in and the table
  shows their median. Photos above {config.MAX_INPUT_MP:g} MP are downscaled unless you tick *Full size
  (tiled)*.
"""

HEATMAP_HELP = ("Per-pixel difference in 8-bit levels (max over R, G, B), one shared colour scale. "
                "Top: quantization error (INT8 vs FP32). Bottom (with a reference): each model vs the ground truth.")
ZOOM_HELP = ("Click any output image (or use the sliders) to choose where to zoom. Pixels are enlarged with "
             "nearest-neighbour, so every square is one real pixel.")
