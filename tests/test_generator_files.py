"""Released generator files (model.init_from: BasicSR and ESRGAN key names, .pth and .safetensors, clear
refusals) and exported ones (safetensors with a card, loaded back bit for bit)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.checkpoint import load_checkpoint
from trainer.config import build_config, config_from_dict
from trainer.errors import UserError
from trainer.generator_files import init_state, read_card, read_state, save_export, to_ours
from trainer.nets import build_generator
from trainer.train import train

SMALL = {"preset": "smoke", "model.num_feat": 8, "model.num_blocks": 2, "model.growth": 4}


def basicsr_names(key: str, arch: str) -> str:
    """This package's key -> BasicSR's (MSRResNet / RRDBNet), written out independently of the code under test."""
    if arch == "srgan":
        key = re.sub(r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1.", key)
        key = re.sub(r"^body\.(\d+)\.body\.3\.", r"body.\1.conv2.", key)
        return key.replace("upsample.0.", "upconv1.").replace("upsample.3.", "upconv2.")
    key = re.sub(
        r"^body\.(\d+)\.blocks\.(\d)\.convs\.(\d)\.",
        lambda m: f"body.{m[1]}.rdb{int(m[2]) + 1}.conv{int(m[3]) + 1}.",
        key,
    )
    return key.replace("conv_up.0.", "conv_up1.").replace("conv_up.1.", "conv_up2.")


def esrgan_repo_names(key: str) -> str:
    """BasicSR's RRDBNet key -> the ESRGAN repository's (RRDB_PSNR_x4.pth)."""
    key = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", key)
    return (
        key.replace("conv_body.", "trunk_conv.")
        .replace("conv_up1.", "upconv1.")
        .replace("conv_up2.", "upconv2.")
        .replace("conv_hr.", "HRconv.")
    )


@pytest.mark.parametrize("arch", ["srgan", "esrgan"])
def test_released_files_load_under_their_own_key_names(arch: str, tmp_path: Path) -> None:
    cfg = build_config({**SMALL, "arch": arch})
    torch.manual_seed(1)
    ours = build_generator(cfg).state_dict()
    basicsr = {basicsr_names(k, arch): v for k, v in ours.items()}
    assert len(set(basicsr) - set(ours)) > 4  # the names really differ
    torch.save({"params_ema": basicsr, "params": {}}, tmp_path / "basicsr.pth")  # BasicSR's wrapper, EMA first
    save_file(basicsr, tmp_path / "basicsr.safetensors")
    files = ["basicsr.pth", "basicsr.safetensors"]
    if arch == "esrgan":
        torch.save({esrgan_repo_names(k): v for k, v in basicsr.items()}, tmp_path / "esrgan.pth")
        files.append("esrgan.pth")
    for name in files:
        g = build_generator(cfg)
        state, used = init_state(build_config({**SMALL, "arch": arch, "model.init_from": str(tmp_path / name)}), g)
        assert used.startswith(f"file:{tmp_path / name} sha256:")
        assert all(torch.equal(g.state_dict()[k], v) for k, v in ours.items()) and state.keys() == ours.keys()


def test_a_mismatched_or_unreadable_file_is_a_one_line_error(tmp_path: Path) -> None:
    torch.save(build_generator(build_config(SMALL)).state_dict(), tmp_path / "g.pth")
    bigger = build_config({**SMALL, "model.num_blocks": 3, "model.init_from": str(tmp_path / "g.pth")})
    with pytest.raises(
        UserError, match=r"do not fit arch=srgan .*model.num_blocks=3\): 4 missing \(e.g. body.2.body.0.weight"
    ) as err:
        init_state(bigger, build_generator(bigger))
    assert "\n" not in str(err.value)
    esrgan = build_config({**SMALL, "arch": "esrgan", "model.init_from": str(tmp_path / "g.pth")})
    with pytest.raises(UserError, match="unexpected"):
        init_state(esrgan, build_generator(esrgan))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth: not a readable .pth"):
        read_state(tmp_path / "junk.pth")
    with pytest.raises(UserError, match="nothing.pth: no such weights file"):
        read_state(tmp_path / "nothing.pth")
    with pytest.raises(UserError, match="replaces the PSNR pre-training"):
        build_config({**SMALL, "model.init_from": "g.pth", "train.from_scratch": False})


def test_training_starts_from_the_file(tmp_path: Path) -> None:
    torch.manual_seed(2)
    start = build_generator(build_config(SMALL)).state_dict()
    torch.save(start, tmp_path / "start.pth")
    cfg = build_config(
        {
            **SMALL,
            "weights": "random",
            "train.iters": 2,
            "train.lr": 0.0,
            "model.init_from": str(tmp_path / "start.pth"),
        }
    )
    result = train(cfg, tmp_path / "run", tmp_path / "cache", progress=False)
    assert result["status"] == "complete" and result["weights"]["generator"].startswith(
        f"file:{tmp_path / 'start.pth'}"
    )
    kept = load_checkpoint(tmp_path / "run" / "ckpt" / "last.pt")["g"]
    assert all(torch.equal(kept[k], v) for k, v in start.items())  # lr=0: the GAN stage kept the file's weights


def test_an_exported_generator_reproduces_its_outputs_bit_for_bit(tmp_path: Path) -> None:
    cfg = build_config({**SMALL, "arch": "esrgan"})
    torch.manual_seed(3)
    g = build_generator(cfg).eval()
    card = {"architecture": "esrgan", "config": cfg.to_dict(), "metrics": {"Set5": {"psnr": 20.5}}}
    save_export(tmp_path / "g.safetensors", g.state_dict(), card)
    assert read_card(tmp_path / "g.safetensors") == card
    back = build_generator(config_from_dict(read_card(tmp_path / "g.safetensors")["config"])).eval()
    back.load_state_dict(to_ours(read_state(tmp_path / "g.safetensors"), "esrgan"))
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(g(x), back(x))
    save_file({"w": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match="without a dp-sweeper card"):
        read_card(tmp_path / "plain.safetensors")


def test_sweeper_export_writes_the_winner_with_its_card(tmp_path: Path) -> None:
    import mlflow_layout
    import yaml
    from typer.testing import CliRunner

    from sweeper.cli.app import app
    from trainer.checkpoint import FINISHED, save_generator

    uri, client = mlflow_layout.store(tmp_path)
    trials = [
        {"arch": "srgan", "mu": mu, "beta": "beta1_3", "final": mlflow_layout.scores(30 + k, 0.9, 0.1)}
        for k, mu in enumerate([0.5, 1])
    ]
    mlflow_layout.log_stage(client, tmp_path, "small", "mu", trials, winner=1)
    generators = {}
    for n in (0, 1):
        folder = tmp_path / "trials" / "small" / "mu" / str(n)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        torch.manual_seed(n)
        generators[n] = build_generator(config_from_dict(config)).eval()
        save_generator(folder / "ckpt" / "last.pt", config, FINISHED, 12, generators[n].state_dict())
    runner = CliRunner()
    done = runner.invoke(
        app, ["export", "--from", "small", "--out", str(tmp_path / "w.safetensors"), f"workspace={tmp_path}"]
    )
    assert done.exit_code == 0, done.output
    card = read_card(tmp_path / "w.safetensors")
    assert (
        card["source"]["trial"] == "1"
        and card["architecture"]["network"].startswith("SRResNet")
        and card["commit"] == "abc1234"
    )
    assert card["metrics"]["Set5"]["psnr"] == trials[1]["final"]["Set5"]["psnr"] and card["config"]["mu"] == 1
    back = build_generator(config_from_dict(card["config"])).eval()
    back.load_state_dict(read_state(tmp_path / "w.safetensors"))
    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(back(x), generators[1](x))  # the winner, bit for bit
    for named in (["--from", "small", "--trial", "0"], ["study=small", "trial=0"]):  # flags, or the usual keys
        written = tmp_path / f"t0-{len(named)}.safetensors"
        other = runner.invoke(app, ["export", *named, "--out", str(written), f"workspace={tmp_path}"])
        assert other.exit_code == 0 and read_card(written)["source"]["trial"] == "0", other.output
    for args, message in (
        (["--from", "small", "study=big"], "study=big and --from small name two studies; give one of them"),
        (["--from", "small", "--trial", "0", "trial=1"], "trial=1 and --trial 0 name two trials; give one of them"),
        ([], "which study? pass --from NAME (or study=NAME"),
    ):
        bad = runner.invoke(app, ["export", "--out", str(tmp_path / "y.safetensors"), f"workspace={tmp_path}", *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    for args, message in ((["--trial", "7"], "--trial 7: no finished trial"), ([], "must end in .safetensors")):
        out = str(tmp_path / ("x.safetensors" if args else "x.pt"))
        bad = runner.invoke(app, ["export", "--from", "small", "--out", out, f"workspace={tmp_path}", *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
