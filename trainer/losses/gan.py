"""The relativistic average GAN loss (RaGAN, Jolicoeur-Martineau 2018), eq. (3) of the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ragan_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average loss on raw discriminator logits, eq. (3):
    D_Ra(a, b) = sigmoid(D(a) - mean D(b)); the loss asks D_Ra(real, fake) -> 1 and D_Ra(fake, real) -> 0.

    As written it is the discriminator's loss. As the paper notes, eq. (3) is asymmetric and the generator's
    loss is the same function with the arguments swapped: `ragan_loss(fake, real)`.
    """
    pos = real - fake.mean()
    neg = fake - real.mean()
    return 0.5 * (
        F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
        + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
    )
