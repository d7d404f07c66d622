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

from qatie.analysis.perceptual import CLASSES, delta_e00, jpeg_copy, summarise, visibility

#: rung → (expected class rank, why that class)
EXPECTED = {
    "±1 level noise": (0, "the smallest step an 8-bit file can store, at random: invisible"),
    "uniform +4 levels": (0, "a brightening under one JND everywhere"),
    "JPEG quality 95": (1, "the usual 'visually lossless' setting: a viewer takes it for the original"),
    "JPEG quality 90": (None, "between the two JPEG rungs: reported, not fixed"),
    "JPEG quality 80": (3, "blocking and blur a viewer sees side by side"),
    "blue channel −6 levels": (3, "a colour cast over the whole picture"),
    "authors' TFLite 100×100, tiled": (3, "each 100×100 tile normalised on its own statistics: blotchy colour"),
    "authors' TFLite full-HD (3-level tanh gates)": (3, "gates on 3 levels: colours break (docs/paper_model.md)"),
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
        "JPEG quality 90": jpeg_copy(fp32_u8, 90),
        "JPEG quality 80": jpeg_copy(fp32_u8, 80),
        "blue channel −6 levels": np.clip(blue, 0, 255).astype(np.uint8),
    }


def paper_outputs(photo: str, threads: int = 1) -> dict[str, np.ndarray] | None:
    """The paper set's FP32, PTQ-INT8 and QAT-INT8 outputs of scikit-image's `photo` (None when
    the shipped files are absent)."""
    from qatie.data.datasets import sample_images
    from qatie.imageio import to_uint8
    from qatie.paths import REPO_ROOT
    from qatie.runtime.enhancer import OnnxEnhancer

    files = {r: REPO_ROOT / "checkpoints" / f"paper_{n}.onnx" for r, n in
             (("fp32", "fp32"), ("ptq", "int8_ptq"), ("qat", "int8_qat"))}
    if not all(p.is_file() for p in files.values()):
        return None
    x = to_uint8(sample_images((photo,))[photo])
    return {r: to_uint8(OnnxEnhancer(p, threads=threads).enhance(x)) for r, p in files.items()}


def authors_rungs(photo: str, threads: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The authors' released INT8 TFLite files as rungs, each with the paper FP32 output it is
    compared with: the 100×100 file run in tiles on the photo, and the full-HD file — whose tanh
    gates the converter requantized to 3 levels (docs/paper_model.md) — on the photo resized to its
    1080×1920 input. {} when ai-edge-litert or the files are missing."""
    import importlib.util

    from PIL import Image

    from qatie.data.datasets import sample_images
    from qatie.imageio import to_uint8
    from qatie.paths import REPO_ROOT
    from qatie.runtime.enhancer import OnnxEnhancer

    folder = REPO_ROOT.parent / "shared" / "reference"
    small, full = folder / "qatie_official_int8_100x100.tflite", folder / "qatie_official_int8_1920x1080.tflite"
    fp32 = REPO_ROOT / "checkpoints" / "paper_fp32.onnx"
    if importlib.util.find_spec("ai_edge_litert") is None or not (small.is_file() and full.is_file() and fp32.is_file()):
        return {}
    from qatie.paper.tflite import AuthorsTFLite

    x = to_uint8(sample_images((photo,))[photo])
    hd = np.asarray(Image.fromarray(x).resize((1080, 1920), Image.BICUBIC))
    net = OnnxEnhancer(fp32, threads=threads)
    out = {}
    for name, path, img in (("authors' TFLite 100×100, tiled", small, x),
                            ("authors' TFLite full-HD (3-level tanh gates)", full, hd)):
        y = to_uint8(AuthorsTFLite(path, threads=threads).enhance(img.astype(np.float32) / 255))
        out[name] = (to_uint8(net.enhance(img)), y)
    return out


def table(photos=PHOTOS, threads: int = 1) -> list[dict]:
    rows = []
    for photo in photos:
        out = paper_outputs(photo, threads)
        if out is None:
            break
        made = rungs(out["fp32"]) if photo == photos[0] else {}
        made.update({"paper QAT-INT8": out["qat"], "paper PTQ-INT8": out["ptq"]})
        pairs = {name: (out["fp32"], img) for name, img in made.items()}
        if photo == photos[0]:
            pairs.update(authors_rungs(photo))
        for name, (ref, img) in pairs.items():
            s = summarise(delta_e00(ref, img))
            rows.append({"photo": photo, "rung": name, **s, "class": visibility(s).rank,
                         "expected": EXPECTED.get(name, (None,))[0]})
    return rows


def cost(runs: int = 5) -> dict:
    """What rating costs on a 1-MP photo (1224×816, the astronaut): the CIELAB of one picture on
    the measuring grid, the ΔE00 map of one INT8 picture, the JPEG ladder — median ms of `runs`."""
    import statistics
    import time

    from PIL import Image

    from qatie.analysis.perceptual import JPEG_QUALITIES, delta_e00_lab, jpeg_ladder, lab
    from qatie.data.datasets import sample_images
    from qatie.imageio import to_uint8

    photo = np.asarray(Image.fromarray(to_uint8(sample_images(("astronaut",))["astronaut"])).resize((1224, 816)))
    other = np.clip(photo.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, photo.shape), 0, 255).astype(np.uint8)
    ref = lab(photo)
    jobs = {"lab (one picture)": lambda: lab(other), "ΔE00 map (one picture)": lambda: delta_e00_lab(ref, lab(other)),
            "JPEG ladder": lambda: jpeg_ladder(photo, JPEG_QUALITIES, ref)}
    out = {}
    for name, job in jobs.items():
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            job()
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = statistics.median(times)
    return out


def main(argv=None) -> int:
    import sys

    from qatie.runtime.cpu import cpu_name, int8_path

    argv = sys.argv[1:] if argv is None else argv
    if "--cost" in argv:
        print(f"CPU: {cpu_name()}; a 1-MP photo, median of 5:")
        for name, ms in cost().items():
            print(f"  {name}: {ms:.0f} ms")
        return 0
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
