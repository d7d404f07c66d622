"""The paper's three-scale enhancement network and its ablation variants.

Every tensor that the INT8 scheme quantizes passes through a named `QPoint`. In FP32 a QPoint
is the identity; `qatie.model.quant` arms it with a fake quantizer (QAT), a range recorder (PTQ
calibration) or an ONNX marker (export). That is how the torch simulation, the calibration and
the exported INT8 graph all quantize exactly the same tensors.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from qatie.padding import crop, pad_torch

WIDTHS = (16, 24, 32)
VARIANTS = ("full", "no_global_residual", "no_fusion_refiner", "no_encoder_refiner")


class QPoint(nn.Module):
    """A quantization point: the identity unless `hook` is set.

    `fixed` pins (scale, zero_point) — the network input and output are always 1/255, 0.
    `share` names the QPoint whose parameters this one reuses: max-pool does not change the
    value grid, so its output keeps its input's scale; a concat's inputs use the concat's own
    scale (as TFLite does); an up-conv's four phases use the up-conv's — ORT then runs the pool,
    the concats and the phase interleave on uint8, as plain copies. `tanh_lut` (set on owners
    only): the range reaches down to −1 at least and the scale is exactly 1/n for an integer n,
    so tanh outputs quantized here run as a 256-entry lookup table (tanh(x) = 2σ(2x) − 1, ORT's
    QLinearSigmoid; see `qatie.export.graph_opt`).
    """

    def __init__(self, fixed: Optional[tuple[float, int]] = None):
        super().__init__()
        self.fixed = fixed
        self.share: Optional[QPoint] = None
        self.tanh_lut = False
        self.qname = ""  # set by the network after construction (its dotted module path)
        self.hook: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.hook is None else self.hook(x)


class QConv2d(nn.Conv2d):
    """Conv2d whose weight can be fake-quantized (int8, symmetric, per output channel)."""

    weight_quant: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        return self._conv_forward(x, w, self.bias)


@contextmanager
def swapped_hooks(hooks: dict[QPoint, Optional[Callable]], weight_quant: Optional[dict[QConv2d, Optional[Callable]]] = None):
    """Within a `with` block, QPoints run `hooks` ({QPoint: hook, or None for identity}) and convs
    `weight_quant` ({conv: fn or None}); afterwards — also after an error — what was there before.
    Calibration, export tracing and the sensitivity analyses all borrow a model this way."""
    weight_quant = weight_quant or {}
    saved = [(qp, qp.hook) for qp in hooks]
    saved_w = [(c, c.weight_quant) for c in weight_quant]
    try:
        for qp, h in hooks.items():
            qp.hook = h
        for c, w in weight_quant.items():
            c.weight_quant = w
        yield
    finally:
        for qp, h in saved:
            qp.hook = h
        for c, w in saved_w:
            c.weight_quant = w


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> QConv2d:
    return QConv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class GatedEncoder(nn.Module):
    """Two parallel stride-2 convs; tanh of each; their product is the gated feature.

    The tanh outputs go to the gate (quantized at `q_ta`/`q_tb`) and to a later concat (at
    `q_ca`/`q_cb`, which take that concat's parameters): quantizing the float tanh twice is
    more precise than requantizing, and in INT8 both are lookup tables on the same input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a, self.b = conv(cin, cout, 3, 2), conv(cin, cout, 3, 2)
        self.q_a, self.q_b, self.q_ta, self.q_tb, self.q_gate, self.q_ca, self.q_cb = (QPoint() for _ in range(7))
        self.q_ta.tanh_lut = self.q_tb.tanh_lut = True

    def forward(self, x):
        ta = torch.tanh(self.q_a(self.a(x)))
        tb = torch.tanh(self.q_b(self.b(x)))
        return self.q_ca(ta), self.q_gate(self.q_ta(ta) * self.q_tb(tb)), self.q_cb(tb)


class Refine(nn.Module):
    """Refinement block: an InstanceNorm branch and a 1×1 branch, two 3×3 convs, 1×1 skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.t_conv = conv(cin, cin, 3)
        self.t_norm = nn.InstanceNorm2d(cin, affine=True)
        self.u = conv(cin, cin, 1)
        self.m1, self.m2 = conv(2 * cin, cout, 3), conv(cout, cout, 3)
        self.skip = conv(2 * cin, cout, 1)
        names = ("t_conv", "t_norm", "t_act", "u", "cat", "m1", "m1_act", "m2", "m2_act", "skip", "out")
        self.q = nn.ModuleDict({n: QPoint() for n in names})

    def forward(self, x):
        q = self.q
        t = q["t_act"](lrelu(q["t_norm"](self.t_norm(q["t_conv"](self.t_conv(x))))))
        cat = q["cat"](torch.cat([t, q["u"](self.u(x))], 1))
        m = q["m1_act"](lrelu(q["m1"](self.m1(cat))))
        m = q["m2_act"](lrelu(q["m2"](self.m2(m))))
        return q["out"](m + q["skip"](self.skip(cat)))


class ConvAct(nn.Module):
    """conv3×3 + LeakyReLU: stands in for a refinement block in the ablation variants."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv(cin, cout, 3)
        self.q_conv, self.q_out = QPoint(), QPoint()

    def forward(self, x):
        return self.q_out(lrelu(self.q_conv(self.conv(x))))


def phase_weights(w: torch.Tensor) -> list[torch.Tensor]:
    """The four 2×2 kernels that compute "nearest 2× resize, then the 3×3 conv `w`" directly on
    the low-resolution input, one per output phase (row a, column b) in the order 00, 01, 10, 11.

    Output row 2i reads resized rows 2i−1, 2i, 2i+1 = input rows i−1, i, i: taps 1 and 2 read the
    same pixel, so their weights add (phase 0: [w0, w1 + w2] over rows i−1, i; phase 1:
    [w0 + w1, w2] over rows i, i+1); likewise for columns. 16 taps per four outputs instead of 36.
    The additions are written out so that QAT and export get bit-identical phase weights."""
    rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)]
    return [torch.stack([r[..., 0], r[..., 1] + r[..., 2]], 3) if b == 0 else torch.stack([r[..., 0] + r[..., 1], r[..., 2]], 3)
            for r in rows for b in (0, 1)]


