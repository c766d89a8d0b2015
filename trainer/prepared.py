"""The prepared-data cache: a training set's sub-images (section 4.1), cut once, with their MATLAB-bicubic
LR made once, in files every trial process memory-maps (one copy per node, in the page cache).

Sub-images are BasicSR's `extract_subimages` windows (crop 480, step 240: `trainer.image_sets.windows`).

One prepared set is a folder `<cache>/<set>-<key>/` (key: hash of the source folder and the settings):

    hr.npy         every source image, RGB uint8 HWC, flattened and concatenated: the HR pixels, stored once
    lr.npy         every sub-image's LR (`trainer.imresize.degrade`), RGB uint8 HWC, flattened and concatenated
    images.npy     (M, 3) int64: offset into hr.npy, height, width
    windows.npy    (N, 6) int64: image, top, left, height, width, offset into lr.npy
    manifest.json  counts, settings, each source's size, mtime and sha256, and the content hash; written
                   last and atomically: a folder without it is never read

While it is built, `plan.json` (sources and settings) and `done/<i>.json` per finished source image let a
killed build resume; a changed plan starts over. A worker writes an image's pixels with one write per array
(page cache: safe from a killed process), then its marker with the CRC-32 of those bytes; the arrays are fsynced
once, before the manifest. A resume re-reads the marked images and redoes any whose bytes do not match (what a
power cut before that fsync can leave). Syncing per image instead made two workers wait on each other's
writeback (`benchmarks/data_prep.py`: 1.5x with two processes, 1.8-1.9x now). Old files are unlinked, never
overwritten, so a trial still mapping them keeps its data. The free space is checked first (the bytes of
the images left to do); the pool's workers die with the process that started them and never hold the lock,
so a killed build never blocks the next one.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import heartbeat
from trainer.errors import UserError
from trainer.files import atomic_write, check_space, file_lock, read_json, sha256_file, write_json_atomic
from trainer.image_sets import Settings, image_size, windows
from trainer.images import read_image, to_rgb
from trainer.imresize import degrade
from trainer.procs import die_with_parent
from trainer.terminal import bar

VERSION = 1
ARRAYS = ("hr.npy", "lr.npy", "images.npy", "windows.npy")
Spans = tuple[tuple[int, int], tuple[int, int]]  # (offset, length) of one source image's bytes in hr.npy, lr.npy


def _stats(files: list[Path]) -> list[dict[str, Any]]:
    """Name, size and mtime of each source (a cheap fingerprint; content hashes confirm any difference)."""
    out = []
    for f in files:
        st = f.stat()
        out.append({"name": f.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def content_hash(settings: Settings, sources: list[dict[str, Any]]) -> str:
    """Identity of a prepared set's pixels: the settings and each source's name and sha256."""
    key = [VERSION, asdict(settings), [(s["name"], s["sha256"]) for s in sources]]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


class PreparedSet:
    """A prepared set opened for reading: the window table in memory, the pixels memory-mapped on first use
    (pickling it sends the folder, not the pixels)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], built: int = 0) -> None:
        self.folder, self.manifest, self.built = folder, manifest, built
        self.images = np.load(folder / "images.npy")
        self.windows = np.load(folder / "windows.npy")
        self._maps: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Window `i` as (LR, HR) uint8 HWC views into the memory-mapped files (no copy)."""
        if self._maps is None:
            self._maps = (
                np.load(self.folder / "lr.npy", mmap_mode="r"),
                np.load(self.folder / "hr.npy", mmap_mode="r"),
            )
        lr_flat, hr_flat = self._maps
        image, top, left, h, w, lr_offset = (int(v) for v in self.windows[i])
        hr_offset, height, width = (int(v) for v in self.images[image])
        scale = self.manifest["settings"]["scale"]
        lr = lr_flat[lr_offset : lr_offset + h * w * 3 // scale**2].reshape(h // scale, w // scale, 3)
        hr = hr_flat[hr_offset : hr_offset + height * width * 3].reshape(height, width, 3)
        return lr, hr[top : top + h, left : left + w]


def folder_for(cache: Path, source: Path, settings: Settings) -> Path:
    key = json.dumps([VERSION, str(source.resolve()), asdict(settings)])
    return cache / f"{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def stale_sources(manifest: dict[str, Any] | None, settings: Settings, files: list[Path]) -> list[str] | None:
    """Why a manifest does not describe `files` under `settings`: None if it does, else the changed source
    names ([] when the manifest is missing or its settings or version differ). A source whose size or
    mtime changed is re-hashed: a touched but identical file keeps the cache."""
    if manifest is None or manifest.get("version") != VERSION or manifest.get("settings") != asdict(settings):
        return []
    old = manifest["sources"]
    if [s["name"] for s in old] != [f.name for f in files]:
        return sorted({s["name"] for s in old} ^ {f.name for f in files})
    changed = []
    for f, was, now in zip(files, old, _stats(files)):
        if (was["bytes"], was["mtime_ns"]) != (now["bytes"], now["mtime_ns"]) and sha256_file(f) != was["sha256"]:
            changed.append(f.name)
    return changed or None


def current_manifest(files: list[Path], source: Path, settings: Settings, cache: Path) -> dict[str, Any] | None:
    """The manifest of `files` prepared under `settings` in `cache` if it is there and current, else None."""
    manifest = read_json(folder_for(cache, source, settings) / "manifest.json")
    return manifest if stale_sources(manifest, settings, files) is None else None


def open_or_build(
    files: list[Path], source: Path, settings: Settings, cache: Path, workers: int | None = None, show: bool = False
) -> PreparedSet:
    """The prepared set of `files` (the images of set folder `source`), built first if missing or stale.

    One process builds a given set at a time (a file lock beside its folder); the others wait, then reuse
    it. `workers` processes decode and degrade (default: every core this process may use)."""
    folder = folder_for(cache, source, settings)
    if (manifest := current_manifest(files, source, settings, cache)) is not None:
        return PreparedSet(folder, manifest)
    with file_lock(
        folder.with_name(folder.name + ".lock"),
        functools.partial(heartbeat.beat, f"waiting for {source.name} (being prepared)"),
    ):
        manifest = read_json(folder / "manifest.json")
        stale = stale_sources(manifest, settings, files)
        if stale is None and manifest is not None:  # (a missing manifest is never current)
            return PreparedSet(folder, manifest)
        if manifest is not None:
            changed = f" ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''})" if stale else ""
            print(f"note: {source.name} changed since it was prepared{changed}; preparing it again", file=sys.stderr)
            (folder / "manifest.json").unlink()
        manifest, built = _build(folder, files, source, settings, workers, show)
    return PreparedSet(folder, manifest, built)


def _layout(sizes: list[tuple[int, int]], settings: Settings) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The images and windows tables (see the module docstring) for images of the given sizes, and the
    byte lengths of hr.npy and lr.npy."""
    images, rows, hr_end, lr_end = [], [], 0, 0
    for i, (height, width) in enumerate(sizes):
        images.append((hr_end, height, width))
        hr_end += height * width * 3
        for top, left, h, w in windows(height, width, settings):
            rows.append((i, top, left, h, w, lr_end))
            lr_end += h * w * 3 // settings.scale**2
    return np.array(images, np.int64).reshape(-1, 3), np.array(rows, np.int64).reshape(-1, 6), hr_end, lr_end


