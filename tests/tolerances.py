"""The one table of tolerances every parity test reads (kornia-style), and of every other
threshold a test decides pass or fail by.

Each entry says how far two computations of the same thing may drift and why — or, below the
parity entries, how large an effect must be, or what a request may cost, and why. The measured
values these guard are printed by the tests and recorded in docs/parity.md. A test that needs
a tolerance reads it from here (never a literal: tests/test_layout.py's lints), so loosening one
is one reviewed line. `assert_close(actual, expected, key)` (tests/conftest.py) compares within
an entry and names it, its bound and the difference measured when it fails.
"""

TOLERANCES = {
    # FP32 ONNX (ORT) vs the torch model: same float math, different kernels and summation order.
    "fp32_onnx_vs_torch": {"max_abs": 1e-4},
    # The sub-pixel up-conv (four 2×2 phase convs, interleaved) and delta computed on up1's phases
    # vs the direct upsample + 3×3 conv, in torch float32: the same sums regrouped.
    "subpixel_vs_direct": {"max_abs": 1e-4},
    # One ONNX model in two ORT sessions whose options differ (memory arena off for uploaded models):
    # the same kernels; only float rounding may differ.
    "ort_session_options": {"max_abs": 1e-5},
    # uint8 input divided by 255 inside `enhance` vs the caller dividing first: float32 rounding of
    # the division only.
    "uint8_vs_float_input": {"max_abs": 1e-6},
    # The same metric reached two ways in float64 (the oracle's input vs the table's input; the
    # CLI's mean vs a mean over the same pairs): only summation order differs.
    "same_metric_two_ways": {"psnr_db": 1e-6},
    # A metric the app reports vs recomputed from the PNG it returned: same pixels, the report
    # goes through float32 and JSON.
    "reported_metric_vs_recomputed": {"psnr_db": 1e-4},
    # A big upload decoded at a reduced size (JPEG draft / PNG reduce) then resized, vs decoded in
    # full and resized to the same size: two resampling paths of the same photo (8-bit levels).
    "reduced_decode_vs_full": {"mean_levels": 1.5, "p99_levels": 6},
    # Tiles (128 px, 32 overlap) vs the whole image through a *random* width-8 network, whose
    # InstanceNorm reacts strongly to per-tile statistics: measured ≈ 21.8 dB; misplaced or
    # unfeathered tiles give ≈ 10 dB.
    "tiled_vs_whole_random_min_psnr_db": 16.0,
    # Tiled seams (tests/test_runtime.py::test_tiled_seams_blend): the feathered output's change
    # from column to column across a seam vs the bound a linear blend of its two tiles gives
    # (each tile's own change + their disagreement / (L+1)) — exact in real numbers, so only float32
    # rounding is allowed: the output is accumulated, then divided by two weight sums, in float32
    # (≤ 4 roundings of 2⁻²⁴ ≈ 6e-8 on values ≤ 1, on each of the jump's two columns: < 5e-7).
    # Measured: the feathered output stays 0.04–0.09 levels under the bound at every seam; a hard
    # stitch of the same tiles exceeds it by 6–11 levels (its cut carries the tiles' whole disagreement).
    "tiled_seam_float32_rounding": 1e-6,
    # Float representation only: a float32 value against its float64 / JSON / checkpoint copy
    # (float32 keeps 24 bits: 6e-8 relative).
    "float32_copy": {"rel": 1e-6, "abs": 1e-7},
    # A scale stored as a float32 ONNX initializer vs the sidecar's float64 of the same float32.
    "float32_scale_in_sidecar": {"rel": 1e-7},
    # Round trips computed in float64 (sRGB ↔ linear), and 16-bit PNG values divided by 65535 in
    # float32 (half a float32 ulp of 1 is 6e-8; 1e-6 leaves room for the decoder's own scaling).
    "float64_round_trip_max_abs": 1e-9,
    "uint16_to_float32_max_abs": 1e-6,
    # A flat pure colour through JPEG at quality 95 (tests/test_imageio.py: CMYK, EXIF-rotated):
    # q95 quantizes a block's mean with step 2 (10 % of the standard tables' 16–17), so flat areas
    # come back within a few levels (measured: 0 for CMYK, ≤ 3 levels away from the strip's edge,
    # 1 at the pixels checked); a rotation left undone puts the other colour there (255 levels).
    "jpeg_q95_flat_colour": {"max_abs": 8 / 255},
    # A loss that is exactly 0 in real numbers (cosine of a tensor with itself), in float32.
    "zero_loss_abs": 1e-6,
    # The app rounds what it reports: file sizes to 3 decimals of a MB (app/compare/handlers.py).
    "reported_file_mb": 1e-3,
    # A new network's delta conv starts at zero, so its output is its input up to the output's
    # 8-bit rounding (q_output is pinned to 1/255): at most one level.
    "untrained_identity_max_abs": 1 / 255,
    # "Moved": a learned range counts as changed when it differs by more than this (relative);
    # float32 round trips alone change a range by < 1e-6.
    "learned_range_moved_rel": 1e-4,
    # QATIE's own LiteRT export vs QATIE's arithmetic on LiteRT's inputs, op by op, and vs FP32
    # (tests/test_litert.py, docs/litert.md; `qatie litert-proof`).
    "litert_export": {
        # LiteRT requantizes in its own arithmetic (fixed-point multipliers in the builtin kernels,
        # XNNPACK's LeakyReLU multipliers): one level at a near-tie, never more. Measured: XNNPACK
        # convs 0 levels, LeakyReLU 3.3 % of values by 1; builtin convs 0.21 %, LeakyReLU 17.5 % by 1.
        "op_max_levels": 1,
        # share of values one level off, per op kind, at most (17.5 % measured: builtin LeakyReLU)
        "op_off_share_max": 0.25,
        # the same model's LiteRT and ONNX INT8 outputs scored against FP32: the goal
        # (measured 0.08 dB at full HD: 44.19 vs 44.28 dB; 0.09 dB on a 256×200 crop)
        "agreement_gap_db": 1.0,
    },
    # The authors' TFLite files vs the imported torch network (tests/test_tflite_import.py).
    "tflite_import": {
        # each conv's output, fed the TFLite's own input: only that one layer's INT8 rounding
        # (≥ 21.6 dB measured at up4.conv, the coarsest output grid; docs/paper_model.md). A
        # swapped kernel gives ≈ 0 dB; a transposed one keeps its smooth part and loses ≥ 10 dB.
        "conv_min_sqnr_db": 20.0,
        # the whole wired network vs the TFLite's dequantized output (49.0 dB measured)
        "wired_min_sqnr_db": 40.0,
        # the two released files' float biases: int32 roundings at each file's own input scale
        # (bias step = input scale × weight scale)
        "bias_between_files_max_abs": 2e-3,
        # a wrong mapping falls below this: swapped branches share nothing (measured −3.3 and −4.3 dB,
        # i.e. ≤ 0 dB); 10 dB is halfway to the 20 dB every right conv reaches
        "wrong_conv_max_sqnr_db": 10.0,
        # a transposed kernel keeps its smooth part but loses at least this much against the right
        # one (measured 22.5 vs 42.2 dB: 19.7 dB lost); half the measured loss
        "transposed_kernel_min_loss_db": 10.0,
        # docs/paper_model.md: the full-HD file's 3-level tanh gates alone cost at least this much more
        # PSNR vs FP32 than the 100×100 file's 5–17-level ones (measured 16.6 vs 32.7 dB: 16.1 dB);
        # half the measured loss
        "three_level_gates_min_loss_db": 8.0,
    },
    # torch fake-quant simulation vs ORT INT8 of the same QAT model. Pixel-exact parity is not
    # reachable: tiny float differences flip roundings that propagate through 35 layers. What
    # must hold is that both score the same against the targets, and stay close to each other.
    "qat_sim_vs_ort": {
        "metric_psnr_db": 0.02,  # |mean PSNR(sim) − mean PSNR(ORT)| vs targets, over the test images
        "metric_ssim": 0.001,
        "agreement_psnr_min_db": 40.0,  # PSNR of ORT output against the sim output
        "max_levels": 16,  # largest single-pixel difference, in 8-bit levels
        # Mean |difference| in levels. Measured: 0.115 on the first (nearly identity) shipped model,
        # 0.647 on the first trained one (0.375 on today's, with learned ranges), whose larger
        # corrections carry more flipped roundings to the output (the throwaway model: 1.8).
        # 1.0 guards trained models with headroom for retraining; a wrong scale or a missing
        # quantizer costs tens of levels.
        "mean_levels": 1.0,
    },
    # The same comparison on an *untrained* random network: random weights amplify every flipped
    # rounding layer after layer (measured here: max 5 levels, mean 0.76 at the output), so the
    # bound is looser; it still catches a wrong scale, zero point or missing quantizer (tens of levels).
    "random_sim_vs_ort": {"max_levels": 16, "mean_levels": 1.5},
    # ----------------------------------------------------------------------------------------
    # Thresholds that are not parity: how large an effect must be to count, how far apart two
    # different things must be, how much a request may cost. Each says what is measured and why
    # that bound (derived where it can be; else from the measured value, which it quotes).
    # ----------------------------------------------------------------------------------------
    # Every degradation at once (tone, blur, noise, JPEG; tests/test_data.py) must cost the photo
    # visibly: PSNR below 35 dB, an RMS error of 4.5 levels (255·10^(−35/20)). Measured 19.8–25.8 dB
    # over 40 seeds; a degradation that did nothing would give ∞, a single level of noise ≈ 48 dB.
    "strong_degradation_max_psnr_db": 35.0,
    # tests/test_train.py's short run (width 8, 150 steps, 4 half-size photos, a light learnable
    # degradation) learns. The mean loss of its last 20 steps over its first 20's: measured 0.46
    # (a run that does not learn stays ≈ 1; 0.8 leaves room for another CPU's float rounding). The
    # mean PSNR gain over the fresh network (exactly the identity) on four held-out crops: measured
    # 12.9–14.3 dB; at least half of that, so a run that learnt only part of the correction fails.
    "short_training": {"loss_ratio_max": 0.8, "held_out_gain_min_db": 6.0},
    # SQNR of a tensor whose only error is float32 rounding (the network input: an 8-bit image
    # quantized with scale 1/255; 24 bits ≈ 146 dB, measured 147.6) vs tensors with real 8-bit
    # quantization error (8 bits ≈ 50 dB for a full-range signal; measured 17.5–43.8): between.
    "sqnr_float_rounding_only_min_db": 100.0,
    # One tensor's scale multiplied by 16 (tests/test_inspect.py): its step is 16× coarser, so its
    # range-only error power grows 256×, 20·log10 16 = 24.1 dB where the error is uniform (measured
    # 24.2); 15 dB leaves room for tensors whose fine-step error is not uniform. Its full SQNR also
    # carries the error from upstream (25.1 dB before), so it loses less (measured 10.3 dB);
    # 6 dB = 4× the error power.
    "scale_times_16": {"sqnr_min_loss_db": 6.0, "range_sqnr_min_loss_db": 15.0},
    # An INT8 model is a real INT8 model of its FP32 one (tests/test_report.py): its output's PSNR
    # against the FP32 output lies between a broken quantizer's (a wrong scale costs tens of levels:
    # 20 dB is an RMS error of 25 levels) and a copy's (float rounding only: ∞, or ≥ 100 dB as in
    # sqnr_float_rounding_only_min_db). The shipped card measures 35.7–53.2 dB (MODEL_CARD.json).
    "real_int8_vs_fp32_psnr_db": {"min": 20, "max": 80},
    # The report's tiled (256-px tiles) vs whole-image outputs of the shipped models: they differ
    # (per-tile InstanceNorm statistics; a tiling that ran whole would give ∞) but not wildly
    # (misplaced or unfeathered tiles ≈ 10 dB, as in tiled_vs_whole_random_min_psnr_db). The
    # shipped card measures 41.7–53.3 dB.
    "report_tiled_vs_whole_psnr_db": {"min": 20, "max": 80},
    # Eight concurrent compares each get their own photo's result (tests/test_app_api.py): an
    # enhancer changes tone, not layout, so its output's luma correlates strongly with its photo's
    # (measured 0.79–0.98 over the 8 photos × 3 models); a picture of another scene, or noise, near 0:
    # 0.5 separates the two.
    "enhanced_vs_own_photo_min_luma_corr": 0.5,
    # Decoding tests/test_imageio.py's 0.9 MB PNG whose EXIF would cost Pillow's getexif() ~12 GB
    # (60,000 tags each copying one 200 kB value): reading the orientation in place keeps the peak
    # traced memory at a few times the file (measured 4.6 MB); 20 MB still says "a few MB", three
    # orders of magnitude under what reading the EXIF through getexif() would take.
    "exif_bomb_decode_peak_mb": 20,
    # app.boundary.guard stopping ONNX Runtime at a deadline (tests/test_limits.py): a 0.3 s deadline
    # on a 2048×2048 pass that takes several seconds; ONNX Runtime sees the terminate flag between
    # kernels, so the pass ends within the deadline plus one kernel (measured 0.34 s in all); 2 s
    # allows a loaded CI machine and still fails a deadline that is not enforced (the whole pass).
    "onnx_deadline": {"deadline_s": 0.3, "stopped_within_s": 2.0},
    # The Train tab's defaults use "about half" the budget of one training (app/train/handlers.py;
    # 46.7 of 100 units): under two thirds, so a visitor can still raise steps or crops by half.
    "train_defaults_max_budget_share": 2 / 3,
    # What one hostile request may cost the server (tests/test_app_hostile.py; rows measured in
    # docs/limits.md on an idle 2-core AMD EPYC, and while writing this on a shared one). Seconds per
    # request: ≤ 6.2 s idle, ≤ 9.5 s shared (the tiny training row has its own 240 s); 30 s is three
    # times that and still fails a request that runs on unbounded. A normal 256×256 compare right
    # after: a few seconds; 15 s passes on a loaded machine and fails a server stuck behind the
    # attack. Peak RSS with children: the server (≈ 500 MB) plus one box worker at its limit
    # (QATIE_BOX_MEMORY_MB, 1536 MB beyond its imports): measured 2027–2042 MB at most; a request
    # that escaped the box would reach gigabytes more. After: back near the idle server (measured
    # 423–630 MB; 849–896 MB once training imported torch); a leaked image or worker stays above.
    "hostile_request": {"seconds": 30.0, "normal_compare_s": 15.0, "peak_rss_mb": 3000.0, "after_rss_mb": 1500.0},
}

