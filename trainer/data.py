"""Data: the data root, benchmark sets by name, validation pairs, and seeded, resumable training batches.

A data root is a folder of sets, each a folder of PNG/JPEG/BMP images (`Set5/`, `T91/`, `DIV2K/`...), or
in the published layout of the benchmark sets (BasicSR's downloads): `Set5/GTmod12/` holding the HR images
and `Set5/LRbicx4/` (x2, x3 likewise) their LR images under the same file names. LR images are made with
MATLAB's bicubic (`trainer.imresize.degrade`), as in section 4.1: for training sets once, per sub-image, in
the prepared-data cache (`trainer.prepared`), which every trial memory-maps; for validation sets from the
whole HR image cropped to a multiple of 12 (`data.val_hr=mod12`, as the GTmod12 files) or of the scale
(`mod4`), unless the set supplies its LR images (`LRbicx<scale>/`), which are then scored as published.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.config import BENCHMARK_SETS, ROOT_TRAIN_SETS, Config, build_config
from trainer.errors import UserError
from trainer.images import IMAGE_SUFFIXES, read_image, to_rgb
from trainer.imresize import degrade, modcrop
from trainer.prepared import PreparedSet, Settings, current_manifest, image_size, open_or_build, windows

EMBEDDED = Path(__file__).resolve().parent / "embedded"

PUBLISHED_HR = "GTmod12"  # the HR folder of a benchmark set in the published layout


def supplied_lr_folder(set_folder: Path, scale: int) -> Path:
    """Where a set in the published layout keeps its LR images for `scale`: `<set>/LRbicx<scale>/`."""
    return set_folder / f"LRbicx{scale}"


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
    """Sub-folders of `root` that hold at least one image (in `GTmod12/` for the published layout)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _image_files(_hr_folder(p)))


def _hr_folder(folder: Path) -> Path:
    """A set's HR images: `GTmod12/` in the published layout, else the set folder itself."""
    return folder / PUBLISHED_HR if (folder / PUBLISHED_HR).is_dir() else folder


def settle_sets(config: dict[str, Any], absent_ok: bool = False) -> dict[str, Any]:
    """`config` (dotted keys) with the sets of a data root settled: on a root other than the embedded demo,
    `data.train_sets` defaults to the preset's sets found there (`ROOT_TRAIN_SETS`: T91 and BSD200 for smoke and
    proxy, DIV2K for paper) and `data.val_sets` to every benchmark set found (`BENCHMARK_SETS`); a key the
    config names is kept as it is. None of the preset's training sets there: a UserError naming what was found,
    or, for a plan made before the data is downloaded (`absent_ok`), all of them, as named."""
    cfg = build_config(config)
    root = resolve_root(cfg.data.root or None)
    if root == EMBEDDED:
        return config
    found = set_names(root)
    settled = dict(config)
    wanted = {
        "data.train_sets": (ROOT_TRAIN_SETS[cfg.preset], f"training sets preset={cfg.preset} trains on ({{}})"),
        "data.val_sets": (BENCHMARK_SETS, "benchmark sets ({}) to validate on"),
    }
    for key, (names, what) in wanted.items():
        if key in config:
            continue
        present = [s for s in names if s in found] or (list(names) if absent_ok else [])
        if not present:
            raise UserError(
                f"{root} has none of the {what.format(', '.join(names))}; "
                f"sets found there: {', '.join(found) or 'none'}; name yours with {key}=[...]"
            )
        settled[key] = present
    return settled


def describe_sets(cfg: Config) -> str:
    """What a run trains and validates on, and with which crops, in one line: `train: T91, BSD200 (...); validate: ...`."""
    d = cfg.data
    train = f"train: {', '.join(d.train_sets)} ({d.subimage_size}-px sub-images every {d.subimage_step} px, {d.hr_patch}-px HR patches)"
    which = f"first {d.val_max_images} images of each" if d.val_max_images else "every image"
    crops = f"{d.val_crop}-px centre crops" if d.val_crop else "whole images"
    return f"{train}; validate: {', '.join(d.val_sets)} ({which}, {crops}) from {resolve_root(d.root or None)}"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _set_files(root: Path, name: str) -> list[Path]:
    folder = root / name
    if not folder.is_dir():
        found = ", ".join(set_names(root)) or "none"
        raise UserError(f"unknown image set {name!r} under {root}; sets found there: {found}")
    files = _image_files(_hr_folder(folder))
    if not files:
        raise UserError(f"image set {name!r} ({_hr_folder(folder)}) holds no PNG, JPEG or BMP images")
    return files


