"""The `qatie` command line: one subcommand per pipeline stage, each a thin wrapper on the package
(the commands themselves: `qatie.cli.commands`)."""
from __future__ import annotations

import argparse
import sys

from qatie.cli.commands import (cmd_bench, cmd_degrade, cmd_deviation, cmd_enhance, cmd_eval, cmd_export,
                                cmd_import_tflite, cmd_inspect, cmd_litert_proof, cmd_ptq, cmd_qat, cmd_report, cmd_run,
                                cmd_train)
from qatie.config import CALIBRATION_METHODS, RUN_STEPS, PTQConfig, QATConfig
from qatie.errors import QatieError


def _threads(cmd, default: int | None = 2, what: str = "ONNX Runtime threads") -> None:
    cmd.add_argument("--threads", type=int, default=default,
                     help=what if default is None else f"{what} (default {default})")


def _json(cmd, what: str = "the full result") -> None:
    cmd.add_argument("--json", metavar="FILE", help=f"write {what} here (JSON)")


def _train(sub) -> None:
    cmd = sub.add_parser("train", help="train the FP32 network", description="Train the FP32 network. "
                         "SPEC: clean:DIR | pairs:INPUT_DIR,TARGET_DIR | dped:ROOT[:phone] | samples")
    cmd.add_argument("--data", action="append", metavar="SPEC", help="training data (repeatable)")
    cmd.add_argument("--val", action="append", metavar="SPEC", help="extra validation pairs to monitor (repeatable)")
    cmd.add_argument("--config", help="JSON file of TrainConfig fields, or a run recipe (its \"train\"); flags "
                                      "override it")
    cmd.add_argument("--out", required=True, help="output folder (last.pt, best.pt, train_log.jsonl)")
    cmd.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    cmd.add_argument("--width", type=int, help="network width c (the paper's: 16, 24, 32; any integer ≥ 4)")
    cmd.add_argument("--variant")
    cmd.add_argument("--steps", type=int)
    cmd.add_argument("--batch-size", type=int)
    cmd.add_argument("--patch", type=int)
    cmd.add_argument("--lr", type=float)
    cmd.add_argument("--loss", choices=("paper", "l1"))
    cmd.add_argument("--seed", type=int)
    _threads(cmd, None, "torch threads (default: the recipe's)")
    cmd.add_argument("--device", help="auto, cpu or cuda")
    cmd.set_defaults(func=cmd_train)


def _degrade(sub) -> None:
    cmd = sub.add_parser("degrade", help="write phone-camera-degraded copies of clean photos",
                         description="Degrade every image in IN_DIR (and its direct subfolders) with the "
                         "phone-camera model and write OUT_DIR/<same path>.png. Each image's randomness "
                         "comes from (its relative path, --seed), so the output equals the inputs "
                         "`qatie eval --clean-dir IN_DIR --seed S` scores.")
    cmd.add_argument("--seed", type=int, required=True, help="global seed (same seed → same images)")
    cmd.add_argument("--config", metavar="JSON", help="DegradationConfig fields overriding the eval "
                     "defaults: a JSON file or an inline object, e.g. '{\"p_jpeg\": 0}'")
    cmd.add_argument("in_dir", metavar="IN_DIR", help="folder of clean photos")
    cmd.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    cmd.set_defaults(func=cmd_degrade)


def _enhance(sub) -> None:
    cmd = sub.add_parser("enhance", help="enhance one image file",
                         description="Enhance INPUT (any common image file) with MODEL and write OUTPUT "
                         "(8-bit .png or .jpg). MODEL: a .pt checkpoint, an .onnx file, or a shipped "
                         "name: fp32, ptq, qat.")
    cmd.add_argument("--model", required=True, help=".pt checkpoint, .onnx file, or fp32 / ptq / qat")
    _threads(cmd, 2, "CPU threads")
    cmd.add_argument("input", metavar="INPUT", help="image file to enhance")
    cmd.add_argument("output", metavar="OUTPUT", help="output .png / .jpg")
    cmd.set_defaults(func=cmd_enhance)


def _eval(sub) -> None:
    cmd = sub.add_parser("eval", help="score models on image pairs (PSNR/SSIM, agreement)",
                         description="Score models against targets: real pairs (--input-dir/--target-dir, "
                         "matched by file stem) or clean photos degraded at a fixed seed (--clean-dir, "
                         "--seed; on the shared clean set only its test split). The unprocessed input is "
                         "scored too, and every model after the first is compared with the first "
                         "model's output (how INT8 models are scored against FP32).")
    cmd.add_argument("--models", required=True, metavar="M1,M2",
                     help="comma-separated: .pt checkpoints, .onnx files, or fp32 / ptq / qat")
    cmd.add_argument("--input-dir", help="folder of input images")
    cmd.add_argument("--target-dir", help="folder of target images (same stems)")
    cmd.add_argument("--clean-dir", help="folder of clean photos to degrade (instead of pairs)")
    cmd.add_argument("--seed", type=int, default=0, help="degradation seed for --clean-dir (default 0)")
    cmd.add_argument("--split", choices=("test", "val"), default="test",
                     help="split of the shared clean set to use (default test)")
    cmd.add_argument("--limit", type=int, help="use only the first N images")
    _threads(cmd, 2, "CPU threads")
    _json(cmd, "the full result (summary + per image)")
    cmd.set_defaults(func=cmd_eval)