# --------------------------------------------------------------------------------------------
# INT8 kernels: exactness depends on the CPU (qatie.runtime.cpu.int8_path; derivation in qatie.runtime.int8_reference)
# --------------------------------------------------------------------------------------------
# ONNX Runtime's U8S8 conv kernels on `avx2` (and `avx512-core`) add uint8×int8 products in
# adjacent pairs into a saturating int16 (VPMADDUBSW); the other paths sum exactly in int32.
# A pair is |a0·w0 + a1·w1| ≤ 255·(|w0| + |w1|), so weights of magnitude ≤ 64 give at most
# 255·128 = 32640 ≤ 32767: no pair can saturate, whatever the input, on any path. QuantSpec v3
# exports are pair-safe in the layout the exporter writes (tests/test_exact_everywhere.py); tests
# that export *without* the graph passes (whose padding keeps pairs within one kernel tap) use
# weights in −64…64 (tests/conftest.py: non_saturating_weights), safe in any layout; the
# saturating case is tested separately (tests/test_int8_path.py), per path.
NON_SATURATING_WEIGHT_MAX = 64
# ONNX Runtime's conv output vs the model of the detected path (qatie.runtime.int8_reference.conv_u8:
# exact int sums, or AVX2's saturating pairs), given the same uint8 input: the model performs the
# kernel's integer arithmetic and its float32 requantization (same operations, same order,
# round half to even), so the difference is 0 levels on every path — measured 0 on all 41 convs
# of both shipped models on avx512-vnni (AMD EPYC) and on avx2 (qemu-x86_64 -cpu Haswell).
INT8_CONV_VS_PATH_MODEL_LEVELS = 0