def _fresh(folder: Path) -> None:
    """Empty `folder` by unlinking (never truncating) its files, so readers of an old build keep their data."""
    if folder.exists():
        for p in folder.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _build(
    folder: Path, files: list[Path], source: Path, settings: Settings, workers: int | None, show: bool
) -> tuple[dict[str, Any], int]:
    """Build (or resume building) the prepared set in `folder`; returns its manifest and the number of
    source images processed by this call."""
    t0 = time.monotonic()
    sizes = [image_size(f) for f in files]
    plan: dict[str, Any] = {"version": VERSION, "settings": asdict(settings), "sources": _stats(files), "sizes": sizes}
    images, table, hr_bytes, lr_bytes = _layout(sizes, settings)
    if read_json(folder / "plan.json") != json.loads(json.dumps(plan)):
        _fresh(folder)
        for name, total in (("hr.npy", hr_bytes), ("lr.npy", lr_bytes)):
            np.lib.format.open_memmap(folder / name, mode="w+", dtype=np.uint8, shape=(max(total, 1),)).flush()
        write_json_atomic(folder / "plan.json", plan)
    done_dir = folder / "done"
    spans = [_spans(images[i], table[table[:, 0] == i], settings.scale) for i in range(len(files))]
    todo = [i for i in range(len(files)) if not _intact(folder, i, spans[i])]
    check_space(folder, sum(hr[1] + lr[1] for hr, lr in (spans[i] for i in todo)), f"preparing {source.name}")
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo) or 1))
    if multiprocessing.current_process().daemon:  # e.g. a multiprocessing.Pool worker: it may not start a pool
        workers = 1
    print(
        f"preparing {source.name}: {len(todo)} of {len(files)} images to do, {workers} process(es) -> {folder}",
        file=sys.stderr,
    )
    tasks = [(files[i], i, folder, settings.scale, sizes[i], table[table[:, 0] == i].tolist(), spans[i]) for i in todo]
    with bar(
        total=len(files), initial=len(files) - len(todo), desc=source.name, unit="img", disable=not show
    ) as images_bar:
        if workers == 1:
            for task in tasks:
                _prepare_image(task)
                images_bar.update()
                heartbeat.beat(f"preparing {source.name}")
        else:
            ctx = multiprocessing.get_context("fork")  # workers only use CPU torch, one thread each
            with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
            ) as pool:
                try:
                    for future in concurrent.futures.as_completed([pool.submit(_prepare_image, t) for t in tasks]):
                        future.result()
                        images_bar.update()
                        heartbeat.beat(f"preparing {source.name}")
                except BaseException:  # a bad image or Ctrl-C: do not wait for the remaining images
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    for name in ("hr.npy", "lr.npy"):
        _fsync(folder / name)
    for name, array in (("images.npy", images), ("windows.npy", table)):
        atomic_write(folder / name, functools.partial(np.save, arr=array))
    sources = [
        {**s, "sha256": json.loads((done_dir / f"{i}.json").read_text())["sha256"], "height": h, "width": w}
        for i, (s, (h, w)) in enumerate(zip(plan["sources"], sizes))
    ]
    manifest = {
        "version": VERSION,
        "set": source.name,
        "source": str(source.resolve()),
        "settings": asdict(settings),
        "images": len(files),
        "subimages": len(table),
        "content_hash": content_hash(settings, sources),
        "bytes": sum((folder / n).stat().st_size for n in ARRAYS),
        "prepare_s": round(time.monotonic() - t0, 3),
        "workers": workers,
        "sources": sources,
    }
    write_json_atomic(folder / "manifest.json", manifest)
    shutil.rmtree(done_dir, ignore_errors=True)
    (folder / "plan.json").unlink()
    return manifest, len(todo)


