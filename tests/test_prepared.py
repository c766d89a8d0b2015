"""The prepared-data cache: the sub-image count rule, invalidation, concurrent and interrupted builds, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import Config, build_config
from trainer.data import prepare_set
from trainer.errors import UserError
from trainer.image_sets import Settings, window_starts, windows
from trainer.images import write_image

PAPER = Settings(480, 240, 4)


def basicsr_starts(length: int, crop: int, step: int) -> list[int]:
    """BasicSR extract_subimages' loop for one axis (thresh_size 0), as the issue states it."""
    starts = list(range(0, length - crop + 1, step))
    if length - crop > starts[-1]:
        starts.append(length - crop)
    return starts


def test_count_rule_is_basicsr_extract_subimages() -> None:
    assert len(windows(1356, 2040, PAPER)) == 40  # DIV2K 0001: the authors' meta_info has 40 lines for it
    assert window_starts(2040, 480, 240) == [0, 240, 480, 720, 960, 1200, 1440, 1560]
    assert window_starts(1356, 480, 240) == [0, 240, 480, 720, 876]
    assert window_starts(960, 480, 240) == [0, 240, 480]  # no strip left over: no extra window
    assert window_starts(960, 480, 480) == [0, 480]  # step = size: the old non-overlapping cut
    assert window_starts(1000, 480, 480) == [0, 480, 520]  # ... plus one window flush with the far edge
    for length in (480, 481, 719, 720, 721, 1020, 1356, 1404, 2040):
        for step in (240, 480, 100):
            assert window_starts(length, 480, step) == basicsr_starts(length, 480, step), (length, step)


def test_short_sides_are_kept_whole_and_windows_cut_to_the_scale() -> None:
    assert windows(300, 1000, PAPER) == [(0, left, 300, 480) for left in (0, 240, 480, 520)]
    assert windows(301, 200, PAPER) == [(0, 0, 300, 200)]  # 301 -> 300, a multiple of 4
    assert windows(250, 130, Settings(96, 48, 3)) == [
        (t, left, 96, 96) for t in (0, 48, 96, 144, 154) for left in (0, 34)
    ]
    assert windows(3, 50, PAPER) == []  # thinner than the scale: no sub-image


def make_set(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    folder = root / "Train"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        write_image(folder / f"{i:04d}.png", torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8))
    return folder


def cfg_for(root: Path, cache: Path, **overrides) -> Config:
    return build_config(
        {
            "data.root": str(root),
            "data.train_sets": ["Train"],
            "data.cache": str(cache),
            "data.subimage_size": 48,
            "data.subimage_step": 24,
            "data.hr_patch": 32,
            **overrides,
        }
    )


def test_changed_image_or_setting_invalidates_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make_set(tmp_path / "data", 3, (64, 80))
    cfg = cfg_for(tmp_path / "data", tmp_path / "cache")
    sources = sorted((tmp_path / "data").rglob("*"))
    first = prepare_set(cfg, "Train", tmp_path)
    assert (first.built, len(first), first.manifest["images"]) == (3, 3 * 2 * 3, 3)
    assert sorted((tmp_path / "data").rglob("*")) == sources  # nothing is written to the data root
    assert prepare_set(cfg, "Train", tmp_path).built == 0  # reused
    os.utime(folder / "0001.png", ns=(1, 1))  # touched, same content: still valid (sha256 says so)
    assert prepare_set(cfg, "Train", tmp_path).built == 0

    new = torch.zeros(3, 64, 80, dtype=torch.uint8)
    write_image(folder / "0001.png", new)
    again = prepare_set(cfg, "Train", tmp_path)
    assert "Train changed since it was prepared (0001.png)" in capsys.readouterr().err
    assert again.built == 3 and again.content_hash != first.content_hash and again.folder == first.folder
    window = next(i for i, row in enumerate(again.windows) if row[0] == 1)
    assert not again.pair(window)[1].any()  # the new pixels, not the stale ones

    coarser = prepare_set(
        cfg_for(tmp_path / "data", tmp_path / "cache", **{"data.subimage_step": 48}), "Train", tmp_path
    )
    assert coarser.built == 3 and coarser.folder != again.folder and len(coarser) == 3 * 2 * 2
    assert coarser.content_hash not in (first.content_hash, again.content_hash)


