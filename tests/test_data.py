"""Data root, image sets, image files, validation pairs and the seeded, resumable training batches
(the prepared-data cache itself: tests/test_prepared.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import build_config
from trainer.data import TrainBatches, load_set, load_val_sets, val_pairs
from trainer.errors import UserError
from trainer.image_sets import (
    EMBEDDED,
    Settings,
    check_train_sets,
    check_val_sets,
    describe_sets,
    resolve_root,
    set_names,
    settle_sets,
    windows,
)
from trainer.images import read_image, write_image
from trainer.imresize import degrade, modcrop


def smoke(**overrides):
    return build_config({"preset": "smoke", **overrides})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace cache for the module: the embedded set is prepared once (about a second)."""
    return tmp_path_factory.mktemp("cache")


def test_resolve_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEPER_DATA", raising=False)
    assert resolve_root(None) == EMBEDDED
    monkeypatch.setenv("SWEEPER_DATA", str(tmp_path))
    assert resolve_root(None) == tmp_path
    assert resolve_root(EMBEDDED) == EMBEDDED
    with pytest.raises(UserError, match="nowhere.*not a folder"):
        resolve_root(tmp_path / "nowhere")


def test_embedded_dataset_is_small_and_complete() -> None:
    assert [name for name, _ in load_set(EMBEDDED, "Set5")] == [
        "baby.png",
        "bird.png",
        "butterfly.png",
        "head.png",
        "woman.png",
    ]
    assert len(load_set(EMBEDDED, "train")) >= 5
    assert sum(f.stat().st_size for f in EMBEDDED.rglob("*")) < 5e6


