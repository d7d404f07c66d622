"""Post-training quantization: calibrate activation ranges on a few images, export INT8.

Ranges come from FP32 activation statistics (minmax — the "standard PTQ" baseline —,
percentile or entropy; see `qatie.model.quant.calibrate`); everything else is the shared QuantSpec
and the shared exporter, exactly as for QAT.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qatie.model.checkpoint import model_from_checkpoint, read_checkpoint
from qatie.config import CALIB_CROP, PTQConfig
from qatie.data.datasets import PatchSampler, load_source
from qatie.errors import CheckpointError
from qatie.export.to_onnx import export_int8
from qatie.quantize.keep_float import SENSITIVITY_IMAGES, cached_sensitivity, parse_keep_float, sensitivity_key
from qatie.model.quant import calibrate



def calibration_images(spec: str, num: int = 32, seed: int = 0, crop: int = CALIB_CROP) -> list[np.ndarray]:
    """`num` deterministic input crops from a data SPEC's training part (clean photos are passed
    through the degradation model, so calibration sees what the model sees in use). `crop` 0:
    `num` whole photos as they are, evenly spaced through the set — calibration at the resolution
    the app runs photos at, where whole-photo statistics (InstanceNorm) set the ranges."""
    source = load_source(spec, part="train", lazy=True)  # a few crops: decode only the photos they come from
    if crop == 0:
        photos = source.targets if source.synthetic else source.inputs
        picks = np.linspace(0, len(photos) - 1, min(num, len(photos))).round().astype(int)
        return [photos[i].astype(np.float32) / 255 for i in picks]
    sampler = PatchSampler([source], crop)
    rng = np.random.default_rng([seed, 7919])
    return [sampler.crop_pair(rng)[0] for _ in range(num)]


def run_ptq(checkpoint, out, config: PTQConfig | None = None, progress=None, **options) -> Path:
    """FP32 checkpoint → INT8 QDQ ONNX (+ JSON sidecar) with ranges calibrated as `config` says
    (`PTQConfig`; default the shipped minmax recipe); `options` override its fields by name.

    keep_float (mixed precision, see `qatie.quantize.keep_float`): "auto:K" keeps the K convs float whose
    float island helps most (ranked on the first calibration crops; the ranking is stored in
    the sidecar's meta), or a list / comma-separated string of conv module paths."""
    if not isinstance(options.get("keep_float", ""), (str, type(None))):
        options["keep_float"] = ",".join(options["keep_float"])
    cfg = PTQConfig.resolve(config, **options)
    method, calib, num_calib, percentile, seed = cfg.method, cfg.calib, cfg.num_calib, cfg.percentile, cfg.seed
    keep_float, calib_crop = cfg.keep_float, cfg.calib_crop
    t0 = time.time()
    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("kind", "fp32") != "fp32":
        raise CheckpointError(f"{checkpoint}: PTQ starts from an FP32 checkpoint (this one is {ckpt.get('kind')!r}); "
                              "export a QAT checkpoint with `qatie export`")
    model = model_from_checkpoint(ckpt, str(checkpoint)).eval()
    images = calibration_images(calib, num_calib, seed, calib_crop)
    ranges = calibrate(model, images, method, percentile)
    meta = {"checkpoint": str(checkpoint), "method": method, "calib": calib, "num_calib": num_calib,
            "calib_crop": calib_crop, "seed": seed, "recipe": cfg.to_dict(), "wall_s": round(time.time() - t0, 2)}
    if method == "percentile":
        meta["percentile"] = percentile
    keep = None
    if keep_float:
        k, keep = parse_keep_float(keep_float)
        meta["keep_float"] = {"spec": keep_float}
        if k is not None:
            n = min(SENSITIVITY_IMAGES, len(images))
            key = sensitivity_key(checkpoint, method, calib, num_calib, percentile, seed, n)
            sens = cached_sensitivity(model, ranges, images[:n], key, progress=progress)
            keep = [r["conv"] for r in sens["ranking"][:k]]
            meta["keep_float"]["sensitivity"] = sens
        meta["keep_float"]["convs"] = keep
        meta["wall_s"] = round(time.time() - t0, 2)
    return export_int8(model, ranges, out, source=f"ptq-{method}", meta=meta, keep_float=set(keep or ()))