def test_two_processes_preparing_one_set_build_it_once(tmp_path: Path) -> None:
    make_set(tmp_path / "data", 6, (160, 160))
    args = [sys.executable, "-c", PREPARE, str(tmp_path / "data"), str(tmp_path / "cache"), "0"]
    procs = [
        subprocess.Popen(args, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # two separate processes, as two trials starting at once (a fork of pytest can deadlock)
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    results = sorted(tuple(out.split()) for out, _ in outs)
    assert [built for built, _ in results] == ["0", "6"]  # one built all six images, the other waited and reused them
    assert results[0][1] == results[1][1]


PREPARE = """
import sys
from pathlib import Path
from tests.test_prepared import cfg_for
from trainer.data import prepare_set
root, cache, step = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
p = prepare_set(cfg_for(root, cache, **({"data.subimage_step": step} if step else {})), "Train", cache, workers=1)
print(p.built, p.content_hash)
"""


def test_a_killed_prepare_resumes_where_it_stopped(tmp_path: Path) -> None:
    make_set(tmp_path / "data", 8, (200, 200))
    cache = tmp_path / "cache"
    args = [sys.executable, "-c", PREPARE, str(tmp_path / "data"), str(cache), "8"]
    child = subprocess.Popen(args, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(cache.glob("*/done/*.json"))) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    done = len(list(folder.glob("done/*.json")))
    assert 2 <= done < 8 and not (folder / "manifest.json").exists()  # killed mid-way: nothing is trusted yet
    assert (folder / "done" / "0.json").exists()  # one process: images in order
    hr = np.load(folder / "hr.npy", mmap_mode="r+")
    hr[:100] = 0  # image 0 marked done but its pixels lost, as a power cut before the final fsync can leave it
    hr.flush()
    del hr

    resumed = subprocess.run(args, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout.split()[0]) == 8 - done + 1  # the intact finished images were skipped, image 0 redone
    assert f"{8 - done + 1} of 8 images to do" in resumed.stderr

    clean = tmp_path / "clean"
    cfg = cfg_for(tmp_path / "data", clean, **{"data.subimage_step": 8})
    assert prepare_set(cfg, "Train", clean, workers=2).built == 8
    (reference,) = [p for p in clean.iterdir() if p.is_dir()]
    for name in ("hr.npy", "lr.npy", "windows.npy", "images.npy"):
        assert np.array_equal(np.load(folder / name), np.load(reference / name)), name
    assert sorted(p.name for p in folder.iterdir()) == [
        "hr.npy",
        "images.npy",
        "lr.npy",
        "manifest.json",
        "windows.npy",
    ]


def test_sweeper_data_prepare_prints_one_line_per_set(tmp_path: Path) -> None:
    make_set(tmp_path / "data", 2, (100, 60))
    cmd = [
        sys.executable,
        "-m",
        "sweeper.cli",
        "data",
        "prepare",
        "--data-root",
        str(tmp_path / "data"),
        "--sets",
        "Train",
        f"workspace={tmp_path / 'ws'}",
        "data.subimage_size=48",
        "data.subimage_step=24",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Train: 16 sub-images of 48x48 (step 24) from 2 images\n"
    (manifest,) = (tmp_path / "ws" / "cache" / "data").glob("Train-*/manifest.json")
    assert "prepared now" in out.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.stdout == out.stdout and "already prepared" in again.stderr

    bad = subprocess.run([*cmd[:-1], "data.subimage_step=96"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: data.subimage_step=96: must be between 1 and")
    assert "Traceback" not in bad.stderr


def test_missing_set_is_a_user_error(tmp_path: Path) -> None:
    make_set(tmp_path / "data", 1, (64, 64))
    with pytest.raises(UserError, match="unknown image set 'DIV2K'.*sets found there: Train"):
        prepare_set(cfg_for(tmp_path / "data", tmp_path / "cache"), "DIV2K", tmp_path)
