"""A graded ladder of known differences from one picture, for choosing and checking the
visibility classes of `qatie.analysis.perceptual` (tests/test_perceptual.py asserts each rung's
class; `python -m qatie.analysis.perceptual_ladder` prints the table of docs/perceptual.md).

Rungs are made from the paper network's FP32 output of a photo: ±1-level noise, a uniform
+4-level brightening, a blue cast of −6 levels, JPEG copies at qualities 95 and 80, and the
paper set's own PTQ-INT8 and QAT-INT8 outputs (exact integer results on every CPU: QuantSpec v3
weights are pair-safe). Each rung names the class it must land in and why.
"""
from __future__ import annotations

import numpy as np

from .perceptual import CLASSES, delta_e00, jpeg_copy, summarise, visibility

#: rung → (expected class rank, why that class)
EXPECTED = {
    "±1 level noise": (0, "the smallest step an 8-bit file can store, at random: invisible"),
    "uniform +4 levels": (0, "a brightening under one JND everywhere"),
    "JPEG quality 95": (2, "'visually lossless' at a glance, yet flipping shows it (24 % of pixels over a JND)"),
    "JPEG quality 80": (3, "blocking and blur a viewer sees side by side"),
    "blue channel −6 levels": (3, "a colour cast over the whole picture"),
}
PHOTOS = ("astronaut", "coffee", "chelsea")


def rungs(fp32_u8: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = fp32_u8.astype(np.int16)
    blue = f.copy()
    blue[..., 2] -= 6
    return {
        "±1 level noise": np.clip(f + rng.integers(-1, 2, f.shape), 0, 255).astype(np.uint8),
        "uniform +4 levels": np.clip(f + 4, 0, 255).astype(np.uint8),
        "JPEG quality 95": jpeg_copy(fp32_u8, 95),
        "JPEG quality 80": jpeg_copy(fp32_u8, 80),
        "blue channel −6 levels": np.clip(blue, 0, 255).astype(np.uint8),
    }


def paper_outputs(photo: str, threads: int = 1) -> dict[str, np.ndarray] | None:
    """The paper set's FP32, PTQ-INT8 and QAT-INT8 outputs of scikit-image's `photo` (None when
    the shipped files are absent)."""
    from ..data import sample_images
    from ..imageio import to_uint8
    from ..paths import REPO_ROOT
    from ..runtime import OnnxEnhancer

    files = {r: REPO_ROOT / "checkpoints" / f"paper_{n}.onnx" for r, n in
             (("fp32", "fp32"), ("ptq", "int8_ptq"), ("qat", "int8_qat"))}
    if not all(p.is_file() for p in files.values()):
        return None
    x = to_uint8(sample_images((photo,))[photo])
    return {r: to_uint8(OnnxEnhancer(p, threads=threads).enhance(x)) for r, p in files.items()}


def table(photos=PHOTOS, threads: int = 1) -> list[dict]:
    rows = []
    for photo in photos:
        out = paper_outputs(photo, threads)
        if out is None:
            break
        made = rungs(out["fp32"]) if photo == photos[0] else {}
        made.update({"paper QAT-INT8": out["qat"], "paper PTQ-INT8": out["ptq"]})
        for name, img in made.items():
            s = summarise(delta_e00(out["fp32"], img))
            rows.append({"photo": photo, "rung": name, **s, "class": visibility(s).rank,
                         "expected": EXPECTED.get(name, (None,))[0]})
    return rows


def main() -> int:
    from ..cpu import cpu_name, int8_path

    print(f"CPU: {cpu_name()} (INT8 kernels: {int8_path()}); classes: "
          + "; ".join(f"{c.rank} {c.name} (share over 1 JND < {c.max_share_visible:.0%}, mean ΔE00 < "
                      f"{c.max_mean_de00:g})" for c in CLASSES[:-1]) + f"; {CLASSES[-1].rank} {CLASSES[-1].name}")
    print("| photo | difference from the paper FP32 output | mean ΔE00 | pixels over 1 JND | class |")
    print("|---|---|---:|---:|---|")
    for r in table():
        print(f"| {r['photo']} | {r['rung']} | {r['mean_de00']:.2f} | {100 * r['share_visible']:.1f} % | "
              f"{r['class']} {CLASSES[r['class']].name} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
