"""docs/performance.md, *QuantSpec v3*: what each way of making int8 weights pair-safe costs in
weight precision, per checkpoint (weights as the exporter quantizes them: an up-conv's four phase
kernels, delta as on full resolution). No ONNX Runtime, no photos: the same numbers on every CPU.

Rules compared (per output channel; a "pair" is input channels 2j, 2j+1 at one kernel tap — the
pairs CPUs without VNNI add into a saturating int16):
  v2      nearest level at max|w|/127, no pair limit (can saturate)
  clip    v2, then every same-sign pair over 128 levels moved onto the limit (few weights moved, far)
  7-bit   nearest level at max|w|/64 (ONNX Runtime's reduce_range idea: no pair can reach 129)
  v3      QuantSpec v3 (`qatie.model.quant.weight_levels`): scale max(max|w|/127, largest same-sign pair/128)
  v3+grid the best of 33 scales between v2's and v3's per channel, pairs over the limit moved

    python docs/pair_safe_numbers.py checkpoints/paper_qat.pt checkpoints/qat.pt [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qatie.model.checkpoint import load_model  # noqa: E402
from qatie.model.network import Up, phase_weights  # noqa: E402
from qatie.model.quant import SPEC, _pairs, pair_safe, weight_scales  # noqa: E402


def exported_weights(model) -> list[torch.Tensor]:
    """Every conv weight in the form the exporter quantizes it (per output channel)."""
    ups = {m.conv for m in model.modules() if isinstance(m, Up)}
    return [torch.cat(phase_weights(c.weight.detach())) if c in ups else c.weight.detach() for c in model.convs()]


def levels(w: torch.Tensor, scale: torch.Tensor, limit: bool) -> torch.Tensor:
    exact = w / scale.reshape(-1, 1, 1, 1)
    q = torch.clamp(torch.round(exact), -SPEC.weight_qmax, SPEC.weight_qmax)
    return pair_safe(q, exact) if limit else q


def sq_error(w, scale, limit) -> torch.Tensor:
    return ((levels(w, scale, limit) * scale.reshape(-1, 1, 1, 1) - w) ** 2).flatten(1).sum(1)


def grid_scale(w: torch.Tensor, steps: int = 33) -> torch.Tensor:
    lo, hi = w.abs().flatten(1).amax(1) / SPEC.weight_qmax, weight_scales(w)
    best, err = lo, sq_error(w, lo, True)
    for t in torch.linspace(0, 1, steps)[1:]:
        s = lo + t * (hi - lo)
        e = sq_error(w, s, True)
        best, err = torch.where(e < err, s, best), torch.minimum(e, err)
    return best


RULES = {
    "v2": lambda w: (w.abs().flatten(1).amax(1) / SPEC.weight_qmax, False),
    "clip": lambda w: (w.abs().flatten(1).amax(1) / SPEC.weight_qmax, True),
    "7-bit": lambda w: (w.abs().flatten(1).amax(1) / 64, False),
    "v3": lambda w: (weight_scales(w), True),
    "v3+grid": lambda w: (grid_scale(w), True),
}


def over_limit(q: torch.Tensor) -> int:
    p = _pairs(q)
    return int(((p[:, :, 0] * p[:, :, 1] > 0) & (p[:, :, 0].abs() + p[:, :, 1].abs() > SPEC.weight_pair_sum_max)).sum())


def measure(checkpoint: str) -> dict:
    weights = exported_weights(load_model(checkpoint))
    power = sum(float((w ** 2).sum()) for w in weights)
    out = {}
    for name, rule in RULES.items():
        err, risky, moved, narrowed = 0.0, 0, 0, 0
        for w in weights:
            scale, limit = rule(w)
            q = levels(w, scale, limit)
            err += float(((q * scale.reshape(-1, 1, 1, 1) - w) ** 2).sum())
            risky += over_limit(q)
            moved += int((q != torch.clamp(torch.round(w / scale.reshape(-1, 1, 1, 1)), -127, 127)).sum())
            narrowed += int((scale > w.abs().flatten(1).amax(1) / SPEC.weight_qmax * (1 + 1e-6)).sum())
        out[name] = {"weight_sqnr_db": 10 * np.log10(power / err), "saturable_pairs": risky,
                     "weights_moved": moved, "channels_coarser": narrowed}
    out["weights"] = sum(w.numel() for w in weights)
    out["channels"] = sum(w.shape[0] for w in weights)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--json")
    args = ap.parse_args()
    result = {c: measure(c) for c in args.checkpoints}
    for c, r in result.items():
        print(f"{c}: {r['weights']:,} weights in {r['channels']:,} output channels")
        print(f"  {'rule':8} {'weight SQNR dB':>15} {'saturable pairs':>16} {'weights moved':>14} {'coarser channels':>17}")
        for name in RULES:
            x = r[name]
            print(f"  {name:8} {x['weight_sqnr_db']:15.2f} {x['saturable_pairs']:16,} {x['weights_moved']:14,} "
                  f"{x['channels_coarser']:17,}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