def _ptq(sub) -> None:
    cmd = sub.add_parser("ptq", help="post-training quantization → INT8 ONNX",
                         description="Calibrate activation ranges of an FP32 checkpoint on --num-calib crops "
                         "of --calib and write the INT8 QDQ ONNX model (QuantSpec: int8 per-channel weights, "
                         "uint8 per-tensor activations) with its JSON sidecar of scales and zero points.")
    cmd.add_argument("--checkpoint", required=True, help="FP32 .pt checkpoint")
    cmd.add_argument("--config", metavar="JSON", help="a PTQConfig recipe, or a run recipe (its \"ptq\"; configs/*.json); flags override it")
    p_default = PTQConfig()  # the defaults the help names are the recipe's own
    cmd.add_argument("--method", choices=CALIBRATION_METHODS,
                     help=f"range calibration (default {p_default.method}: the standard PTQ baseline)")
    cmd.add_argument("--percentile", type=float, help=f"for --method percentile (default {p_default.percentile})")
    cmd.add_argument("--calib", metavar="SPEC", help=f"calibration data SPEC (default {p_default.calib})")
    cmd.add_argument("--num-calib", type=int, help=f"calibration crops (default {p_default.num_calib})")
    cmd.add_argument("--calib-crop", type=int, metavar="N",
                     help=f"calibration crop side (default {p_default.calib_crop}); 0: whole photos, the resolution "
                          "the app runs them at")
    cmd.add_argument("--seed", type=int)
    cmd.add_argument("--keep-float", metavar="auto:K|CONVS",
                     help="mixed precision: auto:K keeps the K most sensitive convs float (ranked by a per-conv "
                     "analysis on the calibration crops, stored in the sidecar), or a comma list of conv names "
                     "(e.g. ref_f2.skip,delta)")
    cmd.add_argument("--out", required=True, help="output .onnx")
    cmd.set_defaults(func=cmd_ptq)


def _inspect(sub) -> None:
    cmd = sub.add_parser("inspect", help="per-tensor INT8 error (SQNR vs FP32) on one image",
                         description="Run the FP32 model and each INT8 model on IMAGE with every quantized tensor "
                         "of the INT8 sidecars exposed, and print the signal-to-quantization-noise ratio (dB) of "
                         "each, INT8 vs FP32 (cumulative), plus the tensor's own range-only SQNR; the worst are "
                         "marked. Images over --max-side are downscaled first.")
    cmd.add_argument("--models", default="fp32,ptq,qat", metavar="FP32,INT8,...",
                     help="FP32 model first, then INT8 models: .onnx files or fp32/ptq/qat (default fp32,ptq,qat)")
    cmd.add_argument("image", metavar="IMAGE", help="image file")
    _json(cmd, "{image, layers: [{name, stage, sqnr_ptq_db, sqnr_qat_db, ...}]}")
    cmd.add_argument("--csv", metavar="FILE", help="write one row per tensor")
    cmd.add_argument("--plot", metavar="PNG", help="save the SQNR bar chart")
    cmd.add_argument("--histogram", metavar="TENSOR", help="also histogram this tensor's FP32 values with the INT8 ranges")
    cmd.add_argument("--histogram-plot", metavar="PNG", help="where to save it (default TENSOR_histogram.png)")
    cmd.add_argument("--worst", type=int, default=5, help="mark this many worst tensors per model (default 5)")
    cmd.add_argument("--max-side", type=int, default=384, help="downscale larger images to this longer side (default 384)")
    _threads(cmd)
    cmd.set_defaults(func=cmd_inspect)


