"""Data: the data root, benchmark sets by name, validation pairs, and seeded, resumable training batches.

A data root is a folder of sets, each a folder of PNG/JPEG/BMP images (`Set5/`, `T91/`, `DIV2K/`...).
LR images are always made here with MATLAB's bicubic (`trainer.imresize.degrade`), as in section 4.1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.config import Config
from trainer.errors import UserError
from trainer.images import IMAGE_SUFFIXES, read_image, to_rgb
from trainer.imresize import degrade, modcrop

EMBEDDED = Path(__file__).resolve().parent / "embedded"

_SET_CACHE: dict[Path, list[tuple[str, torch.Tensor]]] = {}


def resolve_root(root: str | Path | None) -> Path:
    """`root` if given, else $SWEEPER_DATA, else the embedded demo dataset (trainer/embedded/)."""
    chosen = root or os.environ.get("SWEEPER_DATA") or EMBEDDED
    path = Path(chosen).expanduser()
    if not path.is_dir():
        via = "data.root" if root else "$SWEEPER_DATA"
        raise UserError(f"{via}={str(chosen)!r} is not a folder; give a folder holding image sets such as Set5/")
    return path


def set_names(root: Path) -> list[str]:
    """Sub-folders of `root` that hold at least one image."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _image_files(p))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _set_files(root: Path, name: str) -> list[Path]:
    folder = root / name
    if not folder.is_dir():
        found = ", ".join(set_names(root)) or "none"
        raise UserError(f"unknown image set {name!r} under {root}; sets found there: {found}")
    files = _image_files(folder)
    if not files:
        raise UserError(f"image set {name!r} ({folder}) holds no PNG, JPEG or BMP images")
    return files


def load_set(root: str | Path | None, name: str) -> list[tuple[str, torch.Tensor]]:
    """(file name, uint8 CHW HR image) for each image of set `name`, sorted by name; cached in memory.

    The tensors are shared by every caller: do not modify them in place.
    """
    root = resolve_root(root)
    folder = (root / name).resolve()
    if folder not in _SET_CACHE:
        _SET_CACHE[folder] = [(f.name, read_image(f)) for f in _set_files(root, name)]
    return _SET_CACHE[folder]


@dataclass
class ValImage:
    """A validation pair: `hr` as read (1 channel for a grayscale file, so Y metrics use it directly),
    modcropped (and centre-cropped if asked); `lr` = MATLAB bicubic of `hr`, always 3 channels."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size window (or the whole extent where the image is smaller)."""
    h, w = img.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[..., top : top + size, left : left + size]


def load_val_sets(cfg: Config) -> dict[str, list[ValImage]]:
    """The validation sets of `cfg.data.val_sets`, honouring val_max_images, val_crop and upscale."""
    s, d = cfg.upscale, cfg.data
    sets = {}
    for name in d.val_sets:
        images = load_set(d.root or None, name)[: d.val_max_images or None]
        pairs = []
        for file_name, img in images:
            hr = center_crop(img, d.val_crop) if d.val_crop else img
            hr = modcrop(hr, s).contiguous()
            pairs.append(ValImage(file_name, hr, to_rgb(degrade(hr, s)).contiguous()))
        sets[name] = pairs
    return sets


def subimages(img: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Non-overlapping size x size windows, left to right, top to bottom (section 4.1); the strip left
    over at the right/bottom is dropped; along a side shorter than `size` the whole side is used."""
    h, w = img.shape[-2:]
    tops = range(0, h - size + 1, size) if h >= size else [0]
    lefts = range(0, w - size + 1, size) if w >= size else [0]
    return [img[..., t : t + size, l : l + size].clone() for t in tops for l in lefts]


def _rng(*key: int) -> torch.Generator:
    """An independent generator for one (seed, stream, index) key."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


class TrainBatches:
    """Infinite seeded iterator of (lr, hr) float32 [0, 1] (N, 3, h, w) training batches.

    Sub-images of `cfg.data.train_sets` are cut once, their LR made once (MATLAB bicubic) and kept in
    memory (uint8). Batches walk through a fresh seeded permutation of the sub-images per epoch; each
    sample is a random aligned crop (HR `hr_patch`) with a random flip/90-degree rotation. Batch `b`
    depends only on (cfg.seed, b), so `state_dict()` is just the batch counter and resuming gives exactly
    the batches a straight run would. Sub-images smaller than `hr_patch` are skipped.
    `cfg.data.num_workers` is not used: one batch costs well under a millisecond per sample on a CPU.
    """

    def __init__(self, cfg: Config, device: str | torch.device = "cpu") -> None:
        d, s = cfg.data, cfg.upscale
        self.scale, self.lr_patch, self.batch_size = s, d.hr_patch // s, d.batch_size
        self.seed, self.device = cfg.seed, torch.device(device)
        self.hr: list[torch.Tensor] = []
        self.lr: list[torch.Tensor] = []
        skipped = 0
        root = resolve_root(d.root or None)
        for name in d.train_sets:
            for path in _set_files(root, name):
                for sub in subimages(to_rgb(read_image(path)), d.subimage_size):
                    sub = modcrop(sub, s).contiguous()
                    if min(sub.shape[-2:]) < d.hr_patch:
                        skipped += 1
                        continue
                    self.hr.append(sub)
                    self.lr.append(degrade(sub, s))
        if not self.hr:
            raise UserError(
                f"data.train_sets={d.train_sets}: no sub-image is at least data.hr_patch={d.hr_patch} pixels "
                f"on each side ({skipped} smaller ones skipped); use larger images or a smaller hr_patch"
            )
        self.skipped = skipped
        self.batch = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        """Number of sub-images (one epoch)."""
        return len(self.hr)

    def state_dict(self) -> dict[str, int]:
        return {"batch": self.batch, "seed": self.seed, "subimages": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["subimages"]) != (self.seed, len(self)):
            raise UserError(
                f"cannot resume the data stream: it was made with seed={state['seed']} over {state['subimages']} "
                f"sub-images, now seed={self.seed} over {len(self)}; the data or config changed"
            )
        self.batch = state["batch"]

    def _index(self, position: int) -> int:
        """The sub-image at `position` of the endless stream of per-epoch permutations."""
        epoch, i = divmod(position, len(self))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self), generator=_rng(self.seed, 0, epoch)))
        return int(self._perm[1][i])

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = _rng(self.seed, 1, self.batch)
        p, s = self.lr_patch, self.scale
        lrs, hrs = [], []
        for k in range(self.batch_size):
            i = self._index(self.batch * self.batch_size + k)
            lr, hr = self.lr[i], self.hr[i]
            top = int(torch.randint(lr.shape[-2] - p + 1, (), generator=g))
            left = int(torch.randint(lr.shape[-1] - p + 1, (), generator=g))
            lr = lr[:, top : top + p, left : left + p]
            hr = hr[:, top * s : (top + p) * s, left * s : (left + p) * s]
            hflip, vflip, transpose = torch.rand(3, generator=g) < 0.5
            lr, hr = (_augment(t, bool(hflip), bool(vflip), bool(transpose)) for t in (lr, hr))
            lrs.append(lr)
            hrs.append(hr)
        self.batch += 1
        return tuple(torch.stack(t).to(self.device, non_blocking=True).float().div_(255) for t in (lrs, hrs))


def _augment(img: torch.Tensor, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations of a (C, H, W) image."""
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    return img.transpose(-2, -1) if transpose else img
