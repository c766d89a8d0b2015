"""SRResNet, the SRGAN proxy generator (Ledig et al. 2017), in ESRGAN's MSRResNet form by default.

Sixteen residual blocks of two 3x3 convolutions at 64 channels, then sub-pixel (pixel-shuffle) upsampling:
two x2 steps for x4, one step for x2 or x3. Like MSRResNet the default has no BatchNorm (ESRGAN found BN
hurts SR); `batchnorm=True` puts BN back after each convolution of the residual blocks as in Ledig et al.
`skip="bilinear"` adds a bilinear upsampling of the input to the output as BasicSR's MSRResNet does; the
authors' MSRResNet has that line commented out, hence the default "none". Every conv gets the 0.1-scaled
Kaiming init, as in MSRResNet. Without BN, x4: 1,517,571 parameters (either skip).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.nets.layers import bilinear_skip, scaled_kaiming_, upsample_steps


class ResidualBlock(nn.Module):
    """conv-(BN)-ReLU-conv-(BN) plus identity."""

    def __init__(self, num_feat: int, batchnorm: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(num_feat)) if batchnorm else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, padding=1),
            norm(),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, padding=1),
            norm(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    def __init__(
        self, upscale: int = 4, num_feat: int = 64, num_blocks: int = 16, batchnorm: bool = False, skip: str = "none"
    ):
        super().__init__()
        self.upscale, self.skip = upscale, skip
        self.conv_first = nn.Conv2d(3, num_feat, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(num_feat, batchnorm) for _ in range(num_blocks)])
        up: list[nn.Module] = []
        for s in upsample_steps(upscale):
            up += [nn.Conv2d(num_feat, num_feat * s * s, 3, padding=1), nn.PixelShuffle(s)]
            up += [nn.LeakyReLU(0.1, inplace=True)]
        self.upsample = nn.Sequential(*up)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)
        scaled_kaiming_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.lrelu(self.conv_first(x))
        out = self.upsample(self.body(feat))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return bilinear_skip(out, x, self.upscale, self.skip)
