"""The pretrained feature extractors (VGG19, eq. 4; ResNet-50, eq. 5) and LPIPS trunks (AlexNet or VGG16),
built by torchvision and filled offline from the files `trainer.weight_files` knows (the hub cache, a folder
or one file); "random" builds them with torchvision's random init (an explicit ablation).

`weights` settings: "imagenet" (the cache), "random", or a PATH: a folder holding files under their
torchvision names (e.g. a copy of a hub cache), or a single checkpoint file (a plain state dict of that
network, torchvision key names).

Like torchvision, loading does not re-hash the file (VGG19 is 548 MB; extractors build in well under a
second from a memory map); a file that cannot be read, or whose tensors do not fit the network, is refused.
`sweeper weights status` and `import` check the hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

from trainer.errors import UserError
from trainer.weight_files import FILES, LPIPS_TRUNKS, MissingWeightsError, cache_dir, describe

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _checkpoint_path(key: str, weights: str) -> Path:
    file = FILES[key]
    source = describe(weights)
    path = cache_dir() / file.name if source == "imagenet" else Path(source.removeprefix("file:"))
    if path.is_dir():
        path = path / file.name
    if not path.is_file():
        raise MissingWeightsError(file, path)
    return path


def _load_into(module: ModuleT, key: str, weights: str, prefix: str = "") -> ModuleT:
    """Fill a (meta-device) `module` with the tensors under `prefix` of the checkpoint for `weights`."""
    path = _checkpoint_path(key, weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated file, not a zip, a pickle with code in it...
        raise UserError(
            f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0]}); "
            f"re-download {FILES[key].url} and run `sweeper weights import FILE`"
        ) from None
    wanted = module.state_dict().keys()
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict of {FILES[key].network} weights, found {type(state).__name__}")
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :] in wanted}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"{path}: does not hold {FILES[key].network} weights ({detail})") from None
    return module.eval().requires_grad_(False)


def vgg19_features(weights: str, upto: int) -> nn.Sequential:
    """VGG19's `features[:upto]` (no classifier is built); e.g. upto=35 ends at conv5_4 before ReLU (eq. 4)."""
    if not 0 < upto <= 37:
        raise ValueError(f"vgg19_features: upto={upto} must be in 1..37")
    if weights == "random":
        features = tv_vgg.make_layers(tv_vgg.cfgs["E"])[:upto]
        for m in features.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)  # type: ignore[arg-type]  # make_layers builds its convs with bias
        return features.eval().requires_grad_(False)
    with torch.device("meta"):
        features = tv_vgg.make_layers(tv_vgg.cfgs["E"])[:upto]
    return _load_into(features, "vgg19", weights, prefix="features.")


def resnet50(weights: str) -> torchvision.models.ResNet:
    """torchvision's ResNet-50 (IMAGENET1K_V1 weights for "imagenet"), in eval mode, frozen."""
    if weights == "random":
        return torchvision.models.resnet50().eval().requires_grad_(False)
    with torch.device("meta"):
        model = torchvision.models.resnet50()
    return _load_into(model, "resnet50", weights)


def _lpips_features(key: str) -> nn.Sequential:
    """The untrained `features` of an LPIPS trunk: AlexNet's, or VGG16's (torchvision's "D" layer list)."""
    return torchvision.models.alexnet().features if key == "alexnet" else tv_vgg.make_layers(tv_vgg.cfgs["D"])


def lpips_trunk(net: str, weights: str) -> nn.Sequential:
    """The `features` of LPIPS's trunk for `metrics.lpips_net` (alex: AlexNet, vgg: VGG16)."""
    key = LPIPS_TRUNKS[net]
    if weights == "random":
        return _lpips_features(key).eval().requires_grad_(False)
    with torch.device("meta"):
        features = _lpips_features(key)
    return _load_into(features, key, weights, prefix="features.")
