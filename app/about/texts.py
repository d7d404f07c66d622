"""Texts of the app: the About tab and short help lines. Plain words first, details after."""
from __future__ import annotations

from app import config

PAPER_TITLE = ("Bridging the Training-Deployment Gap: Gated Encoding and Multi-Scale Refinement for "
               "Efficient Quantization-Aware Image Enhancement")
PAPER = (f"*{PAPER_TITLE}* — Dat To-Thanh, Nghia Nguyen-Trong, Hoang Vo, Hieu Bui-Minh, Tinh-Anh Nguyen-Nhu "
         "(CVPR Workshops 2026, [arXiv:2604.21743](https://arxiv.org/abs/2604.21743); authors' code: "
         "[github.com/GenAI4E/QATIE](https://github.com/GenAI4E/QATIE)).")

PAPER_URL = "https://arxiv.org/abs/2604.21743"
CODE_URL = "https://github.com/GenAI4E/QATIE"

#: The page header: two lines, then "What am I looking at?" (INTRO) collapsed under it.
HEADER = """\
## QATIE — what 8-bit (INT8) quantization does to a photo enhancer
One network, three ways: **full precision (FP32)** and two **INT8** models, **PTQ** and **QAT**. \
The view below shows where they differ most on a photo; pick an example or upload your own.
"""

INTRO = f"""\
The same photo-enhancement network (from the paper [*{PAPER_TITLE}*]({PAPER_URL})) runs three times:
in **full precision (FP32)**, and as two **8-bit integer (INT8)** models — one made by
**post-training quantization (PTQ)**, one by **quantization-aware training (QAT)**. INT8 models are
about 4× smaller and faster on CPUs and phones; the question is what they cost in picture quality.

- **The line on top** says which INT8 model a viewer would take for full precision and which not
  (green: no visible difference; amber: shows when you flip between the pictures; red: visible side
  by side), how many times more noticeable pixels the other has and where, how far each is on this
  photo's JPEG scale ("like a JPEG at quality 95"), and what INT8 buys in speed and size.
- **The enlarged crops** show the spot where a viewer would notice an INT8 model's difference most
  (largest colour difference ΔE00), every square one real pixel, with its error underneath.
  The slider next to them wipes between FP32 and that INT8 model.
- **The maps** show, for every pixel, where a viewer would notice (colour difference ΔE00; above
  2.3 is noticeable) and, below, the difference in 8-bit levels on a fixed scale.
- **Details** has the table of measurements and the full explanation.
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

{PAPER} The network is its three-scale design (gated encoder blocks, multi-scale refinement).
The app opens with **the authors' own weights** (a DPED enhancer: iPhone photo → DSLR look),
imported from their released INT8 TFLite model and quantized here both ways; where `ai-edge-litert`
is installed, their INT8 model also runs as released, as a fourth picture, and beside it
**QATIE QAT-INT8 on LiteRT**: QATIE's own QAT-INT8 model written to LiteRT — the phone runtime
the paper targets — with QATIE's own scales, at the photo's size. LiteRT's XNNPACK convs compute
exactly QATIE's integer sums, so that picture is what QATIE's INT8 model gives on a phone
(docs/litert.md); both are rated like the other INT8 pictures. QATIE's own
**restoration models** (the same network trained here for noise, blur and JPEG) are the other
built-in set, under *Advanced › Models*.

## How the pictures are rated

- **Noticeable pixels**: each pixel's colour difference from full precision as people judge it,
  **CIEDE2000 (ΔE00)**; about 2.3 is one just-noticeable difference. Measured pixel for pixel on
  the picture at its processing size (photos over 0.6 MP on a copy averaged over 2×2 or more
  pixels, about what a screen shows beside other pictures).
- **Looks**: *indistinguishable* (under 1 % of pixels noticeable, mean ΔE00 under 1.2), *looks the
  same* (under 20 %, under 1.6 — a viewer would take it for full precision, like a quality-95 JPEG),
  *close* (under 30 %, under 2.2 — shows when you flip between the pictures), *visibly different*
  (more). The boundaries come from a ladder of known differences — noise of ±1 level, a +4-level
  brightening, JPEG qualities 95 / 90 / 80, a blue cast, the authors' released files — that a test
  keeps in place.
- **Like a JPEG at**: the same measure for JPEG copies of this photo's full-precision picture at
  qualities 98 to 50; each INT8 picture is placed at the nearest one (mean ΔE00).
- Level counts (below) are for engineers: a re-grading network moves most pixels by many levels,
  so a few levels of INT8 error are often invisible — which is why they do not set the rating.

## How to read the heatmaps

- Each map shows, for every pixel, how far one picture is from another in **8-bit levels**: the
  largest difference over the red, green and blue channels. 1 level is the smallest step a PNG or
  JPEG can store; 1–2 levels are invisible, a few levels show only when zoomed in, tens of
  levels are visible at a glance.
- **|PTQ-INT8 − FP32|** and **|QAT-INT8 − FP32|** isolate the quantization error: full precision
  is the model's intended output. Dark = identical; bright = different.
- With a reference (an uploaded ground truth, or the clean photo when you simulate a phone
  photo), *Error against the reference* shows each model's error **against the reference** — that
  is the enhancement's quality, of which quantization is one part.
- The colour scales are **fixed**, so a colour means the same on every photo: 0–16 levels for the
  quantization error, 0–64 levels against the reference (an arrow on the colour bar means some
  pixels are brighter still — the panel titles give each map's true maximum). The scale is
  square-root, so small errors stay visible next to big ones. Large photos are shrunk for
  display by taking the *maximum* of each block, so one bad pixel never disappears; the zoom
  shows exact pixels.

## How the numbers are measured

- **PSNR / SSIM vs the reference**: the usual image-quality scores (higher is better; PSNR in
  dB). Without a reference the table shows **agreement with full precision** — the same scores
  computed against the FP32 output: how much of the full-precision picture survives INT8.
- **Max error (levels)**: from the |INT8 − FP32| map; **Looks / Noticeable pixels / Mean ΔE00 /
  Like a JPEG at**: the perceptual rating above.
- All metrics are computed on the 8-bit images you see and download (PNG — lossless; WebP or
  JPEG would add artifacts of their own).
- **Latency**: one model pass in ONNX Runtime on this server's CPU ({config.THREADS} thread(s)), sessions
  created once and warm; the first pass produced the outputs, more passes stream in while they fit
  the compare's time budget ({config.TIMING_BUDGET_S:g} s) and no other visitor waits, and the table
  shows their median. Photos above {config.MAX_INPUT_MP:g} MP are downscaled unless you tick *Full size
  (tiled)*. The authors' TFLite picture runs in tiles beside the analysis: its latency is the CPU
  time of its tiles on one core. QATIE's QAT-INT8 on LiteRT runs after it, alone on two threads: its
  latency is the wall-clock time of that run.
"""

HEATMAP_HELP = ("Top: where a viewer would notice — each INT8 model's colour difference from FP32 (CIEDE2000 "
                "ΔE00; above 2.3 is noticeable). Below: the difference in 8-bit levels (max over R, G, B) on a "
                "fixed 0–16 scale, for engineers.")
ZOOM_HELP = ("The crops start where a viewer would notice an INT8 model's difference most (ΔE00). Click any of the full "
             "pictures below (or use these sliders) to look elsewhere; every square is one real pixel.")
