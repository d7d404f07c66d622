"""Pad any H×W to a multiple of 8 and crop back — the one place every backend uses.

The network downsamples three times (two stride-2 encoders and a max-pool) and upsamples by
exactly 2× on the way back, so it needs H and W divisible by 8. Reflect padding keeps image
statistics natural at the border; where the image is too small to reflect (pad ≥ size, e.g. a
1×1 image) edge replication is used instead. Sides are padded to at least 16 so the bottleneck
keeps 2×2 pixels (InstanceNorm needs more than one).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MULTIPLE = 8
MIN_SIDE = 16


@dataclass(frozen=True)
class PadPlan:
    """Padding added at the bottom/right of an image of size (height, width)."""

    height: int
    width: int
    bottom: int
    right: int

    @property
    def mode_h(self) -> str:
        return "reflect" if self.bottom < self.height else "edge"

    @property
    def mode_w(self) -> str:
        return "reflect" if self.right < self.width else "edge"

    @property
    def is_noop(self) -> bool:
        return self.bottom == 0 and self.right == 0


def plan_padding(height: int, width: int, multiple: int = MULTIPLE) -> PadPlan:
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1×1, got {height}×{width}")
    def extra(n: int) -> int:
        return max(MIN_SIDE, n + (-n) % multiple) - n

    return PadPlan(height, width, extra(height), extra(width))


def pad_nchw(x: np.ndarray, multiple: int = MULTIPLE) -> tuple[np.ndarray, PadPlan]:
    """Pad an N×C×H×W numpy array; returns the padded array and the plan to undo it."""
    plan = plan_padding(x.shape[-2], x.shape[-1], multiple)
    if plan.is_noop:
        return x, plan
    x = np.pad(x, ((0, 0), (0, 0), (0, plan.bottom), (0, 0)), mode=plan.mode_h)
    x = np.pad(x, ((0, 0), (0, 0), (0, 0), (0, plan.right)), mode=plan.mode_w)
    return x, plan


def pad_torch(x, multiple: int = MULTIPLE):
    """Same as `pad_nchw` for a torch tensor (used by the torch model's forward)."""
    import torch.nn.functional as F

    plan = plan_padding(x.shape[-2], x.shape[-1], multiple)
    if plan.is_noop:
        return x, plan
    torch_mode = {"reflect": "reflect", "edge": "replicate"}
    x = F.pad(x, (0, 0, 0, plan.bottom), mode=torch_mode[plan.mode_h])
    x = F.pad(x, (0, plan.right, 0, 0), mode=torch_mode[plan.mode_w])
    return x, plan


def crop(x, plan: PadPlan):
    """Undo the padding of `plan` on an N×C×H×W array or tensor."""
    return x[..., : plan.height, : plan.width]
