"""How far a QAT checkpoint's learned ranges moved from the calibration they started from.

    python docs/qat_numbers.py [--checkpoint checkpoints/qat.pt]

Recomputes the starting ranges exactly as `run_qat` did (the checkpoint records the FP32 source,
calibration method, image count and data), then prints, over the learned quantizers: the
learned/initial scale ratio (median, 10th and 90th percentile, largest change), how many zero
points moved, and how the initial scales compare with minmax calibration. Quoted in docs/qat.md.
Needs the calibration data the checkpoint names (../shared for the shipped model).
"""
from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "qat.pt"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from qatie.model.checkpoint import load_model, read_checkpoint
    from qatie.quantize.ptq import calibration_images
    from qatie.model.checkpoint import model_from_qat_checkpoint
    from qatie.model.quant import act_qparams, calibrate

    ckpt = read_checkpoint(args.checkpoint)
    calib = ckpt["calib"]
    source = Path(ckpt["source_checkpoint"])
    source = source if source.is_absolute() else REPO / source
    fp32 = load_model(source)
    images = calibration_images(calib["data"], calib["num_calib"], 0)
    start = calibrate(fp32, images, calib["method"])
    minmax = calibrate(fp32, images, "minmax")
    model = model_from_qat_checkpoint(ckpt, args.checkpoint)
    ratio, zp_moved, vs_minmax = [], 0, []
    for key, fq in model.fake_quants.items():
        if key.replace("__", ".") not in start:  # the input/output quantizers are pinned, not calibrated
            continue
        name = key.replace("__", ".")
        s0, z0 = act_qparams(torch.tensor(start[name][0]), torch.tensor(start[name][1]))
        s_mm, _ = act_qparams(torch.tensor(minmax[name][0]), torch.tensor(minmax[name][1]))
        s1, z1 = fq.qparams()
        ratio.append(float(s1 / s0))
        zp_moved += int(z1) != int(z0)
        vs_minmax.append(float(s0 / s_mm))
    r, v = np.array(ratio), np.array(vs_minmax)
    print(f"{args.checkpoint}: {len(r)} quantizers, learnable={ckpt.get('learnable')}, started from "
          f"{calib['method']} calibration on {calib['num_calib']} images of {calib['data']}")
    print(f"learned / initial scale: median {np.median(r):.3f}, p10 {np.percentile(r, 10):.3f}, "
          f"p90 {np.percentile(r, 90):.3f}, largest change {np.abs(np.log(r)).max():.3f} (|ln ratio|)")
    print(f"zero points moved: {zp_moved} of {len(r)}")
    print(f"initial ({calib['method']}) / minmax scale: median {np.median(v):.3f}, p10 {np.percentile(v, 10):.3f}, "
          f"p90 {np.percentile(v, 90):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
