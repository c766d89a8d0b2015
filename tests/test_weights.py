"""ImageNet weights through the torch hub cache: exact loading, refusals, status and import.

The real files cannot be made here (their names carry the first 8 hex digits of their sha256), so:
- loading tests write our own state dicts under the exact torchvision names: loading, like torchvision's
  cache, does not re-hash files, so the name need not match the content;
- the successful-import test registers an extra entry whose name is made from the real sha256 of the
  file the test writes, which is exactly the check `import_files` applies to the real entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from torchvision.models import vgg as tv_vgg

from trainer import weight_files, weights
from trainer.errors import UserError


def cache(torch_home: Path) -> Path:
    return torch_home / "hub" / "checkpoints"


def save_vgg_prefix(path: Path, upto: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A VGG19 `features.*` state dict for layers [:upto] (what the extractor reads)."""
    torch.manual_seed(seed)
    state = {f"features.{k}": v for k, v in tv_vgg.make_layers(tv_vgg.cfgs["E"])[:upto].state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_extractor_loads_the_exact_cached_tensors(torch_home: Path) -> None:
    state = save_vgg_prefix(cache(torch_home) / "vgg19-dcbb9e9d.pth", upto=5)
    features = weights.vgg19_features("imagenet", upto=5)
    assert len(features) == 5 and not any(p.requires_grad for p in features.parameters())
    loaded = {f"features.{k}": v for k, v in features.state_dict().items()}
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert features(torch.rand(1, 3, 16, 16)).shape == (1, 64, 8, 8)


def test_path_may_be_a_folder_or_a_file(tmp_path: Path, torch_home: Path) -> None:
    state = save_vgg_prefix(tmp_path / "mine" / "vgg19-dcbb9e9d.pth", upto=3, seed=1)
    for setting in (tmp_path / "mine", tmp_path / "mine" / "vgg19-dcbb9e9d.pth"):
        loaded = weights.vgg19_features(str(setting), upto=3)
        assert torch.equal(loaded.state_dict()["0.weight"], state["features.0.weight"])
    assert weight_files.describe(str(tmp_path / "mine")) == f"file:{(tmp_path / 'mine').resolve()}"
    assert weight_files.describe("random") == "random"
    with pytest.raises(UserError, match="weights='imagenett'.*imagenet, random"):
        weight_files.describe("imagenett")


def test_missing_file_names_file_url_and_import_command(torch_home: Path) -> None:
    with pytest.raises(weight_files.MissingWeightsError) as err:
        weights.resnet50("imagenet")
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message and "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "sweeper weights import" in message and "\n" not in message
    assert [f.name for f in weight_files.missing()] == [
        "vgg19-dcbb9e9d.pth",
        "resnet50-0676ba61.pth",
        "alexnet-owt-7be5be79.pth",
        "vgg16-397923af.pth",
    ]


def test_every_missing_file_is_named_at_once_with_one_import_command(torch_home: Path) -> None:
    from sweeper.search.session import check_weights

    with pytest.raises(weight_files.MissingWeightsError) as err:
        check_weights({}, "proxy", "psnr")
    message = str(err.value)
    assert (
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message
        and "resnet50-0676ba61.pth (ResNet-50" in message
    )
    assert "`sweeper weights import vgg19-dcbb9e9d.pth resnet50-0676ba61.pth`" in message and "\n" not in message


def test_corrupt_or_wrong_files_are_refused(torch_home: Path) -> None:
    path = cache(torch_home) / "vgg19-dcbb9e9d.pth"
    save_vgg_prefix(path, upto=5)
    path.write_bytes(path.read_bytes()[:1000])  # a truncated download
    with pytest.raises(UserError, match="vgg19-dcbb9e9d.pth: not a readable torch checkpoint"):
        weights.vgg19_features("imagenet", upto=5)
    save_vgg_prefix(path, upto=2)  # too few layers for upto=5
    with pytest.raises(UserError, match="does not hold VGG19 weights .*Missing key"):
        weights.vgg19_features("imagenet", upto=5)


def test_random_weights_only_when_asked(torch_home: Path) -> None:
    features = weights.vgg19_features("random", upto=4)
    first = features.state_dict()["0.weight"]
    assert first.shape == (64, 3, 3, 3) and first.std() > 0
    assert weights.resnet50("random").fc.out_features == 1000
    with pytest.raises(weight_files.MissingWeightsError):
        weights.vgg19_features("imagenet", upto=4)


def test_import_refuses_a_wrong_file_and_leaves_the_cache_untouched(tmp_path: Path, torch_home: Path) -> None:
    fake = tmp_path / "vgg19-dcbb9e9d.pth"
    save_vgg_prefix(fake, upto=2)
    with pytest.raises(UserError, match="its name says VGG19 but its sha256 starts with"):
        weight_files.import_files([fake])
    other = tmp_path / "something.pth"
    other.write_bytes(b"not weights")
    with pytest.raises(UserError, match="matches none of"):
        weight_files.import_files([other])
    assert not cache(torch_home).exists() or not any(cache(torch_home).iterdir())


def test_import_copies_verified_files_under_their_cache_name(
    tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    download = tmp_path / "renamed-download.pth"
    save_vgg_prefix(download, upto=2, seed=3)
    digest = hashlib.sha256(download.read_bytes()).hexdigest()
    entry = dataclasses.replace(weight_files.FILES["vgg19"], url=f"https://example.org/tiny-{digest[:8]}.pth")
    monkeypatch.setitem(weight_files.FILES, "tiny", entry)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    with pytest.raises(UserError, match="bad.pth"):
        weight_files.import_files([download, bad])  # one bad file: nothing is copied
    assert not (cache(torch_home) / entry.name).exists()
    weight_files.import_files([download])
    assert (cache(torch_home) / entry.name).read_bytes() == download.read_bytes()
    capsys.readouterr()
    weight_files.print_status()
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith(entry.name))
    assert row.split()[-2:] == ["present", "yes"]
    assert "vgg19-dcbb9e9d.pth" in table and "MISSING" in table and "4 missing" in table


def test_the_torch_free_catalogue_agrees_with_torchvision_and_torch_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer.weight_files writes torchvision's URLs and torch.hub's cache rule out (so the sweeper never imports
    torch): both must stay what torchvision and torch say, under each way of placing the cache."""
    import torchvision.models as tv

    released = {"vgg19": tv.VGG19_Weights, "resnet50": tv.ResNet50_Weights, "alexnet": tv.AlexNet_Weights}
    released |= {"vgg16": tv.VGG16_Weights}
    assert {k: f.url for k, f in weight_files.FILES.items()} == {k: w.IMAGENET1K_V1.url for k, w in released.items()}
    for env in (
        {"TORCH_HOME": str(tmp_path / "th")},
        {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
        {"HOME": str(tmp_path)},
    ):
        for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert weight_files.cache_dir() == Path(torch.hub.get_dir()) / "checkpoints", env
