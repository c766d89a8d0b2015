"""The image sets of a data root, without torch: where they are, which ones a run uses, their files, the
sub-image windows cut from training images, and the checks that every file a run will read is there,
decodes and is big enough. `sweeper run` makes these checks in its own process, which never imports torch;
`trainer.data` and `trainer.prepared` read the pixels through the same functions.

A data root is a folder of sets, each a folder of PNG/JPEG/BMP images (`Set5/`, `T91/`, `DIV2K/`...), or
in the published layout of the benchmark sets (BasicSR's downloads): `Set5/GTmod12/` holding the HR images
and `Set5/LRbicx4/` (x2, x3 likewise) their LR images under the same file names.

Sub-images follow BasicSR's `extract_subimages` (crop 480, step 240, thresh_size 0), which is what gives the
paper's 32,592 sub-images from DIV2K's 800 training images (section 4.1): on each axis, windows start every
`step` pixels and one more window flush with the far edge is added when a strip is left over; a side shorter
than the crop is kept whole. Windows are cut to a multiple of the scale (MATLAB `modcrop`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.config import BENCHMARK_SETS, ROOT_TRAIN_SETS, Config, build_config
from trainer.errors import UserError

EMBEDDED = Path(__file__).resolve().parent / "embedded"
PUBLISHED_HR = "GTmod12"  # the HR folder of a benchmark set in the published layout
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# Pillow modes holding 8-bit samples, and what each becomes.
_MODES = {
    "1": "L",
    "L": "L",
    "LA": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGB": "RGB",
    "RGBA": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}


def _unreadable(path: Path, e: Exception) -> UserError:
    return UserError(f"{path}: unreadable or corrupt image ({e}); expected an 8-bit PNG, JPEG or BMP")


def read_pixels(path: str | Path) -> np.ndarray:
    """Decode an 8-bit image file to a uint8 (H, W, C) array, C = 3 (colour) or 1 (grayscale); alpha dropped."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in _MODES:
                raise UserError(
                    f"{path}: unsupported pixel format {im.mode!r} (e.g. 16-bit or float); "
                    "convert it to an 8-bit RGB or grayscale PNG"
                )
            arr = np.array(im.convert(_MODES[im.mode]))  # a copy: writable, as torch.from_numpy wants
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from None


# --- Sets ---


def resolve_root(root: str | Path | None) -> Path:
    """`root` if given, else $SWEEPER_DATA, else the embedded demo dataset (trainer/embedded/)."""
    chosen = root or os.environ.get("SWEEPER_DATA") or EMBEDDED
    path = Path(chosen).expanduser()
    if not path.is_dir():
        via = "data.root" if root else "$SWEEPER_DATA"
        raise UserError(f"{via}={str(chosen)!r} is not a folder; give a folder holding image sets such as Set5/")
    return path


def image_files(folder: Path) -> list[Path]:
    """The images of a folder (by suffix, hidden files aside), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def hr_folder(folder: Path) -> Path:
    """A set's HR images: `GTmod12/` in the published layout, else the set folder itself."""
    return folder / PUBLISHED_HR if (folder / PUBLISHED_HR).is_dir() else folder