#: The four output phases (row a, column b), and F.pad's (left, right, top, bottom) for each:
#: phase 0 reads pixels i−1, i; phase 1 i, i+1.
PHASES = [(a, b) for a in (0, 1) for b in (0, 1)]
PHASE_PADS = [(1 - b, b, 1 - a, a) for a, b in PHASES]


class _ZeroPad(torch.autograd.Function):
    """F.pad that exports as one ONNX Pad with constant pads (the tracer would emit a subgraph),
    so `qatie.export.graph_opt.fold_pad_into_conv` can fold it into the conv's own padding."""

    @staticmethod
    def forward(ctx, x, pad):
        ctx.pad = pad
        return F.pad(x, pad)

    @staticmethod
    def backward(ctx, g):
        left, right, top, bottom = ctx.pad
        return g[..., top:g.shape[-2] - bottom, left:g.shape[-1] - right], None

    @staticmethod
    def symbolic(g, x, pad):
        left, right, top, bottom = pad
        pads = g.op("Constant", value_t=torch.tensor([0, 0, top, left, 0, 0, bottom, right], dtype=torch.int64))
        return g.op("Pad", x, pads, mode_s="constant")


def interleave_phases(ys: list[torch.Tensor]) -> torch.Tensor:
    """Four N×C×H×W phase outputs (00, 01, 10, 11) → N×C×2H×2W with y[2i+a, 2j+b] = y_ab[i, j].

    Written as channels-last copies (ONNX Runtime runs convs channels-last, so the transposes
    cancel): concatenating two phases on C and reshaping interleaves their columns; concatenating
    the two column-interleaved rows on W and reshaping interleaves the rows. All pure copies,
    so the INT8 graph runs them on uint8 (`qatie.export.graph_opt.copies_in_uint8`)."""
    n, c, h, w = ys[0].shape
    t = [y.permute(0, 2, 3, 1) for y in ys]
    rows = [torch.cat(t[k:k + 2], 3).reshape(n, h, 2 * w, c) for k in (0, 2)]
    return torch.cat(rows, 2).reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


#: How a size that is not exactly 2× is reached (e.g. 12 → 25 at a 100×100 input): the authors'
#: TFLite model resizes with half-pixel centres, which torch calls "nearest-exact" (checked layer by
#: layer by `qatie.paper.tflite.prove_mapping`). At exactly 2× it equals plain nearest.
RESIZE_MODE = "nearest-exact"


