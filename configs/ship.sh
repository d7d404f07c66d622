#!/usr/bin/env bash
# Rebuilds every shipped file in checkpoints/ from scratch: one `qatie run` per model set, each
# recipe holding every stage (qatie.config.RunRecipe; `qatie run RECIPE --dry-run` prints the plan).
# Each file also records its own command (checkpoints/manifest.json). Needs ../shared (photos, the
# authors' TFLite file). About 7 h on 2 CPU cores; interrupted runs continue where they stopped.
# Run from the repository root with the package installed (pip install -e . --no-deps).
set -euo pipefail
export OMP_NUM_THREADS=1  # one thread per process: no OpenMP spin-waiting on a shared 2-core machine

qatie run configs/restoration.json   # fp32.pt/.onnx, int8_ptq.onnx, qat.pt, int8_qat.onnx
qatie run configs/paper.json         # paper_fp32.pt/.onnx, paper_int8_ptq.onnx, paper_qat.pt, paper_int8_qat.onnx
python docs/paper_model_numbers.py   # docs/paper_model.md's tables and figures
qatie report --out checkpoints/MODEL_CARD.md --readme README.md   # model card, crop figure, manifest