def _init_worker(parent: int) -> None:
    """A pool worker: one thread, and killed with its parent (an orphan would wait on the task pipe for ever).
    It holds no lock: `trainer.files` closes inherited lock descriptors at every fork."""
    die_with_parent(signal.SIGKILL, parent)
    torch.set_num_threads(1)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _spans(image: np.ndarray, rows: np.ndarray, scale: int) -> Spans:
    """(offset, length) of one source image's bytes in hr.npy and of its windows' LR in lr.npy (contiguous:
    `_layout` lays an image's windows out one after another)."""
    hr_offset, height, width = (int(v) for v in image)
    lr_length = int(sum(h * w * 3 // scale**2 for h, w in rows[:, 3:5]))
    return (hr_offset, height * width * 3), (int(rows[0, 5]) if len(rows) else 0, lr_length)


def _intact(folder: Path, i: int, spans: Spans) -> bool:
    """Whether source image `i` is marked done and its bytes in both arrays still match the marker's CRCs."""
    marker = read_json(folder / "done" / f"{i}.json")
    if marker is None:
        return False
    for name, (offset, length) in zip(("hr.npy", "lr.npy"), spans):
        array = np.load(folder / name, mmap_mode="r")
        if zlib.crc32(array[offset : offset + length]) != marker.get(f"{name[:2]}_crc32"):
            return False
    return True


def _prepare_image(task: tuple[Path, int, Path, int, tuple[int, int], list[list[int]], Spans]) -> None:
    """Worker: decode source image `i`, hash it, write its HR pixels and its windows' LR into the arrays (one
    write each, at the offsets in `spans`), then record it as done with the CRCs of what it wrote (atomically)."""
    path, i, folder, scale, size, rows, spans = task
    digest = sha256_file(path)
    img = to_rgb(read_image(path))
    if tuple(img.shape[-2:]) != size:
        raise UserError(f"{path} changed while it was being prepared; run again")
    hr = img.permute(1, 2, 0).contiguous().numpy().reshape(-1)
    lr = np.concatenate(
        [
            degrade(img[:, top : top + h, left : left + w], scale).permute(1, 2, 0).reshape(-1).numpy()
            for _, top, left, h, w, _ in rows
        ]
        or [np.empty(0, np.uint8)]
    )
    marker: dict[str, str | int] = {"sha256": digest}
    for name, data, (offset, _) in zip(("hr.npy", "lr.npy"), (hr, lr), spans):
        header = np.load(folder / name, mmap_mode="r").offset
        with open(folder / name, "r+b") as f:
            f.seek(header + offset)
            f.write(data.data)  # the array's bytes (contiguous)
        marker[f"{name[:2]}_crc32"] = zlib.crc32(data.data)
    write_json_atomic(folder / "done" / f"{i}.json", marker)
