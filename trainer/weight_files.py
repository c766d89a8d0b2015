"""The pretrained weights the project knows (VGG19, eq. 4; ResNet-50, eq. 5; AlexNet and VGG16 for LPIPS),
where torchvision's hub cache keeps them, which are missing, and `sweeper weights status|import`.

Imports no torch: the sweeper checks the weights policy before a study starts without paying for torch
(seconds), which only the training processes load. So the file URLs are torchvision's written out, and
`cache_dir` follows `torch.hub.get_dir()`'s rule ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else
~/.cache/torch; then hub/checkpoints); tests/test_weights.py checks both against torchvision and torch.

Nothing is ever downloaded. A missing file is a `MissingWeightsError` naming the file, its URL and
`sweeper weights import FILE`, which copies a downloaded file into the cache after checking that its
sha256 starts with the hash prefix in torchvision's file name.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError
from trainer.files import atomic_write, sha256_file


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
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "VGG perceptual loss (eq. 4)",
        "or set weights=random for an ablation",
    ),
    "resnet50": WeightsFile(
        "ResNet-50",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "ResNet loss (eq. 5)",
        "or set weights=random for an ablation",
    ),
    "alexnet": WeightsFile(
        "AlexNet",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "LPIPS metric",
        "until then LPIPS is reported as unavailable",
    ),
    "vgg16": WeightsFile(
        "VGG16",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
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
    home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


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
