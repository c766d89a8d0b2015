"""The networks: SRResNet (SRGAN proxy), RRDBNet (ESRGAN) and the VGG-style discriminator."""

from __future__ import annotations

from torch import nn

from trainer.config import Config
from trainer.nets.discriminator import VGGDiscriminator
from trainer.nets.rrdbnet import RRDBNet
from trainer.nets.srresnet import SRResNet

__all__ = ["RRDBNet", "SRResNet", "VGGDiscriminator", "build_discriminator", "build_generator"]


def build_generator(cfg: Config) -> nn.Module:
    """`arch=srgan` -> SRResNet (16 blocks by default), `arch=esrgan` -> RRDBNet (23 RRDB by default);
    `model.skip` and `model.init` as described in each network's module."""
    m = cfg.model
    if cfg.arch == "srgan":
        return SRResNet(cfg.upscale, m.num_feat, m.num_blocks or 16, m.batchnorm, m.skip)
    return RRDBNet(cfg.upscale, m.num_feat, m.num_blocks or 23, m.growth, m.skip, m.init)


def build_discriminator(cfg: Config) -> VGGDiscriminator:
    return VGGDiscriminator(input_size=cfg.data.hr_patch)
