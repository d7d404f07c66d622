"""Make the app's example photos: `python -m app.compare.make_examples` (reproducible, no download).

scikit-image's bundled colour photos, each degraded by the project's phone-camera model
(`qatie.data.degrade` with `qatie.data.datasets.EVAL_DEGRADATION`, the always-degrade evaluation config) at a
fixed seed, saved as 8-bit PNG beside its clean reference:

    assets/examples/<name>_input.png       what the phone "took" (the app's input)
    assets/examples/<name>_reference.png   the clean photo (ground truth for PSNR/SSIM)
    assets/examples/examples.json          names, seeds, sizes and the input's PSNR/SSIM

The photos are chosen for what quantization error shows on: smooth skies and backgrounds
(rocket, astronaut), flat dark areas (coffee), fine texture (chelsea's fur). Four photos keep
assets/ small (about 3.3 MB).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qatie.data.datasets import EVAL_DEGRADATION, sample_images
from qatie.data.degrade import degrade, seed_for
from qatie.imageio import to_uint8, write_image
from qatie.metrics import psnr, ssim

from app import config

OUT_DIR = config.EXAMPLES_DIR  # assets/examples, where the app reads them

#: (skimage photo, seed for `seed_for(name, seed)`) — fixed so the files are reproducible; chosen
#: for a clearly visible, realistic degradation (input PSNR about 24–27 dB).
EXAMPLES: tuple[tuple[str, int], ...] = (
    ("rocket", 1),
    ("astronaut", 0),
    ("coffee", 6),
    ("chelsea", 5),
)


def make_examples(out_dir: Path = OUT_DIR) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    photos = sample_images(tuple(name for name, _ in EXAMPLES))
    records = []
    for name, seed in EXAMPLES:
        clean = to_uint8(photos[name]).astype(np.float32) / 255.0  # exactly what the PNG holds
        noisy = degrade(clean, seed_for(name, seed), EVAL_DEGRADATION)
        noisy = to_uint8(noisy).astype(np.float32) / 255.0
        write_image(out_dir / f"{name}_input.png", noisy)
        write_image(out_dir / f"{name}_reference.png", clean)
        records.append({
            "name": name, "seed": seed, "height": clean.shape[0], "width": clean.shape[1],
            "input": f"{name}_input.png", "reference": f"{name}_reference.png",
            "input_psnr_db": round(psnr(noisy, clean), 2), "input_ssim": round(ssim(noisy, clean), 4),
        })
    meta = {
        "made_by": "python -m app.compare.make_examples",
        "source": "scikit-image bundled photos (skimage.data), degraded by qatie.data.degrade "
                  "with qatie.data.datasets.EVAL_DEGRADATION at seed_for(name, seed)",
        "degradation": EVAL_DEGRADATION.to_dict(),
        "examples": records,
    }
    (out_dir / "examples.json").write_text(json.dumps(meta, indent=1) + "\n")
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default assets/examples)")
    args = parser.parse_args(argv)
    records = make_examples(args.out)
    total = sum((args.out / r[k]).stat().st_size for r in records for k in ("input", "reference"))
    for r in records:
        print(f"{r['name']:16s} seed {r['seed']}  {r['width']}×{r['height']}  input {r['input_psnr_db']:.2f} dB / SSIM {r['input_ssim']:.3f}")
    print(f"{2 * len(records)} files, {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
