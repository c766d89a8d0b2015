"""The adversarial term of eq. (2) and the discriminator's loss, on raw discriminator logits.

`loss.gan` picks the game: "ragan" is the relativistic average GAN of eq. (3) (Jolicoeur-Martineau 2018;
ESRGAN, the authors' ESRGAN-DP through BasicSR's `ESRGANModel`); "vanilla" is the standard GAN that the
authors' SRGAN-DP proxy trains with (BasicSR's `SRGANModel`): G minimises BCE(D(G(x)), 1), D minimises
BCE(D(y), 1) + BCE(D(G(x)), 0). RaGAN's batch means are over the global batch when one training runs on
several ranks (`trainer.distributed.global_mean`), as one process on the whole batch computes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import GANS, check_choice
from trainer.distributed import global_mean


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(logits) against a constant label, averaged."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def ragan_loss(real: torch.Tensor, fake: torch.Tensor, detach_means: bool = False) -> torch.Tensor:
    """Relativistic average loss, eq. (3): D_Ra(a, b) = sigmoid(D(a) - mean D(b)); the loss asks
    D_Ra(real, fake) -> 1 and D_Ra(fake, real) -> 0, each term half-weighted.

    As written it is the discriminator's loss. As the paper notes, eq. (3) is asymmetric and the generator's
    loss is the same function with the arguments swapped: `ragan_loss(fake, real.detach())`.
    `detach_means=True` stops gradients through both batch means, as BasicSR and the authors do for the
    discriminator (two half-weighted terms, each with the other side's mean detached); False is the RaGAN
    paper's form, where each term also pulls on the other batch through its mean.
    """
    real_mean, fake_mean = global_mean(real), global_mean(fake)  # the whole batch's, on several ranks too
    if detach_means:
        real_mean, fake_mean = real_mean.detach(), fake_mean.detach()
    return 0.5 * (bce(real - fake_mean, 1.0) + bce(fake - real_mean, 0.0))


def generator_adversarial_loss(gan: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """l_adversarial of eq. (2): `fake` = D(G(x)) carries the generator's gradient, `real` = D(y) is a
    constant (detached here); the vanilla game does not use it."""
    check_choice("loss.gan", gan, GANS)
    if gan == "vanilla":
        return bce(fake, 1.0)
    return ragan_loss(fake, real.detach())


def discriminator_loss(gan: str, real: torch.Tensor, fake: torch.Tensor, detach_means: bool = True) -> torch.Tensor:
    """The discriminator's loss on D(y) = `real` and D(G(x).detach()) = `fake`; `detach_means` applies to
    RaGAN only (see `ragan_loss`)."""
    check_choice("loss.gan", gan, GANS)
    if gan == "vanilla":
        return bce(real, 1.0) + bce(fake, 0.0)
    return ragan_loss(real, fake, detach_means)
