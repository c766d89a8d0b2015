"""The Dual Perceptual loss, eqs. (8)-(9), and the two ablation variants of Table 6.

    l_DP = l_VGG + (1/mu) * zeta * l_RES,   zeta = value((l_VGG + c) / (l_RES + c))

zeta is detached from the graph, so it scales the ResNet gradient without changing its direction. On several
ranks (`train.devices`) zeta comes from the global batch's l_VGG and l_RES (their means over ranks), so every
rank weighs its l_RES by the value one process on the whole batch would use, never by its own shard's.

`mode` picks the perceptual term (Table 6): "dp" the dynamic weight above; "vgg" the VGG loss alone (the
same as mu=inf, and no ResNet is built); "static" l_VGG + static_weight * l_RES.

`variant="published_code"` reproduces the authors' released implementation, which departs from the paper:
the ResNet loss is the *sum* of the L1 losses after each of stages 1..m (m = beta's stage; their code fixes
m=3, i.e. beta3_6), the ResNet sees unnormalised [0, 1] input and stays in train mode (BatchNorm on batch
statistics), and the ratio has no c: zeta = value(l_VGG / l_RES). The VGG part is identical. Their code
loads ImageNet weights for both extractors from files (their README asks for `resnet50.pth` and
`vgg19.pth`), as `weights=imagenet` does; `weights=random` changes both extractors and is never the
authors' setting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import BETAS, PERCEPTUAL, VARIANTS, check_choice, check_mu
from trainer.distributed import mean_over_ranks
from trainer.errors import UserError
from trainer.losses.perceptual import ResNetStages, imagenet_normalize, vgg_extractor


class DualPerceptualLoss(nn.Module):
    def __init__(
        self,
        mu: float = 0.5,
        beta: str = "beta3_6",
        weights: str = "imagenet",
        c: float = 1e-8,
        mode: str = "dp",
        static_weight: float = 1.0,
        variant: str = "paper",
    ):
        super().__init__()
        check_mu(mu)
        check_choice("beta", beta, BETAS)
        check_choice("mode", mode, PERCEPTUAL)
        check_choice("variant", variant, VARIANTS)
        if not c > 0:
            raise UserError(f"c={c}: must be a tiny positive constant (eq. 9)")
        self.mu, self.beta, self.c, self.mode = mu, beta, c, mode
        self.static_weight, self.variant = static_weight, variant
        self.vgg = vgg_extractor(weights)
        uses_resnet = mode == "static" or (mode == "dp" and math.isfinite(mu))
        self.resnet = ResNetStages(weights, beta) if uses_resnet else None
        self.train(False)

    def train(self, mode: bool = True) -> DualPerceptualLoss:
        """The extractors ignore the outer mode: VGG always evaluates; the ResNet evaluates too, except in
        the published-code variant, which keeps it in train mode."""
        super().train(mode)
        self.vgg.eval()
        if self.resnet is not None:
            self.resnet.train(self.variant == "published_code")
        return self

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """sr, hr: (N, 3, H, W) in [0, 1]. Returns `total` (l_DP), `vgg`, `res` and the detached `weight`
        on l_RES ((1/mu)*zeta for dp, static_weight for static); `res` and `weight` are 0 without a ResNet."""
        x = imagenet_normalize(sr)
        with torch.no_grad():
            y = imagenet_normalize(hr)
            hr_vgg = self.vgg(y)
        l_vgg = F.l1_loss(self.vgg(x), hr_vgg)  # eq. (4)
        if self.resnet is None:
            zero = l_vgg.new_zeros(())
            return {"total": l_vgg, "vgg": l_vgg, "res": zero, "weight": zero}

        published = self.variant == "published_code"
        if published:
            x, y = sr, hr
        with torch.no_grad():
            hr_res = self.resnet(y)
        losses = [F.l1_loss(a, b) for a, b in zip(self.resnet(x), hr_res)]  # eq. (5), per stage
        l_res = sum(losses[1:], losses[0]) if published else losses[-1]

        if self.mode == "static":
            weight = l_vgg.new_tensor(self.static_weight)
        else:
            g_vgg, g_res = mean_over_ranks(torch.stack([l_vgg, l_res]).detach())  # the global batch's losses
            c = 0.0 if published else self.c  # the released code has no c; eq. (9), then eq. (8)'s 1/mu
            weight = (g_vgg + c) / (g_res + c) / self.mu
        return {"total": l_vgg + weight * l_res, "vgg": l_vgg, "res": l_res, "weight": weight}