def _qat(sub) -> None:
    cmd = sub.add_parser("qat", help="quantization-aware fine-tuning of an FP32 checkpoint",
                         description="Fine-tune an FP32 checkpoint with fake quantization of exactly the "
                         "QuantSpec's tensors (ranges initialised by calibration, then learned, or moving averages "
                         "with --no-learnable). Writes a QAT checkpoint (weights + ranges). Defaults: the shipped "
                         "recipe (qatie.config.QATConfig; configs/restoration.json).")
    cmd.add_argument("--checkpoint", required=True,
                     help="FP32 .pt checkpoint to start from, or a QAT one to continue (its weights and ranges)")
    cmd.add_argument("--teacher", help="the FP32 checkpoint to distil from when continuing a QAT checkpoint "
                                       "(default: the source it records)")
    cmd.add_argument("--config", metavar="JSON", help="a QATConfig recipe, or a run recipe (its first QAT stage; configs/*.json); flags override it")
    cmd.add_argument("--data", action="append", metavar="SPEC", help="training data (repeatable; default samples)")
    cmd.add_argument("--val", action="append", metavar="SPEC", help="extra validation pairs to monitor")
    q_default = QATConfig()
    cmd.add_argument("--steps", type=int, help=f"default {q_default.steps}")
    cmd.add_argument("--lr", type=float, help=f"learning rate (default {q_default.lr:g}; the paper used 1e-5)")
    cmd.add_argument("--learnable", action=argparse.BooleanOptionalAction,
                     help="learn scales and zero points (LSQ; the default) or follow moving averages (--no-learnable)")
    cmd.add_argument("--distill", type=float, metavar="W",
                     help="weight (0–1) of matching the FP32 model's own output instead of the target "
                          "(1, the default: distillation only — QAT learns to agree with full precision)")
    cmd.add_argument("--batch-size", type=int, help=f"default {q_default.batch_size}")
    cmd.add_argument("--patch", type=int, help=f"default {q_default.patch}")
    cmd.add_argument("--num-calib", type=int, help=f"default {q_default.num_calib}")
    cmd.add_argument("--calib-method", choices=CALIBRATION_METHODS,
                     help=f"how the initial ranges are calibrated (default {q_default.calib_method})")
    cmd.add_argument("--seed", type=int)
    _threads(cmd, None, "torch threads (0, the default: torch's own choice)")
    cmd.add_argument("--resume", action="store_true", help="continue the run folder")
    cmd.add_argument("--run-dir", help="run folder for last.pt/best.pt/log (default: <out stem>_run beside --out)")
    cmd.add_argument("--out", required=True, help="output QAT checkpoint .pt")
    cmd.set_defaults(func=cmd_qat)


def _import_tflite(sub) -> None:
    cmd = sub.add_parser("import-tflite", help="the paper authors' INT8 TFLite model → FP32 checkpoint",
                         description="Read the authors' released INT8 TFLite model (needs ai-edge-litert), map its "
                         "35 convs and 5 InstanceNorms onto build_model(32) and write an FP32 checkpoint with the "
                         "dequantized weights, the source file's SHA-256 and its licence. docs/paper_model.md "
                         "shows the layer-by-layer proof of the mapping.")
    cmd.add_argument("model", metavar="MODEL.tflite")
    cmd.add_argument("--out", required=True, help="output FP32 .pt checkpoint")
    cmd.set_defaults(func=cmd_import_tflite)


def _export(sub) -> None:
    cmd = sub.add_parser("export", help="checkpoint → ONNX (FP32, or INT8 for a QAT checkpoint); INT8 → LiteRT",
                         description="An FP32 checkpoint becomes the FP32 ONNX model; a QAT checkpoint the "
                         "INT8 QDQ ONNX model with its learned ranges (+ JSON sidecar). --format tflite writes "
                         "the LiteRT (TFLite) INT8 model of a QATIE INT8 model with its own scales, for one "
                         "input size (docs/litert.md).")
    cmd.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    cmd.add_argument("--checkpoint", help="the .pt to export (onnx; with tflite: a QAT checkpoint, through ONNX)")
    cmd.add_argument("--model", help="tflite: a shipped INT8 model (paper-qat, paper-ptq, qat, ptq) or an INT8 .onnx")
    cmd.add_argument("--size", default="1920x1080",
                     help="tflite: the fixed input size, HEIGHTxWIDTH (1920x1080 = portrait full HD, as the "
                     "authors' file; 1080x1920 landscape)")
    cmd.add_argument("--out", required=True, help="output .onnx or .tflite")
    cmd.set_defaults(func=cmd_export)


def _litert_proof(sub) -> None:
    cmd = sub.add_parser("litert-proof", help="prove a LiteRT export op by op against QATIE's arithmetic",
                         description="Export an INT8 model to LiteRT at each photo's size and check every int8 "
                         "tensor of the file against QATIE's arithmetic on LiteRT's own inputs (convs: the exact "
                         "integer sums of qatie.runtime.int8_reference), per kernel set; then each photo's "
                         "LiteRT and ONNX INT8 outputs against FP32 (docs/litert.md).")
    cmd.add_argument("--model", default="paper-qat", help="a shipped INT8 model name or an INT8 .onnx")
    cmd.add_argument("--fp32", default=None, help="the FP32 .onnx to score against (default: a shipped model's own; "
                                                  "needed for an .onnx path)")
    cmd.add_argument("--images", nargs="*", help="photos (default: 120×136 crops of astronaut, coffee, chelsea)")
    cmd.add_argument("--kernels", default="xnnpack,builtin",
                     help="LiteRT kernel sets to prove: xnnpack, builtin (\"\" = only the agreement with FP32)")
    _threads(cmd)
    cmd.add_argument("--json", help="also write the rows as JSON here")
    cmd.set_defaults(func=cmd_litert_proof)


