"""FP32 gain on the synthetic test split with the tone errors switched off.

    python docs/fp32_tones_right.py [--model fp32] [--seed 0]

The model card's tone oracle says how much of the input's deficit is tone error; this measures
how much the shipped FP32 model gains on the rest (the same photos and seeds, noise/blur/JPEG
only): the part of the +3 dB goal it is trained for. Needs ../shared.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fp32", help="fp32 / ptq / qat, an .onnx or a .pt (default fp32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np

    from qatie.data.datasets import EVAL_DEGRADATION, eval_pairs
    from qatie.runtime.enhancer import load_enhancer
    from qatie.metrics import psnr, ssim

    pairs = eval_pairs(clean_dir=REPO.parent / "shared" / "data" / "clean", seed=args.seed,
                       degradation=replace(EVAL_DEGRADATION, p_tone=0.0))
    enhance = load_enhancer(args.model, threads=args.threads)
    rows = []
    for _, x, target in pairs:
        y = enhance(x)
        rows.append((psnr(x, target), psnr(y, target), ssim(x, target), ssim(y, target)))
    p_in, p_out, s_in, s_out = np.mean(rows, axis=0)
    print(f"{len(rows)} test photos, tone errors off, seed {args.seed}: input {p_in:.2f} dB / {s_in:.4f}, "
          f"{args.model} {p_out:.2f} dB / {s_out:.4f} (gain {p_out - p_in:+.2f} dB, SSIM {s_out - s_in:+.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