def test_set_errors_name_the_set_or_file(tmp_path: Path) -> None:
    (tmp_path / "Empty").mkdir()
    (tmp_path / "Good").mkdir()
    write_image(tmp_path / "Good" / "a.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(UserError, match="unknown image set 'Set15'.*sets found there: Good"):
        load_set(tmp_path, "Set15")
    with pytest.raises(UserError, match="'Empty'.*holds no PNG"):
        load_set(tmp_path, "Empty")
    (tmp_path / "Bad").mkdir()
    (tmp_path / "Bad" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="broken.png: unreadable or corrupt"):
        load_set(tmp_path, "Bad")
    assert load_set(tmp_path, "Good") is load_set(tmp_path, "Good")  # cached


def test_image_formats(tmp_path: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "gray.bmp")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.jpg", quality=100)
    Image.fromarray(rgba[..., 0].astype(np.uint16) * 200).save(tmp_path / "deep.png")
    assert torch.equal(read_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    assert torch.equal(read_image(tmp_path / "gray.bmp"), torch.from_numpy(rgba[..., :1]).permute(2, 0, 1))
    assert read_image(tmp_path / "rgb.jpg").shape == (3, 6, 5)
    with pytest.raises(UserError, match="deep.png: unsupported pixel format"):
        read_image(tmp_path / "deep.png")
    with pytest.raises(UserError, match="missing.png: no such image file"):
        read_image(tmp_path / "missing.png")
    write_image(tmp_path / "out" / "f.png", torch.full((3, 4, 4), 0.5))
    assert read_image(tmp_path / "out" / "f.png").unique().tolist() == [128]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["f.png"]  # no temporary file left behind


def test_val_sets_follow_the_config(shared_data: Path) -> None:
    cfg = smoke(**{"data.root": str(shared_data), "data.val_sets": ["Set5", "Set14"], "data.val_max_images": 3})
    sets = load_val_sets(cfg)
    assert list(sets) == ["Set5", "Set14"] and all(len(v) == 3 for v in sets.values())
    bridge = sets["Set14"][2]
    assert bridge.name == "bridge.png" and bridge.hr.shape == (1, 60, 60)  # grayscale HR kept as its own Y; mod12 of 64
    assert bridge.lr.shape == (3, 15, 15)
    img = sets["Set5"][0]
    assert img.hr.shape == (3, 60, 60) and img.lr.shape == (3, 15, 15) and not img.supplied
    assert torch.equal(img.lr, degrade(img.hr, 4))
    full = modcrop(load_set(shared_data, "Set5")[0][1], 12)
    top, left = (full.shape[1] - 64) // 2 // 4 * 4, (full.shape[2] - 64) // 2 // 4 * 4  # on the LR grid
    assert torch.equal(img.hr, full[:, top : top + 60, left : left + 60])
    mod4 = load_val_sets(smoke(**{"data.root": str(shared_data), "data.val_hr": "mod4", "data.val_sets": ["Set5"]}))
    assert mod4["Set5"][0].hr.shape == (3, 64, 64)


def published_layout(root: Path, shared_data: Path) -> dict[str, torch.Tensor]:
    """Set5 as BasicSR ships it: GTmod12/ and LRbicx4/; bird's LR is made another way, so a test can tell
    the supplied files from a re-degradation. Returns the LR images written."""
    lrs = {}
    for name, img in load_set(shared_data, "Set5"):
        hr = modcrop(img, 12)
        lr = degrade(hr, 4) if name != "bird.png" else hr[:, 1::4, 1::4].contiguous()  # nearest, not bicubic
        write_image(root / "Set5" / "GTmod12" / name, hr)
        write_image(root / "Set5" / "LRbicx4" / name, lr)
        lrs[name] = lr
    return lrs


def test_published_layout_scores_the_supplied_lr_images(shared_data: Path, tmp_path: Path) -> None:
    lrs = published_layout(tmp_path, shared_data)
    assert set_names(tmp_path) == ["Set5"]  # its images are in GTmod12/
    pairs = {p.name: p for p in val_pairs(tmp_path, "Set5", 4, "mod12")}
    flat = {p.name: p for p in val_pairs(shared_data, "Set5", 4, "mod12")}
    assert all(p.supplied for p in pairs.values()) and not any(p.supplied for p in flat.values())
    for name, pair in pairs.items():
        assert torch.equal(pair.hr, flat[name].hr) and torch.equal(pair.lr, lrs[name])
    assert torch.equal(
        pairs["baby.png"].lr, flat["baby.png"].lr
    )  # the published LR files are MATLAB's bicubic of GTmod12
    assert not torch.equal(pairs["bird.png"].lr, flat["bird.png"].lr)  # the supplied file, not a re-degradation
    (crop,) = val_pairs(tmp_path, "Set5", 4, "mod12", crop=64, max_images=1)
    top, left = (pairs["baby.png"].hr.shape[1] - 64) // 2 // 4, (pairs["baby.png"].hr.shape[2] - 64) // 2 // 4
    assert crop.hr.shape == (3, 60, 60) and torch.equal(crop.lr, lrs["baby.png"][:, top : top + 15, left : left + 15])


def test_published_layout_errors_are_one_line(shared_data: Path, tmp_path: Path) -> None:
    published_layout(tmp_path, shared_data)
    write_image(tmp_path / "Set5" / "LRbicx4" / "head.png", torch.zeros(3, 10, 10, dtype=torch.uint8))
    cfg = smoke(**{"data.root": str(tmp_path), "data.val_sets": ["Set5"], "data.val_max_images": 0})
    for load in (lambda: val_pairs(tmp_path, "Set5", 4, "mod12"), lambda: check_val_sets(cfg)):  # the check run makes
        with pytest.raises(
            UserError, match=r"Set5/LRbicx4/head.png: LR image is \(10, 10\), but its HR .* is \(276, 276\)"
        ) as err:
            load()
        assert "\n" not in str(err.value)
    (tmp_path / "Set5" / "LRbicx4" / "head.png").unlink()
    for load in (lambda: val_pairs(tmp_path, "Set5", 4, "mod12"), lambda: check_val_sets(cfg)):
        with pytest.raises(UserError, match=r"LRbicx4: no LR image for 1 HR image\(s\) of Set5 \(head.png\)"):
            load()


def test_the_check_before_a_run_refuses_what_loading_the_validation_sets_would(tmp_path: Path) -> None:
    """`check_val_sets` (torch-free, in `sweeper run`'s process) fails on each image `load_val_sets` fails on,
    with the same message, and passes where it loads."""
    bad = {
        "good": (lambda f: write_image(f, torch.zeros(1, 24, 36, dtype=torch.uint8)), None),
        "small": (lambda f: write_image(f, torch.zeros(3, 11, 40, dtype=torch.uint8)), r"b.png: HR image is \(11, 40\), smaller than 12"),
        "corrupt": (lambda f: f.write_bytes(b"\x89PNG not really"), "b.png: unreadable or corrupt"),
        "deep": (lambda f: Image.fromarray(np.zeros((4, 4), np.uint16)).save(f), "b.png: unsupported pixel format"),
    }  # fmt: skip
    for case, (write, message) in bad.items():
        (tmp_path / case / "Set5").mkdir(parents=True)
        write_image(tmp_path / case / "Set5" / "a.png", torch.zeros(3, 24, 24, dtype=torch.uint8))
        write(tmp_path / case / "Set5" / "b.png")
        cfg = smoke(**{"data.root": str(tmp_path / case), "data.val_sets": ["Set5"], "data.val_max_images": 0})
        if message is None:
            check_val_sets(cfg)
            assert load_val_sets(cfg)["Set5"][1].hr.shape == (1, 24, 36)
            continue
        for load in (check_val_sets, load_val_sets):
            with pytest.raises(UserError, match=message):
                load(cfg)


def chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)


def test_sub_images_are_the_windows_of_the_sources_with_their_lr(cache: Path) -> None:
    batches = TrainBatches(smoke(), cache)
    files = sorted((EMBEDDED / "train").glob("*.png"))
    settings = Settings(96, 48, 4)
    expected = [
        (img, w) for f in files for img in [read_image(f)] for w in windows(img.shape[-2], img.shape[-1], settings)
    ]
    assert len(batches) == len(expected) == 76 and batches.skipped == 0
    for i in (0, 1, 30, len(batches) - 1):
        img, (top, left, h, w) = expected[i]
        lr, hr = batches.pair(i)
        assert torch.equal(chw(hr), img[:, top : top + h, left : left + w])
        assert torch.equal(chw(lr), degrade(img[:, top : top + h, left : left + w].clone(), 4))


def dihedral(img: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/90-degree rotations of a (C, H, W) image."""
    out = []
    for hflip, vflip, transpose in itertools.product([False, True], repeat=3):
        x = img.flip(-1) if hflip else img
        x = x.flip(-2) if vflip else x
        out.append(x.transpose(-2, -1) if transpose else x)
    return out


def find_crop(patch: torch.Tensor, images: list[torch.Tensor]) -> list[tuple[int, int, int, int]]:
    """Every (image, transform, top, left) at which `patch` occurs exactly."""
    p = patch.shape[-1]
    hits = []
    for i, img in enumerate(images):
        for t, x in enumerate(dihedral(img)):
            match = (x.unfold(-2, p, 1).unfold(-2, p, 1) == patch[:, None, None]).flatten(-2).all(-1).all(0)
            hits += [(i, t, int(a), int(b)) for a, b in match.nonzero()]
    return hits


def test_batches_are_aligned_augmented_crops(cache: Path) -> None:
    batches = TrainBatches(smoke(), cache)
    lr, hr = next(batches)
    assert lr.shape == (2, 3, 8, 8) and hr.shape == (2, 3, 32, 32) and lr.dtype == hr.dtype == torch.float32
    pairs = [tuple(chw(a) for a in batches.pair(i)) for i in range(len(batches))]
    for lr_patch, hr_patch in zip((lr * 255).round().byte(), (hr * 255).round().byte()):
        hits = find_crop(lr_patch, [p[0] for p in pairs])
        assert hits, "the LR patch is not a crop of any (flipped/rotated) LR sub-image"
        # The HR patch sits at 4x the LR position in the same sub-image, under the same transform.
        assert any(
            torch.equal(dihedral(pairs[i][1])[t][:, 4 * a : 4 * a + 32, 4 * b : 4 * b + 32], hr_patch)
            for i, t, a, b in hits
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_sees_exactly_the_batches_of_a_straight_one(cache: Path, workers: int) -> None:
    """Batch b depends on (seed, b) only: a stream resumed from a state_dict (a new process, in a trial)
    continues with the very batches an uninterrupted one gets, also when worker processes make them."""
    straight = TrainBatches(smoke(), cache)
    n = len(straight)  # with batch_size 2, n // 2 + 3 batches cross an epoch boundary
    k = n // 4 + 1
    stream, saved = [], {}
    for i in range(n // 2 + 3):
        if i == k:
            saved = straight.state_dict()
        stream.append(next(straight))
    resumed = TrainBatches(smoke(**{"data.num_workers": workers}), cache)
    resumed.load_state_dict(saved)
    for expected in stream[k:]:
        got = next(resumed)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    other = TrainBatches(smoke(seed=1), cache)
    assert not torch.equal(next(other)[1], stream[0][1])
    with pytest.raises(UserError, match="seed=0.*seed=1"):
        other.load_state_dict(straight.state_dict())


def test_every_subimage_once_per_epoch(cache: Path) -> None:
    batches = TrainBatches(smoke(), cache)
    n = len(batches)
    assert sorted(batches._index(k) for k in range(n)) == list(range(n))
    assert [batches._index(k) for k in range(n)] != [batches._index(k) for k in range(n, 2 * n)]


def test_too_small_training_images_are_refused(cache: Path) -> None:
    cfg = smoke(**{"data.hr_patch": 320, "data.subimage_size": 480})  # the largest embedded image is 285 x 279
    with pytest.raises(UserError, match="hr_patch=320"):
        check_train_sets(cfg)
    with pytest.raises(UserError, match="hr_patch=320"):
        TrainBatches(cfg, cache)
    check_train_sets(smoke())


def test_a_data_root_gives_the_presets_training_sets_and_every_benchmark_found(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWEEPER_DATA", raising=False)
    root = {"data.root": str(shared_data)}
    settled = settle_sets({"preset": "smoke", **root})  # smoke trains on the embedded `train` set: not in a root
    assert settled["data.train_sets"] == ["T91", "BSD200"] and settled["data.val_sets"] == ["Set5", "Set14", "BSD100"]
    line = describe_sets(build_config(settled))
    assert line.startswith(
        "train: T91, BSD200 (96-px sub-images every 48 px, 32-px HR patches); validate: Set5, Set14, BSD100 ("
    )
    assert "first 2 images of each, 64-px centre crops" in line
    named = settle_sets({"preset": "proxy", "data.val_sets": ["Set14"], "data.train_sets": ["T91"], **root})
    assert named["data.val_sets"] == ["Set14"] and named["data.train_sets"] == ["T91"]  # what the config names stays
    assert settle_sets({"preset": "smoke"}) == {"preset": "smoke"}  # the embedded demo: the preset's own sets
    with pytest.raises(
        UserError,
        match=r"none of the training sets preset=paper trains on \(DIV2K\); sets found there: "
        r"BSD100, BSD200, Set14, Set5, T91; name yours with data.train_sets=\[\.\.\.\]",
    ):
        settle_sets({"preset": "paper", **root})
    planned = settle_sets({"preset": "paper", **root}, absent_ok=True)  # `sweeper plan` before DIV2K is downloaded
    assert planned["data.train_sets"] == ["DIV2K"] and planned["data.val_sets"] == ["Set5", "Set14", "BSD100"]
    (tmp_path / "T91").mkdir()
    write_image(tmp_path / "T91" / "a.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(UserError, match="none of the benchmark sets .*data.val_sets="):
        settle_sets({"preset": "smoke", "data.root": str(tmp_path)})