def set_names(root: Path) -> list[str]:
    """Sub-folders of `root` that hold at least one image (in `GTmod12/` for the published layout)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and image_files(hr_folder(p)))


def set_files(root: Path, name: str) -> list[Path]:
    """The HR image files of set `name` under `root`; a UserError naming the sets there if it is missing or empty."""
    folder = root / name
    if not folder.is_dir():
        found = ", ".join(set_names(root)) or "none"
        raise UserError(f"unknown image set {name!r} under {root}; sets found there: {found}")
    files = image_files(hr_folder(folder))
    if not files:
        raise UserError(f"image set {name!r} ({hr_folder(folder)}) holds no PNG, JPEG or BMP images")
    return files


def supplied_lr_folder(set_folder: Path, scale: int) -> Path:
    """Where a set in the published layout keeps its LR images for `scale`: `<set>/LRbicx<scale>/`."""
    return set_folder / f"LRbicx{scale}"


def supplied_lr_files(root: str | Path | None, name: str, scale: int) -> dict[str, Path] | None:
    """The LR image files a set supplies for `scale` (`<set>/LRbicx<scale>/`), by HR file name; None where it
    has none. Each HR image must have one under its own file name (one-line error naming the missing ones)."""
    folder = (resolve_root(root) / name).resolve()
    lr_folder = supplied_lr_folder(folder, scale)
    if not lr_folder.is_dir():
        return None
    files = {f.name: f for f in image_files(lr_folder)}
    hr_names = [f.name for f in set_files(folder.parent, name)]
    if missing := [n for n in hr_names if n not in files]:
        raise UserError(
            f"{lr_folder}: no LR image for {len(missing)} HR image(s) of {name} ({', '.join(missing[:3])}); "
            f"supply one per HR file name or remove {lr_folder.name}/ to degrade the HR images instead"
        )
    return {n: files[n] for n in hr_names}


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


# --- Validation images ---


def val_multiple(val_hr: str, scale: int) -> int:
    """What a validation HR image is cropped to a multiple of: 12 (`data.val_hr=mod12`, as the GTmod12 files)
    or the scale (`mod4`)."""
    return 12 if val_hr == "mod12" else scale


def check_val_size(
    name: str, file_name: str, hr: tuple[int, ...], lr: tuple[int, ...] | None, scale: int, val_hr: str
) -> None:
    """The sizes of validation pair `file_name` of set `name`, (height, width) of the HR image as read and of
    its supplied LR image (None when it is degraded from the HR): the HR must keep a pixel once cropped to its
    multiple, and the LR must be that crop divided by the scale."""
    multiple = val_multiple(val_hr, scale)
    cropped = (hr[0] // multiple * multiple, hr[1] // multiple * multiple)
    if not all(cropped):
        raise UserError(
            f"{name}/{file_name}: HR image is {hr}, smaller than {multiple} pixels on a side (data.val_hr={val_hr} crops it to a "
            f"multiple of {multiple}): nothing is left to validate on; remove it or use a larger image"
        )
    if lr is not None and lr != (cropped[0] // scale, cropped[1] // scale):
        raise UserError(
            f"{name}/{supplied_lr_folder(Path(), scale)}/{file_name}: LR image is {lr}, but its HR cropped to a multiple of {multiple} (data.val_hr={val_hr}) is "
            f"{cropped}: expected {(cropped[0] // scale, cropped[1] // scale)}; the LR files belong to other HR images "
            "or another scale"
        )


def check_val_sets(cfg: Config) -> None:
    """Decode every image `trainer.data.load_val_sets` will read (the first `data.val_max_images` of each
    validation set, and their supplied LR images) and check their sizes (`check_val_size`); a UserError
    names the first bad file."""
    d = cfg.data
    root = resolve_root(d.root or None)
    for name in d.val_sets:
        supplied = supplied_lr_files(root, name, cfg.upscale)
        for f in set_files(root, name)[: d.val_max_images or None]:
            lr = None if supplied is None else read_pixels(supplied[f.name]).shape[:2]
            check_val_size(name, f.name, read_pixels(f).shape[:2], lr, cfg.upscale, d.val_hr)


# --- Training sub-images ---


@dataclass(frozen=True)
class Settings:
    """What the prepared pixels depend on besides the source images."""

    size: int  # data.subimage_size
    step: int  # data.subimage_step
    scale: int  # upscale


def subimage_settings(cfg: Config) -> Settings:
    """The sub-image settings of `cfg`."""
    return Settings(cfg.data.subimage_size, cfg.data.subimage_step, cfg.upscale)


def window_starts(length: int, crop: int, step: int) -> list[int]:
    """Window starts along one side (BasicSR extract_subimages, thresh_size 0): every `step` pixels, plus one
    flush with the far edge if the last does not end there; a side shorter than `crop` gives one start, 0."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, step))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


def windows(height: int, width: int, s: Settings) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each sub-image of an image, top to bottom, then left to right; each
    window is `s.size` (or the whole side where shorter), cut to a multiple of the scale."""
    h, w = min(height, s.size) // s.scale * s.scale, min(width, s.size) // s.scale * s.scale
    if not h or not w:
        return []
    return [
        (t, left, h, w) for t in window_starts(height, s.size, s.step) for left in window_starts(width, s.size, s.step)
    ]


def too_small(cfg: Config, skipped: int) -> UserError:
    """The error for training sets none of whose sub-images holds an `hr_patch` crop."""
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
        for f in set_files(root, name)
        for *_, h, w in windows(*image_size(f), subimage_settings(cfg))
    ]
    if not any(side >= d.hr_patch for side in sides):
        raise too_small(cfg, len(sides))