class Up(nn.Module):
    """Nearest-neighbour 2× resize (sizes are multiples of 8, so 2× is the target size), conv.

    `subpixel` (what the INT8 scheme quantizes; set by `qatie.model.quant.prepare_qat` and the INT8
    export): the same function computed as four 2×2 phase convs on the low-resolution input
    (`phase_weights`), each quantized at a point sharing `q_conv`, then interleaved — 4/9 of
    the multiply-adds and no upsampled tensor. In float both forms agree to rounding."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv(cin, cout, 3)
        self.q_conv = QPoint()
        self.q_phase = nn.ModuleList(QPoint() for _ in range(4))
        for qp in self.q_phase:
            qp.share = self.q_conv
        self.subpixel = False

    def phase_outputs(self, x) -> list[torch.Tensor]:
        """The four phase outputs (00, 01, 10, 11), each at its quantization point."""
        phases = getattr(self.conv, "phases", None)  # the export's named 2×2 convs (`conv.phases.k`)
        if phases is not None:
            ys = [m(_ZeroPad.apply(x, pad)) for m, pad in zip(phases, PHASE_PADS)]
        else:  # one conv for all four (per-channel weight quantization is per phase anyway)
            quant = self.conv.weight_quant or (lambda w: w)
            y = F.conv2d(F.pad(x, (1, 1, 1, 1)), quant(torch.cat(phase_weights(self.conv.weight))),
                         self.conv.bias.repeat(4))
            h, w, n = x.shape[-2], x.shape[-1], self.conv.out_channels
            # output o reads input pixels o−1, o: phase 0 at i is o = i, phase 1 at i is o = i + 1
            ys = [y[:, k * n:(k + 1) * n, a:a + h, b:b + w] for k, (a, b) in enumerate(PHASES)]
        return [qp(y) for qp, y in zip(self.q_phase, ys)]

    def forward(self, x, size: Optional[tuple[int, int]] = None):
        """`size`: the target H×W when it is not exactly 2× (only without padding to a multiple
        of 8, `QATIENet.pad_input = False`), resized as the authors' TFLite does (`RESIZE_MODE`)."""
        if size is not None and tuple(size) != (2 * x.shape[-2], 2 * x.shape[-1]):
            return self.q_conv(self.conv(F.interpolate(x, size=tuple(size), mode=RESIZE_MODE)))
        if not self.subpixel:
            return self.q_conv(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        return self.q_conv(interleave_phases(self.phase_outputs(x)))


def delta_phase_weights(w: torch.Tensor) -> torch.Tensor:
    """A 3×3 conv `w` (cout×cin) applied to the interleave of four phase tensors, as one 2×2 conv
    (padding 1) on the phases stacked along channels (4·cin in, 4·cout out, slot-major), at low
    resolution. `unstack_delta` turns its output into the full-resolution one.

    Its output at position o, slot (a, b), is full-resolution pixel (2o−1+a, 2o−1+b): a window
    shifted by one pixel, so that every slot reads only positions o−1 and o (a 2×2 window, not
    the 3×3 an unshifted phase needs). Tap (dy, dx) reads full-resolution row 2o−1+a+dy = phase
    (a+dy−1) mod 2 at position o + ⌊(a+dy−1)/2⌋ ∈ {o−1, o}; likewise for columns. Every weight is
    placed once per slot, the rest are zeros: the integer accumulators (and so every output
    level) equal the full-resolution conv's, without the full-resolution tensor."""
    cout, cin = w.shape[:2]
    out = w.new_zeros(4 * cout, 4 * cin, 2, 2)
    for k, (a, b) in enumerate(PHASES):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                p = ((a + dy - 1) % 2) * 2 + (b + dx - 1) % 2
                out[k * cout:(k + 1) * cout, p * cin:(p + 1) * cin, (a + dy - 1) // 2 + 1, (b + dx - 1) // 2 + 1] = \
                    w[:, :, dy + 1, dx + 1]
    return out


def unstack_delta(d: torch.Tensor, cout: int) -> torch.Tensor:
    """The output of `delta_phase_weights`' conv (N×4·cout×(H+1)×(W+1)) → N×cout×2H×2W: its four
    slots interleaved cover full-resolution rows and columns −1 … 2H; the outer ring is cropped."""
    return interleave_phases(list(d.split(cout, 1)))[..., 1:-1, 1:-1]


class Fuse(nn.Module):
    """Concatenate decoder, refined and skip features and mix them with a 1×1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv(cin, cout, 1)
        self.q_cat, self.q_conv = QPoint(), QPoint()

    def forward(self, *xs):
        return self.q_conv(self.conv(self.q_cat(torch.cat(xs, 1))))


class QATIENet(nn.Module):
    """Input N×3×H×W RGB in [0,1] (any H, W); output the same shape in [0,1]."""

    def __init__(self, width: int = 32, variant: str = "full"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if not isinstance(width, int) or width < 4:
            raise ValueError(f"width must be an integer ≥ 4 (the paper uses {WIDTHS}), got {width!r}")
        c = self.width = width
        self.variant = variant
        enc_block = ConvAct if variant == "no_encoder_refiner" else Refine
        fuse_block = ConvAct if variant == "no_fusion_refiner" else Refine
        self.q_input = QPoint(fixed=(1 / 255, 0))
        self.enc1, self.enc2 = GatedEncoder(3, c), GatedEncoder(c, 2 * c)
        self.ref_s2, self.ref_s4 = enc_block(c, c), enc_block(2 * c, 2 * c)
        self.q_pool = QPoint()
        self.bottleneck = enc_block(2 * c, 4 * c)
        self.up4, self.up2, self.up1 = Up(4 * c, 2 * c), Up(2 * c, c), Up(c, c)
        self.fuse4, self.fuse2 = Fuse(8 * c, 2 * c), Fuse(4 * c, c)
        self.ref_f4, self.ref_f2 = fuse_block(2 * c, 2 * c), fuse_block(c, c)
        self.delta = conv(c, 3, 3)
        # Start as the identity (delta = 0): a fresh model leaves photos alone and learns changes.
        nn.init.zeros_(self.delta.weight), nn.init.zeros_(self.delta.bias)
        self.q_delta = QPoint()
        self.q_delta_phases = QPoint()  # the export computes delta on up1's phases (`delta_phase_weights`)
        self.q_delta_phases.share = self.q_delta
        self.q_output = QPoint(fixed=(1 / 255, 0))
        # Pad the input to a multiple of 8 (so every up-conv is exactly 2×, as the INT8 export needs).
        # False runs any size as the paper's network does, resizing to the skip's size: what the
        # authors' fixed-size TFLite model computes at 100×100 (`qatie.paper.tflite`).
        self.pad_input = True
        for name, m in self.named_modules():
            if isinstance(m, QPoint):
                m.qname = name
        # Value-grid-preserving ops keep their input's quantization parameters.
        self.q_pool.share = self.ref_s4.q["out"] if isinstance(self.ref_s4, Refine) else self.ref_s4.q_out
        # A concat's inputs take the concat's parameters, so it is a plain uint8 copy in ORT.
        for block in (self.ref_s2, self.ref_s4, self.bottleneck, self.ref_f4, self.ref_f2):
            if isinstance(block, Refine):
                block.q["t_act"].share = block.q["u"].share = block.q["cat"]
        for fuse, up, skip, enc in ((self.fuse4, self.up4, self.ref_s4, self.enc2), (self.fuse2, self.up2, self.ref_s2, self.enc1)):
            for qp in (up.q_conv, skip.q["out"] if isinstance(skip, Refine) else skip.q_out, enc.q_ca, enc.q_cb):
                qp.share = fuse.q_cat
            fuse.q_cat.tanh_lut = True  # it quantizes tanh outputs too (enc.q_ca / q_cb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_input:
            x, plan = pad_torch(x)
        x = self.q_input(x)
        xa1, g1, xb1 = self.enc1(x)
        s2 = self.ref_s2(g1)
        xa2, g2, xb2 = self.enc2(s2)
        s4 = self.ref_s4(g2)
        b = self.bottleneck(self.q_pool(F.max_pool2d(s4, 2)))
        sizes = (None, None, None) if self.pad_input else (s4.shape[-2:], s2.shape[-2:], x.shape[-2:])
        f4 = self.ref_f4(self.fuse4(self.up4(b, sizes[0]), s4, xa2, xb2))
        f2 = self.ref_f2(self.fuse2(self.up2(f4, sizes[1]), s2, xa1, xb1))
        phases = getattr(self.delta, "phases", None)  # set by the export (sub-pixel form)
        if phases is not None:
            stack = self.up1.q_conv(torch.cat(self.up1.phase_outputs(f2), 1))
            delta = self.q_delta(unstack_delta(self.q_delta_phases(phases(stack)), self.delta.out_channels))
        else:
            delta = self.q_delta(self.delta(self.up1(f2, sizes[2])))
        y = delta if self.variant == "no_global_residual" else x + delta
        y = torch.clamp(self.q_output(y), 0.0, 1.0)
        return y if not self.pad_input or plan.is_noop else crop(y, plan)  # no-op skipped so ONNX export keeps H, W dynamic

    def qpoints(self) -> list[QPoint]:
        return [m for m in self.modules() if isinstance(m, QPoint)]

    def convs(self) -> list[QConv2d]:
        return [m for m in self.modules() if isinstance(m, QConv2d)]

    def set_subpixel(self, on: bool = True) -> None:
        """Compute the up-convs as the INT8 scheme quantizes them (`Up`); same function in float."""
        for m in self.modules():
            if isinstance(m, Up):
                m.subpixel = on


def build_model(width: int = 32, variant: str = "full") -> QATIENet:
    """Build the network: `width` is the paper's c (16, 24 or 32), `variant` an ablation."""
    return QATIENet(width, variant)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
