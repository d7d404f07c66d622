"""The paper's training loss (2·L_PSNR + L_cos + L_outlier) and plain L1."""
from __future__ import annotations

import torch

_Y = (0.299, 0.587, 0.114)


def psnr_y_loss(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """(50 − PSNR)/100 on the luma channel, PSNR per image then averaged."""
    w = out.new_tensor(_Y).view(1, 3, 1, 1)
    mse = (((out - tgt) * w).sum(1) ** 2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / (mse + 1e-10))
    return ((50.0 - psnr) / 100.0).mean()


def cosine_loss(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """1 − cosine similarity of per-pixel RGB vectors: penalises colour (hue) shifts."""
    return (1.0 - torch.nn.functional.cosine_similarity(out, tgt, dim=1, eps=1e-6)).mean()


def outlier_loss(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """L1 weighted up where the error is far from its mean (in standard deviations, per image)."""
    err = (out - tgt).abs()
    flat = err.detach().flatten(1)
    mean, std = flat.mean(1).view(-1, 1, 1, 1), flat.std(1).view(-1, 1, 1, 1)
    weight = 1.0 + ((err.detach() - mean).abs() / (std + 1e-6)).clamp(max=5.0)
    return (weight * err).mean()


def paper_loss(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return 2.0 * psnr_y_loss(out, tgt) + cosine_loss(out, tgt) + outlier_loss(out, tgt)


def l1_loss(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return (out - tgt).abs().mean()


LOSSES = {"paper": paper_loss, "l1": l1_loss}
