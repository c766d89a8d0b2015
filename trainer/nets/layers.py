"""Pieces shared by the generators: the upsampling schedule, ESRGAN's scaled initialisation and the
optional bilinear skip."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import SKIPS, check_choice


def upsample_steps(upscale: int) -> list[int]:
    """x4 = two x2 steps; x2 and x3 are one step (section 3.1)."""
    if upscale not in (2, 3, 4):
        raise ValueError(f"upscale={upscale}: supported factors are 2, 3 and 4")
    return [2, 2] if upscale == 4 else [upscale]


def scaled_kaiming_(net: nn.Module, scale: float = 0.1) -> None:
    """Kaiming-normal conv weights times `scale`, zero biases: ESRGAN's init, which keeps deep residual
    branches small at the start of training."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def bilinear_skip(out: torch.Tensor, x: torch.Tensor, upscale: int, skip: str) -> torch.Tensor:
    """`model.skip`: "bilinear" adds the bilinearly upsampled input to the output (BasicSR's MSRResNet),
    "none" returns `out` unchanged (the authors' MSRResNet, and RRDBNet). No parameters either way."""
    check_choice("model.skip", skip, SKIPS)
    if skip == "none":
        return out
    return out + F.interpolate(x, scale_factor=upscale, mode="bilinear", align_corners=False)
