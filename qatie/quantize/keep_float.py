"""Mixed precision: which convs to keep in float (`qatie ptq --keep-float`).

A conv kept float computes with float weights, and the QPoints of its *float island* (see
`qatie.export.to_onnx.float_islands`: the tensors after it up to the next QPoint that feeds a conv) are
removed, so the LeakyReLU / tanh / InstanceNorm / add / concat right after it run in float too;
the island's input and output stay quantized. Keeping only the weights float was measured first
and buys nothing (per-channel int8 weights are nearly exact here; the INT8 error is activation
rounding — docs/inspect.md has the numbers).

Sensitivity (`conv_sensitivity`): for each of the 35 convs, the torch fake-quant simulation of
the PTQ model with *only that conv's island* in float, scored by PSNR vs the FP32 output over
calibration images; the gain over the all-INT8 simulation ranks the convs. This is the direct
measure of what `--keep-float` will change, not a proxy; it costs 36 simulated forward passes
per image (≈1–2 min for 8 crops of 256² on one core), so it runs on the first
`SENSITIVITY_IMAGES` calibration crops and is cached by checkpoint content and settings. The
torch simulation equals ORT's integer kernels up to rounding flips (docs/parity.md), well below
the gains that matter for the ranking's top. `qatie.analysis.tradeoff` measures what each K buys.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Callable, Optional, Sequence

import numpy as np

from qatie.errors import QatieError
from qatie.export.to_onnx import conv_islands
from qatie.model.network import swapped_hooks
from qatie.paths import cache_dir
from qatie.model.quant import prepare_qat
from qatie.export.sidecar import stage_of
from qatie.util import atomic_write_text, file_sha

SENSITIVITY_IMAGES = 8
SENSITIVITY_VERSION = 3  # bump when the islands or the score change (invalidates cached rankings)



def parse_keep_float(spec) -> tuple[Optional[int], list[str]]:
    """'auto:K' → (K, []); 'a,b' or ['a', 'b'] → (None, ['a', 'b']); None / '' → (None, [])."""
    if spec is None or spec == "" or spec == []:
        return None, []
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower().startswith("auto"):
            _, _, k = text.partition(":")
            try:
                k = int(k)
            except ValueError:
                raise QatieError(f"--keep-float {spec!r}: write auto:K with K an integer ≥ 0 (e.g. auto:4)") from None
            if k < 0:
                raise QatieError(f"--keep-float {spec!r}: K must be ≥ 0")
            return k, []
        names = [n.strip() for n in text.split(",") if n.strip()]
    else:
        names = [str(n) for n in spec]
    return None, names


def _psnr_of_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def conv_sensitivity(model, ranges, images: Sequence[np.ndarray],
                     progress: Optional[Callable[[int, int, str], None]] = None) -> dict:
    """Rank the convs of an FP32 `model` by how much keeping each one float (with its island)
    improves the PTQ simulation with `ranges`, PSNR vs FP32 over `images` (H×W×3 float).

    Returns {"baseline_psnr_vs_fp32", "images", "method": "leave-one-float",
    "ranking": [{conv, stage, gain_db, psnr_vs_fp32, float_points}, ...]} — best gain first.
    PSNR over the set = 10·log10(1 / mean MSE) (images pooled)."""
    import torch

    model = copy.deepcopy(model).eval()
    islands = conv_islands(model)
    xs = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None].float() for im in images]
    if not xs:
        raise QatieError("sensitivity needs at least one image")
    with torch.no_grad():
        refs = [model(x) for x in xs]
    prepare_qat(model, ranges)
    model.eval()
    qps = {qp.qname: qp for qp in model.qpoints()}
    mods = dict(model.named_modules())

    def score() -> float:
        with torch.no_grad():
            return _psnr_of_mse(float(np.mean([float(((model(x) - r) ** 2).mean()) for x, r in zip(xs, refs)])))

    base = score()
    ranking = []
    for i, (conv, points) in enumerate(islands.items()):
        if progress:
            progress(i, len(islands), conv)
        with swapped_hooks({qps[p]: None for p in points}, {mods[conv]: None}):
            s = score()
        ranking.append({"conv": conv, "stage": stage_of(conv), "gain_db": s - base, "psnr_vs_fp32": s,
                        "float_points": points})
    if progress:
        progress(len(islands), len(islands), "")
    ranking.sort(key=lambda r: -r["gain_db"])
    return {"method": "leave-one-float", "baseline_psnr_vs_fp32": base, "images": len(xs), "ranking": ranking}


def cached_sensitivity(model, ranges, images, key: str, cache=None, progress=None) -> dict:
    """`conv_sensitivity`, stored as JSON in the cache folder under `key` (checkpoint content +
    calibration settings), so `ptq --keep-float auto:K` for several K ranks once."""
    path = cache_dir(cache) / f"sensitivity-{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    result = conv_sensitivity(model, ranges, images, progress=progress)
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


def sensitivity_key(checkpoint, method: str, calib: str, num_calib: int, percentile: float, seed: int,
                    n_images: int) -> str:
    settings = json.dumps([SENSITIVITY_VERSION, file_sha(checkpoint), method, calib, num_calib,
                           percentile if method == "percentile" else None, seed, n_images])
    return hashlib.sha256(settings.encode()).hexdigest()[:16]