def _bench(sub) -> None:
    cmd = sub.add_parser("bench", help="latency of ONNX models in ONNX Runtime",
                         description="Time models at each size (H×W), interleaved, after warm-up; print "
                         "median/min/max ms, ratio to FP32, file size and peak RSS.")
    cmd.add_argument("--models", default="fp32,ptq,qat", help="comma-separated .onnx files or fp32/ptq/qat")
    cmd.add_argument("--sizes", default="512x512,1280x720,1920x1080", help="comma-separated HxW")
    _threads(cmd)
    cmd.add_argument("--runs", type=int, default=5)
    cmd.add_argument("--warmup", type=int, default=1)
    cmd.add_argument("--reference-tflite", metavar="PATH", help="also time the authors' INT8 TFLite model")
    cmd.add_argument("--litert", action="store_true",
                     help="also time each INT8 model's LiteRT export at each size (same rounds, same threads)")
    _json(cmd, "every row and the machine")
    cmd.set_defaults(func=cmd_bench)


def _deviation(sub) -> None:
    cmd = sub.add_parser("deviation", help="INT8 output vs the exact integer result on this CPU's kernels",
                         description="Run INT8 models in ONNX Runtime and compare with the exact integer result "
                         "(ONNX Runtime's AVX2 kernels saturate int16 pair sums; qatie.runtime.int8_reference): output "
                         "levels, agreement dB, and per conv the numpy reference and the model of this CPU's kernels.")
    cmd.add_argument("--models", default="ptq,qat", help="comma-separated INT8 .onnx files or ptq/qat")
    cmd.add_argument("--size", default="128x192", help="HxW centre crop of the three sample photos")
    cmd.add_argument("--images", nargs="+", metavar="IMAGE", help="your images instead of the sample crops")
    _threads(cmd, 1)
    _json(cmd, "the deviation of each model (and each conv)")
    cmd.set_defaults(func=cmd_deviation)


def _report(sub) -> None:
    cmd = sub.add_parser("report", help="measure the shipped models and write the model card",
                         description="Evaluate input / FP32 / PTQ-INT8 / QAT-INT8 (and percentile/entropy PTQ) on the "
                         "synthetic test split and, when ../shared is present, the real PolyU pairs; benchmark "
                         "latency; write MODEL_CARD.md + .json, the crop figure under assets/ and checkpoints/manifest.json.")
    cmd.add_argument("--out", default="checkpoints/MODEL_CARD.md")
    cmd.add_argument("--checkpoints", default="checkpoints", help="folder of the shipped models")
    cmd.add_argument("--sizes", default="512x512,1280x720,1920x1080")
    _threads(cmd)
    cmd.add_argument("--runs", type=int, default=5)
    cmd.add_argument("--limit", type=int, help="first N images of each set (quick check; not for the card)")
    cmd.add_argument("--readme", metavar="README.md", help="also rewrite this README's model-card block from the results")
    cmd.set_defaults(func=cmd_report)


def _run(sub) -> None:
    cmd = sub.add_parser("run", help="every stage of a run recipe (configs/*.json): FP32, ONNX, PTQ, QAT, INT8 ONNX",
                         description="Run a recipe (qatie.config.RunRecipe): the FP32 model (trained or imported), its "
                                     "ONNX export, PTQ, the QAT stages and the INT8 export, each step writing the "
                                     "file the next reads. Training and QAT resume from their run folders.")
    cmd.add_argument("recipe", help="run recipe JSON (configs/restoration.json, configs/paper.json)")
    cmd.add_argument("--steps", help="only these steps, comma-separated: " + ", ".join(RUN_STEPS))
    cmd.add_argument("--dry-run", action="store_true", help="print what each step would do and write, run nothing")
    cmd.set_defaults(func=cmd_run)


#: One function per subcommand, in the order `qatie --help` lists them.
SUBCOMMANDS = (_run, _train, _degrade, _enhance, _eval, _ptq, _inspect, _qat, _import_tflite, _export, _litert_proof, _bench, _deviation,
               _report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qatie", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    from qatie.provenance import record_command

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    record_command(argv)
    try:
        return args.func(args)
    except QatieError as e:
        print(f"qatie: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
