"""The one table of tolerances every parity test reads (kornia-style).

Each entry says how far two computations of the same thing may drift and why. The measured
values these guard are printed by the tests and recorded in docs/parity.md. A test that needs
a tolerance reads it from here (never a literal), so loosening one is one reviewed line.
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
    # Float representation only: a float32 value against its float64 / JSON / checkpoint copy
    # (float32 keeps 24 bits: 6e-8 relative).
    "float32_copy": {"rel": 1e-6, "abs": 1e-7},
    # A scale stored as a float32 ONNX initializer vs the sidecar's float64 of the same float32.
    "float32_scale_in_sidecar": {"rel": 1e-7},
    # Round trips computed in float64 (sRGB ↔ linear), and 16-bit PNG values divided by 65535 in
    # float32 (half a float32 ulp of 1 is 6e-8; 1e-6 leaves room for the decoder's own scaling).
    "float64_round_trip_max_abs": 1e-9,
    "uint16_to_float32_max_abs": 1e-6,
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
