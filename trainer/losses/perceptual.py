"""Frozen feature extractors for the VGG loss, eq. (4), and the ResNet loss, eq. (5).

- VGG: VGG19 `features[:35]`, i.e. conv5_4 *before* its ReLU (ESRGAN's choice, section 3.2.1). Only the
  convolutional trunk is built, never the classifier.
- ResNet: ResNet-50 cut after the last bottleneck of stage m, whose output is taken *after* its ReLU.
  beta_{m,n} names that bottleneck: beta1_3, beta2_4, beta3_6, beta4_3 = layer1.2, layer2.3, layer3.5,
  layer4.2. Since each beta is the last block of its stage, the extractor is the stem plus stages 1..m and
  returns every stage's output (the published-code variant sums them; the paper uses the last).

Both take ImageNet-normalised input (see `imagenet_normalize`) and are frozen: no parameter requires grad.
`resnet_block` and `vgg_layer` cut the same networks at any bottleneck beta_{m,n} or conv Phi_{i,j} (the
feature maps of the paper's Fig. 4).
"""

from __future__ import annotations

import re
from typing import TypeVar

import torch
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs

from trainer import weights as weights_mod
from trainer.config import BETAS, check_choice
from trainer.errors import UserError

VGG_CONV5_4 = 35  # features[:35] ends with conv5_4, before relu5_4
BETA_STAGE = {beta: int(beta[4]) for beta in BETAS}  # "beta3_6" -> stage 3 (its 6th, last bottleneck)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> ImageNet statistics, as both extractors were trained on."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def freeze(net: ModuleT) -> ModuleT:
    net.requires_grad_(False)
    return net.eval()


def vgg_extractor(weights: str) -> nn.Module:
    """Eq. (4)'s Phi_{5,4}: frozen VGG19 trunk up to conv5_4 (pre-activation)."""
    return freeze(weights_mod.vgg19_features(weights, upto=VGG_CONV5_4))


class ResNetStages(nn.Module):
    """Eq. (5)'s beta_{m,n}: the ResNet-50 stem and stages 1..m; returns each stage's output (after ReLU)."""

    def __init__(self, weights: str, beta: str):
        super().__init__()
        check_choice("beta", beta, BETAS)
        r = weights_mod.resnet50(weights)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.stages = nn.ModuleList([r.layer1, r.layer2, r.layer3, r.layer4][: BETA_STAGE[beta]])
        freeze(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


RESNET50_BLOCKS = (3, 4, 6, 3)  # bottlenecks per stage


def resnet_block(weights: str, beta: str) -> nn.Module:
    """ResNet-50 up to bottleneck beta_{m,n} (stage m, its n-th block, 1-based), output after its ReLU."""
    match = re.fullmatch(r"beta(\d)_(\d+)", beta)
    if not match or not 1 <= int(match[1]) <= 4 or not 1 <= int(match[2]) <= RESNET50_BLOCKS[int(match[1]) - 1]:
        raise UserError(
            f"block={beta!r}: name a ResNet-50 bottleneck beta<m>_<n>, stage m 1-4 with "
            f"{', '.join(map(str, RESNET50_BLOCKS))} blocks (e.g. beta1_2, beta3_6)"
        )
    m, n = int(match[1]), int(match[2])
    r = weights_mod.resnet50(weights)
    stages = [r.layer1, r.layer2, r.layer3, r.layer4]
    return freeze(nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, *stages[: m - 1], stages[m - 1][:n]))


def vgg_layer(weights: str, phi: str) -> nn.Sequential:
    """VGG19 up to conv Phi_{i,j} (block i, its j-th conv), before its ReLU as eq. (4)'s Phi_{5,4}."""
    names, index, block, j = {}, 0, 1, 0  # features' layers: a conv and its ReLU per number in cfg "E", a pool per "M"
    for layer in vgg_cfgs["E"]:
        if layer == "M":
            block, j, index = block + 1, 0, index + 1
        else:
            j += 1
            names[f"phi{block}_{j}"] = index
            index += 2
    if phi not in names:
        raise UserError(f"vgg={phi!r}: name a VGG19 conv phi<i>_<j>, e.g. phi3_3 or phi5_4 (eq. 4)")
    return freeze(weights_mod.vgg19_features(weights, upto=names[phi] + 1))
