"""Data: the pixels of the benchmark sets (validation pairs) and seeded, resumable training batches. Where the
sets are, which ones a run uses, their files and the checks made before a run: `trainer.image_sets`.

LR images are made with MATLAB's bicubic (`trainer.imresize.degrade`), as in section 4.1: for training sets
once, per sub-image, in the prepared-data cache (`trainer.prepared`), which every trial memory-maps; for
validation sets from the whole HR image cropped to a multiple of 12 (`data.val_hr=mod12`, as the GTmod12
files) or of the scale (`mod4`), unless the set supplies its LR images (`LRbicx<scale>/`), which are then
scored as published.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.config import Config
from trainer.errors import UserError
from trainer.image_sets import (
    check_val_size,
    image_size,
    resolve_root,
    set_files,
    subimage_settings,
    supplied_lr_files,
    too_small,
    val_multiple,
    windows,
)
from trainer.images import read_image, to_rgb
from trainer.imresize import degrade, modcrop
from trainer.prepared import PreparedSet, current_manifest, open_or_build

_SET_CACHE: dict[Path, list[tuple[str, torch.Tensor]]] = {}


def load_set(root: str | Path | None, name: str) -> list[tuple[str, torch.Tensor]]:
    """(file name, uint8 CHW HR image) for each image of set `name`, sorted by name; cached in memory.

    The tensors are shared by every caller: do not modify them in place.
    """
    folder = (resolve_root(root) / name).resolve()
    if folder not in _SET_CACHE:
        _SET_CACHE[folder] = [(f.name, read_image(f)) for f in set_files(folder.parent, name)]
    return _SET_CACHE[folder]


def load_supplied_lr(root: str | Path | None, name: str, scale: int) -> dict[str, torch.Tensor] | None:
    """The LR images a set supplies for `scale` (`trainer.image_sets.supplied_lr_files`), by file name; None
    where it has none."""
    files = supplied_lr_files(root, name, scale)
    return None if files is None else {n: read_image(f) for n, f in files.items()}


@dataclass
class ValImage:
    """A validation pair: `hr` as read (1 channel for a grayscale file, so Y metrics use it directly),
    cropped to `data.val_hr`'s multiple (and centre-cropped if asked); `lr` = the set's supplied LR image
    (`supplied`) or MATLAB bicubic of `hr`, always 3 channels."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor
    supplied: bool = False


def _center_box(h: int, w: int, size: int, align: int) -> tuple[slice, slice]:
    """The central window of at most size x size whose corner lies on a multiple of `align` (so the LR
    window is the HR one divided by the scale)."""
    hh, ww = min(size, h), min(size, w)
    top, left = (h - hh) // 2 // align * align, (w - ww) // 2 // align * align
    return slice(top, top + hh), slice(left, left + ww)


