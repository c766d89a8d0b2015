"""Losses: the adversarial losses (vanilla GAN, RaGAN eq. 3), the VGG and ResNet perceptual losses (eqs. 4-5) and the DP loss (eqs. 8-9)."""

from trainer.losses.dual_perceptual import DualPerceptualLoss
from trainer.losses.gan import discriminator_loss, generator_adversarial_loss, ragan_loss
from trainer.losses.perceptual import ResNetStages, imagenet_normalize, vgg_extractor

__all__ = [
    "DualPerceptualLoss",
    "ResNetStages",
    "discriminator_loss",
    "generator_adversarial_loss",
    "imagenet_normalize",
    "ragan_loss",
    "vgg_extractor",
]