def load_set(root: str | Path | None, name: str) -> list[tuple[str, torch.Tensor]]:
    """(file name, uint8 CHW HR image) for each image of set `name`, sorted by name; cached in memory.

    The tensors are shared by every caller: do not modify them in place.
    """
    folder = (resolve_root(root) / name).resolve()
    if folder not in _SET_CACHE:
        _SET_CACHE[folder] = [(f.name, read_image(f)) for f in _set_files(folder.parent, name)]
    return _SET_CACHE[folder]


def load_supplied_lr(root: str | Path | None, name: str, scale: int) -> dict[str, torch.Tensor] | None:
    """The LR images a set supplies for `scale` (`<set>/LRbicx<scale>/`), by file name; None where it has
    none. Each HR image must have one under its own file name (one-line error naming the missing ones)."""
    folder = (resolve_root(root) / name).resolve()
    lr_folder = supplied_lr_folder(folder, scale)
    if not lr_folder.is_dir():
        return None
    files = {f.name: f for f in _image_files(lr_folder)}
    hr_names = [f.name for f in _set_files(folder.parent, name)]
    if missing := [n for n in hr_names if n not in files]:
        raise UserError(
            f"{lr_folder}: no LR image for {len(missing)} HR image(s) of {name} ({', '.join(missing[:3])}); "
            f"supply one per HR file name or remove {lr_folder.name}/ to degrade the HR images instead"
        )
    return {n: read_image(files[n]) for n in hr_names}


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
    ("mod4"), centre-cropped to `crop` if given; LR the set's supplied images if it has them (checked to be
    the HR size / scale), else MATLAB's bicubic of the HR."""
    multiple = 12 if val_hr == "mod12" else scale
    supplied = load_supplied_lr(root, name, scale)
    pairs = []
    for file_name, img in load_set(root, name)[: max_images or None]:
        hr, lr = modcrop(img, multiple), supplied[file_name] if supplied is not None else None
        if lr is not None and tuple(lr.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
            raise UserError(
                f"{name}/{supplied_lr_folder(Path(), scale)}/{file_name}: LR image is {tuple(lr.shape[-2:])}, but its HR "
                f"cropped to a multiple of {multiple} (data.val_hr={val_hr}) is {tuple(hr.shape[-2:])}: expected "
                f"{(hr.shape[-2] // scale, hr.shape[-1] // scale)}; the LR files belong to other HR images or another scale"
            )
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


def _settings(cfg: Config) -> Settings:
    return Settings(cfg.data.subimage_size, cfg.data.subimage_step, cfg.upscale)


def prepare_set(cfg: Config, name: str, cache_dir: Path, workers: int | None = None, show: bool = False) -> PreparedSet:
    """Training set `name` of the data root, prepared (once) under `cfg`'s sub-image settings."""
    root = resolve_root(cfg.data.root or None)
    return open_or_build(_set_files(root, name), root / name, _settings(cfg), data_cache(cfg, cache_dir), workers, show)


def _present_files(cfg: Config, name: str) -> tuple[Path, list[Path]] | None:
    """(folder, images) of training set `name` under the data root, None when the root or the set is not
    there (for planning, which must work before the data is downloaded)."""
    try:
        root = resolve_root(cfg.data.root or None)
        return root / name, _set_files(root, name)
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
        manifest = current_manifest(present[1], present[0], _settings(cfg), data_cache(cfg, cache_dir))
        if manifest is None:
            return None
        hashes.append(manifest["content_hash"])
    return "+".join(hashes)


KNOWN_SUBIMAGES = {"DIV2K": 32592}  # DIV2K_train_HR (800 images) cut at 480 every 240 (+ the far edge): section 4.1


def subimage_count(cfg: Config, name: str, cache_dir: Path) -> tuple[int | None, str]:
    """How many sub-images training set `name` gives under `cfg`'s settings, and where that number comes from:
    its prepared manifest, else its images' headers, else the known count of a published set at the paper's
    settings (before the data is downloaded), else None."""
    settings = _settings(cfg)
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


def _too_small(cfg: Config, skipped: int) -> UserError:
    d = cfg.data
    return UserError(
        f"data.train_sets={d.train_sets}: no sub-image is at least data.hr_patch={d.hr_patch} pixels "
        f"on each side ({skipped} smaller ones skipped); use larger images or a smaller hr_patch"
    )


def check_train_sets(cfg: Config) -> None:
    """Fail now (UserError) if a training set is missing, empty, unreadable or has no sub-image that holds
    an `hr_patch` crop; reads image headers only, prepares nothing."""
    root, d = resolve_root(cfg.data.root or None), cfg.data
    sides = [
        min(h, w)
        for name in d.train_sets
        for f in _set_files(root, name)
        for *_, h, w in windows(*image_size(f), _settings(cfg))
    ]
    if not any(side >= d.hr_patch for side in sides):
        raise _too_small(cfg, len(sides))


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
            raise _too_small(cfg, self.skipped)
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
