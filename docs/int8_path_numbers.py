"""docs/performance.md, *INT8 on CPUs without VNNI*: what option (a) — weights within −64…64, so
that ONNX Runtime's AVX2 pair sums cannot saturate — would cost in agreement with FP32.

Re-exports the shipped PTQ model (its calibrated ranges, read from checkpoints/int8_ptq.json) and
the shipped QAT checkpoint (not retrained) with weights in −64…64 and scores all four INT8 models
against FP32 ONNX on centre crops of ../shared/data/clean/val20, in ONNX Runtime on this CPU
(its INT8 kernel path is printed first: on AVX2 the shipped models include the saturation).

    python docs/int8_path_numbers.py [--images 10] [--size 256] [--threads 2]
    qemu-x86_64 -cpu Haswell .venv/bin/python docs/int8_path_numbers.py --images 4 --size 128 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qatie.runtime.cpu import describe, machine_summary  # noqa: E402
from qatie.imageio import read_image  # noqa: E402
from qatie.metrics import psnr  # noqa: E402
from qatie.runtime.enhancer import OnnxEnhancer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    val = ROOT.parent / "shared" / "data" / "clean" / "val20"
    if not val.is_dir():
        sys.exit(f"{val} is absent (shared data not available)")
    print(describe(machine_summary(args.threads)), flush=True)

    from qatie.model.checkpoint import load_model
    from qatie.export.to_onnx import export_int8
    from qatie.quantize.qat import export_checkpoint
    from tests.conftest import non_saturating_weights

    ckpt = ROOT / "checkpoints"
    tmp = Path(tempfile.mkdtemp(prefix="int8path_"))
    ranges = {t["name"]: (t["min"], t["max"]) for t in json.loads((ckpt / "int8_ptq.json").read_text())["tensors"]}
    with non_saturating_weights():
        ptq7 = export_int8(load_model(ckpt / "fp32.pt").eval(), ranges, tmp / "ptq7.onnx", source="ptq-minmax")
        qat7 = export_checkpoint(ckpt / "qat.pt", tmp / "qat7.onnx")

    s = args.size
    imgs = []
    for f in sorted(val.iterdir())[: args.images]:
        im = read_image(f)
        top, left = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
        imgs.append(im[top:top + s, left:left + s])
    fp32 = OnnxEnhancer(ckpt / "fp32.onnx", threads=args.threads)
    ref = [fp32.enhance(i) for i in imgs]
    for name, path in [("PTQ shipped (weights −127…127)", ckpt / "int8_ptq.onnx"), ("PTQ, weights −64…64", ptq7),
                       ("QAT shipped (weights −127…127)", ckpt / "int8_qat.onnx"), ("QAT, weights −64…64, not retrained", qat7)]:
        e = OnnxEnhancer(path, threads=args.threads)
        a = [psnr(e.enhance(i), r) for i, r in zip(imgs, ref)]
        print(f"{name:36s} agreement with FP32: mean {np.mean(a):.2f} dB, min {np.min(a):.2f} "
              f"({len(imgs)} val20 crops {s}×{s})", flush=True)


if __name__ == "__main__":
    main()
