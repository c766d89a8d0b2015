"""RRDBNet, the ESRGAN generator (Wang et al. 2018), as described in section 3.1 of the paper.

23 Residual-in-Residual Dense Blocks at 64 channels (growth 32, residual scaling 0.2, no BatchNorm), a
trunk convolution with a long skip, then upsampling by nearest-neighbour interpolation + 3x3 conv +
LeakyReLU: two x2 rounds for x4, one x2 or x3 round otherwise. x4: 16,697,987 parameters (either skip).

`init="basicsr"` gives the 0.1-scaled Kaiming init to the five convs of each dense block only, as BasicSR
and the authors do; the first, body, upsampling and last convs keep PyTorch's default. `init="all_convs"`
scales every conv. `skip="bilinear"` adds a bilinear upsampling of the input to the output (not ESRGAN's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import INITS, check_choice
from trainer.nets.layers import bilinear_skip, scaled_kaiming_, upsample_steps

RES_SCALE = 0.2


def lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


class DenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(num_feat + i * growth, growth if i < 4 else num_feat, 3, padding=1) for i in range(5)
        )
        self.act = lrelu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(self.act(conv(torch.cat(feats, 1))))
        return x + RES_SCALE * self.convs[-1](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Three dense blocks in a residual, again scaled by 0.2."""

    def __init__(self, num_feat: int, growth: int):
        super().__init__()
        self.blocks = nn.Sequential(*[DenseBlock(num_feat, growth) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RES_SCALE * self.blocks(x)


class RRDBNet(nn.Module):
    def __init__(
        self,
        upscale: int = 4,
        num_feat: int = 64,
        num_blocks: int = 23,
        growth: int = 32,
        skip: str = "none",
        init: str = "basicsr",
    ):
        super().__init__()
        check_choice("model.init", init, INITS)
        self.upscale, self.skip = upscale, skip
        self.steps = upsample_steps(upscale)
        self.conv_first = nn.Conv2d(3, num_feat, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(num_feat, growth) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_up = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, padding=1) for _ in self.steps)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)
        self.act = lrelu()
        scaled = [self] if init == "all_convs" else [m for m in self.modules() if isinstance(m, DenseBlock)]
        for net in scaled:
            scaled_kaiming_(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for scale, conv in zip(self.steps, self.conv_up):
            feat = self.act(conv(F.interpolate(feat, scale_factor=scale, mode="nearest")))
        return bilinear_skip(self.conv_last(self.act(self.conv_hr(feat))), x, self.upscale, self.skip)
