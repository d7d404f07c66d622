"""QuantSpec: the one INT8 scheme shared by PTQ, QAT and export — and the torch side of it.

Weights int8, symmetric, per output channel, *pair-safe* (QuantSpec v3): x86 CPUs without VNNI
add the products of input channels 2j and 2j+1 at one kernel tap into a saturating int16
(`qatie.runtime.int8_reference`), so in every such pair two levels of the same sign sum to at most 128 in
magnitude — 255·(|q0| + |q1|) ≤ 32640 fits — and ONNX Runtime computes the exact integer result on
every CPU. A channel's scale is max|w| / 127 (levels −127…127) or, where larger, its largest
same-sign pair sum / 128 (`weight_scales`); a pair that rounding still puts one level over is
moved onto the limit (`pair_safe`). Export and QAT share `weight_levels`.

Activations uint8, asymmetric, per tensor, at every `QPoint` of the network (every conv input
and output, add, concat, LeakyReLU, the tanh outputs and the gating product); tanh and
InstanceNorm compute in float between dequantize and quantize; the input and output are pinned
to scale 1/255, zero point 0 (so the output quantizer *is* the final clamp to [0,1]).
A concat's inputs share the concat's (scale, zero point), and a point that quantizes tanh
outputs has a range reaching −1 and a scale of exactly 1/n (n an integer): both let ONNX
Runtime skip float work (a plain uint8 concat; tanh as a lookup table) — docs/performance.md.

PTQ and QAT differ only in where the activation ranges come from: calibration statistics
(`calibrate`) or training (`prepare_qat` arms every QPoint with a `FakeQuant` whose range is
initialised by calibration and then tracks a moving average of the batch min/max, or is learned).
Both end as the same `ranges` dict, which `qatie.export.to_onnx` turns into a QDQ ONNX model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from qatie.config import CALIBRATION_METHODS, DEFAULT_PERCENTILE
from qatie.errors import QatieError
from qatie.model.network import QATIENet, QPoint, swapped_hooks
from qatie.model.pair_safety import PAIR_SUM_LIMIT

Ranges = dict[str, tuple[float, float]]  # QPoint name → (min, max) of the float range


@dataclass(frozen=True)
class QuantSpec:
    weight_dtype: str = "int8"
    weight_qmin: int = -127
    weight_qmax: int = 127
    weight_granularity: str = "per_output_channel"
    weight_pairs: str = "input channels 2j, 2j+1 at one kernel tap (the pairs VPMADDUBSW adds in int16)"
    weight_pair_sum_max: int = PAIR_SUM_LIMIT
    activation_dtype: str = "uint8"
    act_qmin: int = 0
    act_qmax: int = 255
    activation_granularity: str = "per_tensor"
    bias: str = "int32, scale = input scale × weight scale"
    float_ops: tuple[str, ...] = ("Tanh", "InstanceNormalization")
    io_scale: float = 1 / 255
    io_zero_point: int = 0
    concat_inputs: str = "share the concat's scale and zero point"
    tanh_output: str = "range reaches −1, scale 1/n with n an integer (tanh(x) = 2σ(2x) − 1 runs as a lookup table)"
    version: int = 3
    #: Versions whose quantization points and ranges are this one's (they differ only in weight
    #: rounding): their QAT checkpoints load, and simulate, with this version's weights.
    compatible_versions: tuple[int, ...] = (2, 3)

    def to_dict(self) -> dict:
        return asdict(self)


SPEC = QuantSpec()


def reciprocal_scale(scale: torch.Tensor) -> torch.Tensor:
    """The smallest scale 1/n (n an integer ≥ 1) that is ≥ `scale` (so the range only widens).
    Idempotent: a scale that already is float32(1/n) maps to itself (the 1e-4 absorbs rounding)."""
    return 1.0 / torch.clamp(torch.floor(1.0 / scale + 1e-4), min=1.0)


def act_qparams(lo: torch.Tensor, hi: torch.Tensor, tanh_lut: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 asymmetric (scale, zero_point) for a float range, computed in float32. The range is
    widened to include 0 so zero is exact (padding and ReLU-like outputs need it). Used by the
    fake quantizers *and* the exporter, so simulation and deployment share every bit of it.
    `tanh_lut` (see `QPoint.tanh_lut`): the range also reaches −1 and the scale is rounded up
    to 1/n, so zero_point ≥ n."""
    lo = torch.clamp(lo.float(), max=-1.0 if tanh_lut else 0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    scale = torch.clamp((hi - lo) / (SPEC.act_qmax - SPEC.act_qmin), min=1e-8)
    if tanh_lut:
        scale = reciprocal_scale(scale)
    zp = torch.clamp(torch.round(SPEC.act_qmin - lo / scale), SPEC.act_qmin, SPEC.act_qmax).to(torch.int32)
    return scale, zp


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """O×C×kh×kw → O×⌈C/2⌉×2×(kh·kw): input channels (2j, 2j+1) of each tap side by side (an odd
    last channel pairs with a zero, as the exporter's channel padding makes it)."""
    o, c = t.shape[:2]
    if c % 2:
        t = torch.cat([t, t.new_zeros((o, 1) + tuple(t.shape[2:]))], 1)
    return t.reshape(o, (c + 1) // 2, 2, -1)


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 scale: max|w| / 127, or the channel's largest same-sign
    pair sum |w0| + |w1| / 128 where that is larger — so every pair rounds to at most 128 levels
    (one level more at worst, which `pair_safe` takes back). Channels without such a pair keep
    full 8-bit resolution; the others lose at most one bit (the pair sum is at most 2·max|w|)."""
    w = w.detach()
    p = _pairs(w)
    same = p[:, :, 0] * p[:, :, 1] > 0
    pair_sum = ((p[:, :, 0].abs() + p[:, :, 1].abs()) * same).flatten(1).amax(1)
    peak = w.abs().flatten(1).amax(1)
    return torch.clamp(torch.maximum(peak / SPEC.weight_qmax, pair_sum / SPEC.weight_pair_sum_max), min=1e-12 / SPEC.weight_qmax)


def pair_safe(levels: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Integer `levels` (O×C×kh×kw, float) with every same-sign pair of input channels (2j, 2j+1)
    at one tap over `weight_pair_sum_max` in magnitude moved onto the limit: to the integer point
    on |q0| + |q1| = limit nearest to the unrounded `exact` pair (least squared error). With
    `weight_scales` a pair is at most one level over, from rounding both halves up. Other levels
    are returned unchanged."""
    limit = SPEC.weight_pair_sum_max
    q, r = _pairs(levels), _pairs(exact)
    q0, q1 = q[:, :, 0], q[:, :, 1]
    over = (q0 * q1 > 0) & (q0.abs() + q1.abs() > limit)
    if not bool(over.any()):
        return levels
    sign = torch.sign(q0)
    a = torch.round((r[:, :, 0].abs() - r[:, :, 1].abs() + limit) / 2).clamp(limit - SPEC.weight_qmax, SPEC.weight_qmax)
    safe = torch.stack([torch.where(over, sign * a, q0), torch.where(over, sign * (limit - a), q1)], 2)
    return safe.reshape(q.shape[0], -1, *levels.shape[2:])[:, :levels.shape[1]].reshape(levels.shape)


def weight_levels(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 levels as float, per-channel scales) of a conv weight as QuantSpec v3 stores it:
    nearest level, then `pair_safe`. The one function export and QAT both call, so the
    simulation trains on exactly the integers that ship."""
    scale = weight_scales(w).float()
    exact = w.detach().float() / scale.reshape(-1, *([1] * (w.dim() - 1)))
    levels = torch.clamp(torch.round(exact), SPEC.weight_qmin, SPEC.weight_qmax)
    return pair_safe(levels, exact), scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """`weight_levels` × scale forward, the identity backward (straight-through: no weight is
    clipped, the scale is each channel's own max)."""
    levels, scale = weight_levels(w)
    return w + (levels * scale.reshape(-1, *([1] * (w.dim() - 1))) - w).detach()


def fake_quant_inference(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """`torch.fake_quantize_per_tensor_affine`'s forward bit for bit (its CPU kernel's float32
    `x · (1/scale)`, round half to even, clamp, `(q − zp) · scale`), without gradient, as a few
    vectorised passes: about 5× faster on CPU, which is most of a QAT model's inference time
    (validation during QAT, the simulation the tests compare with ONNX Runtime)."""
    s = scale.detach().reshape(()).float()
    zp = float(zero_point.reshape(()))
    q = torch.round(x * (1.0 / s)).add_(zp).clamp_(SPEC.act_qmin, SPEC.act_qmax)
    return q.sub_(zp).mul_(s)


class FakeQuant(nn.Module):
    """Per-tensor uint8 fake quantization with a straight-through estimator.

    Moving-average mode: in training, lo/hi follow an exponential moving average of each
    batch's min/max (`momentum`). Learnable mode (LSQ): scale and zero point get gradients.
    `tanh_lut`: the scale used is rounded up to 1/n and the zero point
    kept ≥ n (straight-through for the learned ones), exactly as `act_qparams` does.
    """

    def __init__(self, lo: float, hi: float, momentum: float = 0.01, learnable: bool = False, fixed: bool = False,
                 tanh_lut: bool = False):
        super().__init__()
        self.register_buffer("lo", torch.tensor(float(lo)))
        self.register_buffer("hi", torch.tensor(float(hi)))
        self.momentum, self.fixed, self.tanh_lut = momentum, fixed, tanh_lut
        self.learnable = learnable and not fixed
        if self.learnable:
            scale, zp = act_qparams(self.lo, self.hi, tanh_lut)
            self.scale = nn.Parameter(scale.clone().reshape(1))  # the learnable op wants 1-element tensors
            self.zero_point = nn.Parameter(zp.float().reshape(1))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.learnable:
            scale = self.scale.detach().abs().clamp(min=1e-8)
            zp = self.zero_point.detach()
            if self.tanh_lut:
                scale = reciprocal_scale(scale)
                zp = torch.maximum(zp, torch.round(1.0 / scale))
            zp = zp.round().clamp(SPEC.act_qmin, SPEC.act_qmax)
            return scale, zp.to(torch.int32)
        return act_qparams(self.lo, self.hi, self.tanh_lut)

    def range(self) -> tuple[float, float]:
        """The float range this quantizer represents (what export writes)."""
        if not self.learnable:
            return float(self.lo), float(self.hi)
        scale, zp = self.qparams()
        return float((SPEC.act_qmin - zp) * scale), float((SPEC.act_qmax - zp) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: the same values, no autograd op needed
            if not self.learnable and self.training and not self.fixed:
                self._track(x)
            return fake_quant_inference(x, *self._forward_qparams())
        if self.learnable:
            scale, zp = self.scale, self.zero_point
            if self.tanh_lut:  # the snapped values forward, the learned ones' gradients backward
                snapped, snapped_zp = self.qparams()
                scale = scale + (snapped - scale).detach()
                zp = zp + (snapped_zp.float() - zp).detach()
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, scale, zp, SPEC.act_qmin, SPEC.act_qmax, 1.0 / (x.numel() * SPEC.act_qmax) ** 0.5)
        if self.training and not self.fixed:
            self._track(x)
        scale, zp = act_qparams(self.lo, self.hi, self.tanh_lut)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, SPEC.act_qmin, SPEC.act_qmax)

    def _track(self, x: torch.Tensor) -> None:
        """Moving-average mode: follow the batch's min/max."""
        with torch.no_grad():
            m = self.momentum
            self.lo.mul_(1 - m).add_(m * x.detach().min())
            self.hi.mul_(1 - m).add_(m * x.detach().max())

    def _forward_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) as the forward applies them: the learnable op takes the scale as
        it is and rounds and clamps the zero point (tanh points: snapped to 1/n first)."""
        if not self.learnable:
            return act_qparams(self.lo, self.hi, self.tanh_lut)
        if self.tanh_lut:
            return self.qparams()
        zp = self.zero_point.detach().round().clamp(SPEC.act_qmin, SPEC.act_qmax)
        return self.scale.detach(), zp


def fixed_range(qp: QPoint) -> tuple[float, float]:
    scale, zp = qp.fixed
    return (SPEC.act_qmin - zp) * scale, (SPEC.act_qmax - zp) * scale


def owner(qp: QPoint) -> QPoint:
    """The QPoint whose parameters `qp` uses (itself unless it shares)."""
    while qp.share is not None:
        qp = qp.share
    return qp


def free_points(model: QATIENet) -> list[QPoint]:
    """QPoints that need a range of their own (neither fixed nor shared)."""
    return [qp for qp in model.qpoints() if qp.fixed is None and qp.share is None]


def complete_ranges(model: QATIENet, ranges: Ranges) -> Ranges:
    """Ranges for *every* QPoint: fixed ones pinned, shared ones copied from their owner."""
    out = {}
    for qp in model.qpoints():
        src = owner(qp)
        if src.fixed is not None:
            out[qp.qname] = fixed_range(src)
        elif src.qname in ranges:
            out[qp.qname] = tuple(float(v) for v in ranges[src.qname])
        else:
            raise QatieError(f"no quantization range for {src.qname}")
    return out


def quant_params(model: QATIENet, ranges: Ranges) -> dict[str, tuple[float, int]]:
    """(scale, zero_point) of every QPoint, as float32-exact Python numbers."""
    tanh_lut = {qp.qname: owner(qp).tanh_lut for qp in model.qpoints()}
    out = {}
    for name, (lo, hi) in complete_ranges(model, ranges).items():
        scale, zp = act_qparams(torch.tensor(lo), torch.tensor(hi), tanh_lut[name])
        out[name] = (float(scale), int(zp))
    return out


# ---------------------------------------------------------------- calibration (PTQ, QAT init)

class _Recorder:
    """Collects per-QPoint min/max (pass 1) and a histogram over that range (pass 2)."""

    BINS = 4096

    def __init__(self):
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.hist: dict[str, np.ndarray] = {}
        self.pass_ = 1

    def hook(self, name: str):
        def record(x: torch.Tensor) -> torch.Tensor:
            v = x.detach()
            if self.pass_ == 1:
                self.lo[name] = min(self.lo.get(name, np.inf), float(v.min()))
                self.hi[name] = max(self.hi.get(name, -np.inf), float(v.max()))
            else:
                lo, hi = self.lo[name], self.hi[name]
                h = torch.histc(v.float().flatten(), self.BINS, lo, hi if hi > lo else lo + 1e-6).numpy()
                self.hist[name] = self.hist.get(name, 0) + h.astype(np.float64)  # float32 sums drift
            return x

        return record


def _percentile_range(hist: np.ndarray, lo: float, hi: float, pct: float) -> tuple[float, float]:
    """Clip (100 − pct)/2 % of the mass off each tail."""
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    tail = (100.0 - pct) / 200.0
    edges = np.linspace(lo, hi, len(hist) + 1)
    i_lo = int(np.searchsorted(cdf, tail, side="left"))
    i_hi = int(np.searchsorted(cdf, 1 - tail, side="left"))
    return float(edges[i_lo]), float(edges[min(i_hi + 1, len(hist))])


def _entropy_range(hist: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """KL-divergence calibration (TensorRT style) for an asymmetric uint8 range.

    Candidate ranges clip an equal tail mass p from each side, p on a log ladder from 0 to 1 %;
    for each, the reference distribution P (tails folded into the edge bins) is compared with Q,
    P re-quantized to 256 levels over the candidate range. The range of smallest KL(P‖Q) wins.
    A full-range candidate is always included, so entropy can return minmax — it does so only
    when clipping costs more information than the extra resolution buys. A candidate must span
    at least 2 histogram bins per level: narrower, Q equals P, KL is 0 and the narrowest window
    would always win (why ONNX Runtime's default 128-bin entropy calibrator returns exactly
    minmax is the mirror image: its only candidate is the full range; see docs/inspect.md).
    """
    edges = np.linspace(lo, hi, len(hist) + 1)
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    best, best_kl = (lo, hi), np.inf
    for p in [0.0] + list(np.logspace(-6, -2, 17)):
        i_lo = int(np.searchsorted(cdf, p, side="left")) if p > 0 else 0
        i_hi = int(np.searchsorted(cdf, 1 - p, side="left")) + 1 if p > 0 else len(hist)
        i_hi = min(max(i_hi, i_lo + 1), len(hist))
        if i_hi - i_lo < 2 * (SPEC.act_qmax - SPEC.act_qmin + 1) and p > 0:
            continue
        ref = hist[i_lo:i_hi].astype(np.float64).copy()
        ref[0] += hist[:i_lo].sum()
        ref[-1] += hist[i_hi:].sum()
        n_levels = SPEC.act_qmax - SPEC.act_qmin + 1
        # Q: each level's mass spread evenly over its non-empty bins (levels as np.array_split
        # groups the bins; counts are whole numbers, so the grouped sums are exact in any order)
        n_groups = min(n_levels, len(ref))
        size, extra = divmod(len(ref), n_groups)
        group = np.repeat(np.arange(n_groups), [size + 1] * extra + [size] * (n_groups - extra))
        nonempty = hist[i_lo:i_hi] > 0
        mass = np.bincount(group, weights=ref, minlength=n_groups)
        filled = np.bincount(group, weights=nonempty, minlength=n_groups)
        q = np.where(nonempty, mass[group] / np.maximum(filled[group], 1), 0.0)
        mask = ref > 0
        pn, qn = ref / ref.sum(), q / max(q.sum(), 1e-12)
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best_kl - 1e-9:
            best_kl, best = kl, (float(edges[i_lo]), float(edges[i_hi]))
    return best


@torch.no_grad()
def calibrate(model: QATIENet, images: Iterable[np.ndarray], method: str = "minmax",
              percentile: float = DEFAULT_PERCENTILE) -> Ranges:
    """Ranges of every free QPoint from FP32 activations on calibration images (H×W×3 float).

    minmax: the observed min and max. percentile: clip (100 − percentile)/2 % of the mass off
    each tail. entropy: the KL-optimal clipping (see `_entropy_range`).
    """
    if method not in CALIBRATION_METHODS:
        raise QatieError(f"unknown calibration method {method!r}: choose {', '.join(CALIBRATION_METHODS)}")
    images = list(images)
    if not images:
        raise QatieError("calibration needs at least one image")
    model.eval()
    rec = _Recorder()
    points = free_points(model)
    hooks = {qp: rec.hook(qp.qname) if qp in points else None for qp in model.qpoints()}
    with swapped_hooks(hooks, {c: None for c in model.convs()}):
        for pass_ in (1,) if method == "minmax" else (1, 2):
            rec.pass_ = pass_
            for img in images:
                model(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float())
    ranges = {}
    for qp in points:
        lo, hi = rec.lo[qp.qname], rec.hi[qp.qname]
        if method == "percentile":
            lo, hi = _percentile_range(rec.hist[qp.qname], lo, hi, percentile)
        elif method == "entropy":
            lo, hi = _entropy_range(rec.hist[qp.qname], lo, hi)
        ranges[qp.qname] = (lo, hi)
    return ranges


# ---------------------------------------------------------------- QAT: arming the network

def prepare_qat(model: QATIENet, ranges: Ranges, learnable: bool = False, momentum: float = 0.01) -> QATIENet:
    """Arm every QPoint with a FakeQuant (shared points use their owner's) and every conv
    weight with per-channel fake quantization. The model then computes what the INT8 ONNX
    model computes."""
    full = complete_ranges(model, ranges)
    model.set_subpixel(True)
    model.fake_quants = nn.ModuleDict()
    for qp in model.qpoints():
        if qp.share is None:
            fq = FakeQuant(*full[qp.qname], momentum=momentum, learnable=learnable, fixed=qp.fixed is not None,
                           tanh_lut=qp.tanh_lut)
            model.fake_quants[qp.qname.replace(".", "__")] = fq
    for qp in model.qpoints():  # a bound method, so the QPoint does not register it as a submodule
        qp.hook = model.fake_quants[owner(qp).qname.replace(".", "__")].forward
    for c in model.convs():
        c.weight_quant = fake_quant_weight
    return model


def current_ranges(model: QATIENet) -> Ranges:
    """Ranges of the free QPoints of an armed (QAT) model."""
    if not hasattr(model, "fake_quants"):
        raise QatieError("the model has no fake quantizers (it is not a QAT model)")
    return {qp.qname: model.fake_quants[qp.qname.replace(".", "__")].range() for qp in free_points(model)}


def quant_state(model: QATIENet) -> dict:
    """What a QAT checkpoint stores besides the weights: names, ranges and the mode."""
    ranges = current_ranges(model)
    names = sorted(ranges)
    learnable = any(fq.learnable for fq in model.fake_quants.values())
    return {"names": names, "ranges": torch.tensor([ranges[n] for n in names], dtype=torch.float64),
            "learnable": learnable, "spec": SPEC.to_dict() | {"float_ops": list(SPEC.float_ops)}}


def load_quant_state(model: QATIENet, state: dict) -> None:
    """Set an armed model's ranges from `quant_state` output (used when resuming QAT)."""
    for name, (lo, hi) in zip(state["names"], state["ranges"].tolist()):
        fq = model.fake_quants[name.replace(".", "__")]
        fq.lo.fill_(lo), fq.hi.fill_(hi)
        if fq.learnable:
            scale, zp = act_qparams(fq.lo, fq.hi, fq.tanh_lut)
            fq.scale.data.copy_(scale), fq.zero_point.data.copy_(zp.float())


def ranges_from_state(state: dict) -> Ranges:
    return {n: tuple(r) for n, r in zip(state["names"], state["ranges"].tolist())}
