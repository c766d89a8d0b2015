"""ImageNet weights for the feature extractors (VGG19, eq. 4; ResNet-50, eq. 5) and LPIPS (AlexNet or VGG16),
loaded offline from torchvision's torch hub cache: `$TORCH_HOME/hub/checkpoints/<torchvision file name>`.

Nothing is ever downloaded. A missing file is a `MissingWeightsError` naming the file, its URL and
`sweeper weights import FILE`, which copies a downloaded file into the cache after checking that its
sha256 starts with the hash prefix in torchvision's file name.

`weights` settings: "imagenet" (the cache), "random" (an explicit ablation: torchvision's random init),
or a PATH: a folder holding files under their torchvision names (e.g. a copy of a hub cache), or a single
checkpoint file (a plain state dict of that network, torchvision key names).

Like torchvision, loading does not re-hash the file (VGG19 is 548 MB; extractors build in well under a
second from a memory map); a file that cannot be read, or whose tensors do not fit the network, is refused.
`sweeper weights status` and `import` check the hash.
"""

from __future__ import annotations

import functools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

from trainer.errors import UserError
from trainer.files import atomic_write, sha256_file

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class WeightsFile:
    """One torchvision checkpoint: its hub-cache file name comes from its URL."""

    network: str
    url: str
    needed_by: str
    without_it: str  # what the user can do meanwhile

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        match = re.search(r"-([a-f0-9]+)\.", self.name)  # torch.hub's convention
        assert match is not None, self.name
        return match.group(1)


# ResNet-50 uses torchvision's IMAGENET1K_V1 (the original release, what `pretrained=True` gave when the
# paper was written); torchvision's DEFAULT is the later V2 recipe.
FILES: dict[str, WeightsFile] = {
    "vgg19": WeightsFile(
        "VGG19",
        torchvision.models.VGG19_Weights.IMAGENET1K_V1.url,
        "VGG perceptual loss (eq. 4)",
        "or set weights=random for an ablation",
    ),
    "resnet50": WeightsFile(
        "ResNet-50",
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url,
        "ResNet loss (eq. 5)",
        "or set weights=random for an ablation",
    ),
    "alexnet": WeightsFile(
        "AlexNet",
        torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url,
        "LPIPS metric",
        "until then LPIPS is reported as unavailable",
    ),
    "vgg16": WeightsFile(
        "VGG16",
        torchvision.models.VGG16_Weights.IMAGENET1K_V1.url,
        "LPIPS metric with metrics.lpips_net=vgg",
        "until then LPIPS is reported as unavailable",
    ),
}
LPIPS_TRUNKS = {"alex": "alexnet", "vgg": "vgg16"}  # metrics.lpips_net -> the FILES entry of its trunk


class MissingWeightsError(UserError):
    """Needed weights files are absent: names each file, where it was looked for, its URL, and one command
    that imports them all. `also`: further files missing from the same folder as `path`."""

    def __init__(self, file: WeightsFile, path: Path, also: list[WeightsFile] | None = None) -> None:
        files = [file, *(also or [])]
        if len(files) == 1:
            what = f"{file.network} ImageNet weights for the {file.needed_by} not found at {path}; download {file.url}"
        else:
            what = (
                f"{len(files)} ImageNet weights files not found in {path.parent}: "
                + "; ".join(f"{f.name} ({f.network}, {f.needed_by}) from {f.url}" for f in files)
                + "; download them"
            )
        super().__init__(
            f"{what} and run `sweeper weights import {' '.join(f.name for f in files)}` ({file.without_it})"
        )
        self.file, self.path = file, path


def cache_dir() -> Path:
    """torchvision's checkpoint cache; follows $TORCH_HOME at call time."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def describe(weights: str) -> str:
    """What a `weights` setting means, for recording next to results: imagenet | random | file:<abs path>."""
    if weights in ("imagenet", "random"):
        return weights
    path = Path(weights).expanduser()
    if not path.exists():
        raise UserError(f"weights={weights!r}: choose imagenet, random, or an existing checkpoint file or folder")
    return f"file:{path.resolve()}"


def missing(names: list[str] | None = None) -> list[WeightsFile]:
    """The known files (all, or those in `names`: vgg19, resnet50, alexnet) absent from the cache."""
    return [FILES[n] for n in names or FILES if not (cache_dir() / FILES[n].name).is_file()]


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


def print_status() -> None:
    """A table of the known files: needed by, where looked for, present/missing, hash ok."""
    rows = [("file", "needed by", "looked for in", "present", "hash ok")]
    for file in FILES.values():
        path = cache_dir() / file.name
        present = path.is_file()
        ok = ("yes" if sha256_file(path).startswith(file.hash_prefix) else "NO: re-import it") if present else "-"
        rows.append((file.name, file.needed_by, str(cache_dir()), "present" if present else "MISSING", ok))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if lacking := missing():
        print(f"\n{len(lacking)} missing; download them, then: sweeper weights import FILE...")
        for file in lacking:
            print(f"  {file.url}")


def import_files(paths: list[Path]) -> None:
    """Copy downloaded checkpoints into the cache under their torchvision names.

    Each file is recognised by its content (sha256 prefix), so a renamed download is fine. Every file is
    checked before any is copied: one wrong file leaves the cache untouched.
    """
    by_prefix = {f.hash_prefix: f for f in FILES.values()}
    plan: list[tuple[Path, WeightsFile]] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        digest = sha256_file(path)
        match = next((f for prefix, f in by_prefix.items() if digest.startswith(prefix)), None)
        if match is None:
            named = next((f for f in FILES.values() if f.name == path.name), None)
            hint = (
                f"its name says {named.network} but its sha256 starts with {digest[:8]}, not {named.hash_prefix}: "
                f"a corrupted or different download; re-download {named.url}"
                if named
                else f"its sha256 {digest[:8]}... matches none of {', '.join(f.name for f in FILES.values())}"
            )
            raise UserError(f"{path}: not imported, {hint}")
        plan.append((path, match))
    target_dir = cache_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    for path, file in plan:
        with open(path, "rb") as src:
            atomic_write(target_dir / file.name, functools.partial(shutil.copyfileobj, src))
        print(f"imported {path} -> {target_dir / file.name} ({file.network}, for the {file.needed_by})")
