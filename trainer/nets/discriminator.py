"""ESRGAN's VGG-style discriminator (VGGStyleDiscriminator128), parameterised by the HR patch size.

Five stages of [3x3 conv, BN, LeakyReLU(0.2), 4x4 stride-2 conv, BN, LeakyReLU(0.2)] with 64, 128, 256,
512, 512 channels (the very first conv has a bias and no BN), then Linear(512*s*s, 100), LeakyReLU,
Linear(100, 1), where s = input_size / 32. At the paper's input_size=128 (section 3.1) this is exactly
ESRGAN's network; smaller patches (e.g. the smoke preset's 32x32) change only the first linear layer's
input width, and the training loop prints that difference.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.errors import UserError

WIDTHS = (1, 2, 4, 8, 8)  # channels per stage, in multiples of num_feat=64


def conv_bn_lrelu(c_in: int, c_out: int, kernel: int, stride: int, bn: bool) -> list[nn.Module]:
    """Conv (bias only without BN), optional BatchNorm, LeakyReLU(0.2)."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=1, bias=not bn)
    return [conv, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)] if bn else [conv, nn.LeakyReLU(0.2, True)]


class VGGDiscriminator(nn.Module):
    def __init__(self, input_size: int = 128, num_feat: int = 64):
        super().__init__()
        if input_size <= 0 or input_size % 32:
            raise UserError(f"discriminator input_size={input_size}: must be a positive multiple of 32 (e.g. 128)")
        self.input_size = input_size
        layers: list[nn.Module] = []
        c_in = 3
        for i, mult in enumerate(WIDTHS):
            c = num_feat * mult
            layers += conv_bn_lrelu(c_in, c, kernel=3, stride=1, bn=i > 0)  # the very first conv has no BN
            layers += conv_bn_lrelu(c, c, kernel=4, stride=2, bn=True)
            c_in = c
        self.features = nn.Sequential(*layers)
        side = input_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, 100), nn.LeakyReLU(0.2, inplace=True), nn.Linear(100, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits D(x), shape (N, 1); eq. (3) applies the sigmoid to differences of these."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            size = self.input_size
            raise ValueError(f"discriminator built for {size}x{size} inputs, got {tuple(x.shape)}")
        return self.classifier(self.features(x))