def val_pairs(
    root: str | Path | None, name: str, scale: int, val_hr: str, crop: int = 0, max_images: int = 0
) -> list[ValImage]:
    """The (HR, LR) pairs of set `name`: HR cropped to a multiple of 12 (`val_hr="mod12"`) or of `scale`
    ("mod4"), centre-cropped to `crop` if given; LR the set's supplied images if it has them, else MATLAB's
    bicubic of the HR. Sizes checked by `trainer.image_sets.check_val_size`."""
    multiple = val_multiple(val_hr, scale)
    supplied = load_supplied_lr(root, name, scale)
    pairs = []
    for file_name, img in load_set(root, name)[: max_images or None]:
        lr = supplied[file_name] if supplied is not None else None
        check_val_size(
            name, file_name, tuple(img.shape[-2:]), None if lr is None else tuple(lr.shape[-2:]), scale, val_hr
        )
        hr = modcrop(img, multiple)
        if crop:
            rows, cols = _center_box(hr.shape[-2], hr.shape[-1], crop, scale)
            hr = modcrop(hr[..., rows, cols], multiple)
            if lr is not None:
                top, left = rows.start // scale, cols.start // scale
                lr = lr[..., top : top + hr.shape[-2] // scale, left : left + hr.shape[-1] // scale]
        lr = to_rgb(lr if lr is not None else degrade(hr, scale))
        pairs.append(ValImage(file_name, hr.contiguous(), lr.contiguous(), supplied is not None))
    return pairs


def lr_source(pairs: list[ValImage]) -> str:
    """How a set's LR images were obtained, for recording beside its scores: supplied | matlab_bicubic."""
    return "supplied" if pairs and pairs[0].supplied else "matlab_bicubic"


def load_val_sets(cfg: Config) -> dict[str, list[ValImage]]:
    """The validation sets of `cfg.data.val_sets` (`val_pairs`), honouring val_max_images, val_crop, val_hr and upscale."""
    d = cfg.data
    return {
        name: val_pairs(d.root or None, name, cfg.upscale, d.val_hr, d.val_crop, d.val_max_images)
        for name in d.val_sets
    }


def data_cache(cfg: Config, cache_dir: Path) -> Path:
    """Where prepared training sets live: `data.cache` if set (e.g. shared by workspaces), else `cache_dir/data`."""
    return Path(cfg.data.cache).expanduser().resolve() if cfg.data.cache else Path(cache_dir) / "data"


def prepare_set(cfg: Config, name: str, cache_dir: Path, workers: int | None = None, show: bool = False) -> PreparedSet:
    """Training set `name` of the data root, prepared (once) under `cfg`'s sub-image settings."""
    root = resolve_root(cfg.data.root or None)
    return open_or_build(
        set_files(root, name), root / name, subimage_settings(cfg), data_cache(cfg, cache_dir), workers, show
    )


def _present_files(cfg: Config, name: str) -> tuple[Path, list[Path]] | None:
    """(folder, images) of training set `name` under the data root, None when the root or the set is not
    there (for planning, which must work before the data is downloaded)."""
    try:
        root = resolve_root(cfg.data.root or None)
        return root / name, set_files(root, name)
    except UserError:
        return None


def prepared_data_id(cfg: Config, cache_dir: Path) -> str | None:
    """`TrainBatches.data_id` of `cfg`'s training sets if every one is there, prepared and current, else None
    (prepares nothing: `sweeper plan` uses it to tell a cached pre-training from one still to pay)."""
    hashes = []
    for name in cfg.data.train_sets:
        present = _present_files(cfg, name)
        if present is None:
            return None
        manifest = current_manifest(present[1], present[0], subimage_settings(cfg), data_cache(cfg, cache_dir))
        if manifest is None:
            return None
        hashes.append(manifest["content_hash"])
    return "+".join(hashes)


KNOWN_SUBIMAGES = {"DIV2K": 32592}  # DIV2K_train_HR (800 images) cut at 480 every 240 (+ the far edge): section 4.1


def subimage_count(cfg: Config, name: str, cache_dir: Path) -> tuple[int | None, str]:
    """How many sub-images training set `name` gives under `cfg`'s settings, and where that number comes from:
    its prepared manifest, else its images' headers, else the known count of a published set at the paper's
    settings (before the data is downloaded), else None."""
    settings = subimage_settings(cfg)
    present = _present_files(cfg, name)
    if present is not None:
        folder, files = present
        manifest = current_manifest(files, folder, settings, data_cache(cfg, cache_dir))
        if manifest is not None:
            return int(manifest["subimages"]), "prepared cache"
        return sum(len(windows(*image_size(f), settings)) for f in files), f"the headers of its {len(files)} images"
    if name in KNOWN_SUBIMAGES and (settings.size, settings.step) == (480, 240):
        return KNOWN_SUBIMAGES[name], "known count (not in the data root yet)"
    return None, "not in the data root yet"


def _rng(*key: int) -> torch.Generator:
    """An independent generator for one (seed, stream, index) key."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


class TrainBatches:
    """Infinite seeded iterator of (lr, hr) float32 [0, 1] (N, 3, h, w) training batches.

    The sub-images of `cfg.data.train_sets` come from the prepared-data cache under `cache_dir` (built on
    first use; see `trainer.prepared`); this object holds only their index, the pixels stay memory-mapped.
    Batches walk through a fresh seeded permutation of the sub-images per epoch; each sample is a random
    aligned crop (HR `hr_patch`) with a random flip/90-degree rotation. Batch `b` depends only on
    (cfg.seed, b), so `state_dict()` is just the batch counter and resuming gives exactly the batches a
    straight run would. With `data.num_workers` > 0, worker processes make batches b, b+1, ... ahead and
    they arrive in order: the same batches. Sub-images smaller than `hr_patch` are skipped. With `shard`
    (one rank of several, `trainer.distributed.shard`) a batch is that slice of the global batch: the same
    patches in the same order, each rank cutting only its own.
    """

    def __init__(
        self,
        cfg: Config,
        cache_dir: Path,
        device: str | torch.device = "cpu",
        show: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> None:
        d, s = cfg.data, cfg.upscale
        self.scale, self.lr_patch, self.batch_size = s, d.hr_patch // s, d.batch_size
        self.shard = shard or (0, d.batch_size)  # samples [start, stop) of each batch this process trains on
        self.seed, self.device, self.num_workers = cfg.seed, torch.device(device), d.num_workers
        self.sets = [prepare_set(cfg, name, cache_dir, show=show) for name in d.train_sets]
        usable = [np.flatnonzero(p.windows[:, 3:5].min(axis=1) >= d.hr_patch) for p in self.sets]
        self.index = np.concatenate([np.stack([np.full_like(u, k), u], axis=1) for k, u in enumerate(usable)])
        self.skipped = sum(len(p) for p in self.sets) - len(self.index)
        if not len(self.index):
            raise too_small(cfg, self.skipped)
        self.data_id = "+".join(p.content_hash for p in self.sets)  # what the pixels are, for cache keys
        self.batch = 0
        self._perm: tuple[int, torch.Tensor] | None = None
        self._loader: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        """Number of sub-images (one epoch)."""
        return len(self.index)

    def state_dict(self) -> dict[str, int]:
        return {"batch": self.batch, "seed": self.seed, "subimages": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["subimages"]) != (self.seed, len(self)):
            raise UserError(
                f"cannot resume the data stream: it was made with seed={state['seed']} over {state['subimages']} "
                f"sub-images, now seed={self.seed} over {len(self)}; the data or config changed"
            )
        self.batch, self._loader = state["batch"], None

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sub-image `i` as (LR, HR) uint8 HWC arrays (memory-mapped views)."""
        k, w = self.index[i]
        return self.sets[k].pair(int(w))

    def _index(self, position: int) -> int:
        """The sub-image at `position` of the endless stream of per-epoch permutations."""
        epoch, i = divmod(position, len(self))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self), generator=_rng(self.seed, 0, epoch)))
        return int(self._perm[1][i])

    def batch_at(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `b` (this shard of it) as uint8 (N, 3, h, w) LR and HR tensors; a function of (seed, b) only.
        Every sample's random draws are made, so a shard's crops are those of the whole batch."""
        g = _rng(self.seed, 1, b)
        p, s = self.lr_patch, self.scale
        lrs, hrs = [], []
        for k in range(self.batch_size):
            lr, hr = self.pair(self._index(b * self.batch_size + k))
            top = int(torch.randint(lr.shape[0] - p + 1, (), generator=g))
            left = int(torch.randint(lr.shape[1] - p + 1, (), generator=g))
            crops = (lr[top : top + p, left : left + p], hr[top * s : (top + p) * s, left * s : (left + p) * s])
            hflip, vflip, transpose = (bool(f) for f in torch.rand(3, generator=g) < 0.5)
            if not self.shard[0] <= k < self.shard[1]:
                continue
            lr_patch, hr_patch = (
                _augment(torch.from_numpy(np.array(c)).permute(2, 0, 1), hflip, vflip, transpose) for c in crops
            )
            lrs.append(lr_patch)
            hrs.append(hr_patch)
        return torch.stack(lrs), torch.stack(hrs)

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.num_workers:
            lr, hr = self.batch_at(self.batch)
        else:
            if self._loader is None:
                self._loader = iter(self._worker_loader())
            lr, hr = next(self._loader)
        self.batch += 1
        lr, hr = (t.to(self.device, non_blocking=True).float().div_(255) for t in (lr, hr))
        return lr, hr

    def _worker_loader(self) -> DataLoader:
        """Batches self.batch, self.batch + 1, ... made by `num_workers` processes, delivered in order."""
        return DataLoader(
            _ByIndex(self.batch_at),
            batch_size=None,
            sampler=itertools.count(self.batch),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4,
        )


class _ByIndex(Dataset):
    """A map-style dataset whose item b is `fn(b)`."""

    def __init__(self, fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.fn = fn

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fn(b)


def _augment(img: torch.Tensor, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations of a (C, H, W) image."""
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    return img.transpose(-2, -1) if transpose else img
