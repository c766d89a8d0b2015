"""The recipe: defaults for both archs follow the authors' released configs, every choice is one key away,
`sweeper recipe` / `sweeper train --dry-run` print it, and docs/RECIPE.md is the generated table."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweeper.analysis import recipe
from sweeper.cli.app import app
from trainer.config import all_keys, build_config
from trainer.errors import UserError

DOC = Path(__file__).resolve().parents[1] / "docs" / "RECIPE.md"
runner = CliRunner()


def test_docs_recipe_is_the_generated_table():
    assert DOC.read_text() == recipe.document(), (
        "docs/RECIPE.md is stale: run `sweeper recipe --document > docs/RECIPE.md`"
    )


@pytest.mark.parametrize("arch,gan", [("srgan", "vanilla"), ("esrgan", "ragan")])
def test_defaults_follow_the_authors_configs(arch, gan):
    cfg = build_config({"arch": arch})
    assert cfg.loss.gan == gan  # SRGANModel / ESRGANModel
    assert cfg.loss.ragan_detach and cfg.model.skip == "none" and cfg.model.init == "basicsr"
    assert cfg.train.from_scratch  # pretrain_network_g: ~
    assert (cfg.train.lr, cfg.train.milestones, cfg.train.lr_gamma, cfg.train.iters) == (
        1e-4,
        [50_000, 100_000, 200_000, 300_000],
        0.5,
        400_000,
    )
    assert (cfg.data.batch_size, cfg.data.hr_patch, cfg.train.ema, cfg.seed) == (16, 128, 0.0, 0)
    assert (cfg.loss.pixel_weight, cfg.loss.adv_weight, cfg.loss.perceptual_weight) == (1e-2, 5e-3, 1.0)
    assert cfg.metrics.space == "rgb"  # the space of the paper's published numbers; the text's Y is one key away
    assert (cfg.metrics.lpips_net, cfg.metrics.lpips_version) == ("alex", "0.1")


def test_each_choice_is_one_key_away():
    cfg = build_config({"arch": "srgan", "loss.gan": "ragan", "loss.ragan_detach": False, "model.skip": "bilinear",
                        "model.init": "all_convs", "metrics.space": "y", "train.from_scratch": False})  # fmt: skip
    assert (cfg.loss.gan, cfg.loss.ragan_detach, cfg.model.skip, cfg.model.init) == (
        "ragan",
        False,
        "bilinear",
        "all_convs",
    )
    assert (cfg.metrics.space, cfg.train.from_scratch) == ("y", False)
    assert build_config({"arch": "esrgan", "loss.gan": "vanilla"}).loss.gan == "vanilla"


@pytest.mark.parametrize("key,bad,valid", [("loss.gan", "wgan", "vanilla, ragan"), ("model.skip", "nearest", "none, bilinear"),
                                           ("model.init", "xavier", "basicsr, all_convs"), ("metrics.space", "ycbcr", "y, rgb"),
                                           ("metrics.lpips_net", "squeeze", "alex, vgg"), ("metrics.lpips_version", "0.2", "0.1, 0.0")])  # fmt: skip
def test_bad_values_name_the_value_and_the_choices(key, bad, valid):
    with pytest.raises(UserError, match=f"{key}='{bad}' is not valid; choose one of {valid}"):
        build_config({key: bad})


def test_every_row_names_real_keys_and_shows_the_value_in_effect():
    keys = set(all_keys())
    assert all(set(c.keys) <= keys for c in recipe.CHOICES)
    rows = {
        r["choice"]: r for r in recipe.rows(build_config({"arch": "srgan", "metrics.space": "rgb", "train.lr": 2e-4}))
    }
    assert rows["GAN loss"]["in effect"] == "vanilla" and rows["GAN loss"]["key"] == "loss.gan"
    assert rows["metric space and border"]["in effect"] == "rgb"
    assert rows["learning rate (G and D)"]["in effect"] == "0.0002"
    assert rows["from scratch (no PSNR pre-training)"]["in effect"] == "true"
    assert "SRGANModel" in rows["GAN loss"]["authors' code"]
    esrgan = {r["choice"]: r for r in recipe.rows(build_config({"arch": "esrgan"}))}
    assert esrgan["GAN loss"]["in effect"] == "ragan" and "ESRGANModel" in esrgan["GAN loss"]["authors' code"]


def test_sweeper_recipe_prints_markdown_and_json():
    out = runner.invoke(app, ["recipe", "arch=srgan", "preset=paper"])
    assert out.exit_code == 0 and out.stdout.startswith("| choice | in effect | key |")
    assert "| GAN loss | vanilla | loss.gan |" in out.stdout
    out = runner.invoke(app, ["recipe", "arch=esrgan", "--format", "json"])
    data = json.loads(out.stdout)
    assert data["arch"] == "esrgan" and len(data["rows"]) == len(recipe.CHOICES)
    assert next(r for r in data["rows"] if r["key"] == "loss.gan")["in effect"] == "ragan"


@pytest.mark.parametrize("args,message", [(["recipe", "--format", "xml"], "--format 'xml' is not valid"),
                                          (["recipe", "loss.gan=wgan"], "loss.gan='wgan' is not valid"),
                                          (["recipe", "study=mu_search"], "studies have `sweeper run`")])  # fmt: skip
def test_sweeper_recipe_refuses_bad_input_in_one_line(args, message):
    out = runner.invoke(app, args)
    assert out.exit_code == 2 and message in out.stderr and "Traceback" not in out.output


def test_train_dry_run_prints_config_and_recipe_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(
        app,
        ["train", "arch=esrgan", "preset=smoke", "model.skip=bilinear", f"workspace={tmp_path / 'ws'}", "--dry-run"],
    )
    assert out.exit_code == 0, out.output
    config_text, table = out.stdout.split("\n\n", 1)
    config = yaml.safe_load(config_text)
    assert config == build_config({"arch": "esrgan", "preset": "smoke", "model.skip": "bilinear"}).to_dict()
    assert config["loss"]["gan"] == "ragan" and config["model"]["skip"] == "bilinear"
    assert table.startswith("| choice |") and "| generator skip | bilinear | model.skip |" in table
    assert list(tmp_path.iterdir()) == []  # no workspace, no run folder


@pytest.mark.parametrize("arch", ["srgan", "esrgan"])
def test_the_gan_stage_trains_the_chosen_game(arch):
    """One GAN step's logged l_adv and l_d are the chosen game's losses on the networks' logits."""
    import torch

    from trainer.losses import discriminator_loss, generator_adversarial_loss
    from trainer.train import Gan

    for gan in ("vanilla", "ragan"):
        cfg = build_config({"preset": "smoke", "weights": "random", "arch": arch, "mu": "inf", "loss.gan": gan,
                            "model.num_blocks": 1, "train.device": "cpu"})  # fmt: skip
        trainer = Gan.build(cfg, torch.device("cpu"))
        lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
        with torch.no_grad():  # in train mode BatchNorm uses batch statistics: the same logits inside the step
            real, fake = trainer.d(hr), trainer.d(trainer.g(lr))
        values = {k: float(v) for k, v in trainer.step(lr, hr).items()}
        assert values["l_adv"] == pytest.approx(float(generator_adversarial_loss(gan, real, fake)), rel=1e-5)
        assert values["l_d"] == pytest.approx(
            float(discriminator_loss(gan, real, fake, cfg.loss.ragan_detach)), rel=1e-5
        )
