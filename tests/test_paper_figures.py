"""Fig. 4 from the real extractors (random-init here, and said so) and fixed-box crops across GT, bicubic and
generators, standalone and in the report."""

from __future__ import annotations

from pathlib import Path

import mlflow_layout
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from sweeper.analysis import paper_figures, report
from sweeper.cli.app import app
from trainer.checkpoint import FINISHED, save_generator
from trainer.config import config_from_dict
from trainer.image_sets import EMBEDDED
from trainer.losses.perceptual import VGG_CONV5_4, resnet_block, vgg_layer
from trainer.nets import build_generator

runner = CliRunner()


def test_any_block_and_conv_can_be_cut() -> None:
    assert len(vgg_layer("random", "phi5_4")) == VGG_CONV5_4  # eq. (4)'s layer, as the loss cuts it
    assert len(vgg_layer("random", "phi3_3")) == 15 and vgg_layer("random", "phi3_3")[-1].out_channels == 256
    out = resnet_block("random", "beta1_2")(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 256, 16, 16) and (out >= 0).all()  # stage 1's second bottleneck, after its ReLU
    with pytest.raises(Exception, match="block='beta1_4'"):
        resnet_block("random", "beta1_4")  # stage 1 has 3 bottlenecks


def test_fig4_is_drawn_and_labelled_random(tmp_path: Path, torch_home: Path) -> None:
    out = tmp_path / "fig4.png"
    done = runner.invoke(
        app,
        ["figure", "features", "image=Set5/baby", "weights=random", "--data-root", str(EMBEDDED), "--out", str(out)],
    )
    assert done.exit_code == 0 and "random-init" in done.output, done.output
    assert Image.open(out).size[0] > 600
    missing = runner.invoke(
        app, ["figure", "features", "image=Set5/baby", "--data-root", str(EMBEDDED), "--out", str(out)]
    )
    assert missing.exit_code == 2 and "sweeper weights import" in missing.output  # ImageNet asked, not there: one line
    for args, message in (
        (["image=Set5/nobody"], "no nobody in Set5"),
        (["image=Set5/baby", "channels=1,999"], "has 256 channels"),
        (["image=Set5/baby", "vgg=phi9_1"], "vgg='phi9_1'"),
    ):
        bad = runner.invoke(
            app, ["figure", "features", *args, "weights=random", "--data-root", str(EMBEDDED), "--out", str(out)]
        )
        assert bad.exit_code == 2 and message in bad.output, bad.output


def test_report_crops_run_each_generator_at_a_fixed_box(tmp_path: Path) -> None:
    uri, client = mlflow_layout.store(tmp_path)
    trials = [
        {"arch": "srgan", "mu": mu, "beta": "beta1_3", "final": mlflow_layout.scores(30 + k, 0.9, 0.1, sets=("Set5",))}
        for k, mu in enumerate([0.5, 1])
    ]
    mlflow_layout.log_stage(client, tmp_path, "small", "mu", trials, winner=1)
    for n in (0, 1):
        folder = tmp_path / "trials" / "small" / "mu" / str(n)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        torch.manual_seed(n)
        save_generator(
            folder / "ckpt" / "last.pt", config, FINISHED, 12, build_generator(config_from_dict(config)).state_dict()
        )
    out = tmp_path / "report"
    report.main(["study=small", f"workspace={tmp_path}", "crop=Set5/baby:100,120,48,48"], out=out)
    readme = (out / "README.md").read_text()
    assert "zoomed at fixed boxes (Set5/baby (100, 120, 48, 48)" in readme
    grid = np.asarray(Image.open(next((out / "figures").glob("table1_*_crops.png"))))
    assert grid.shape[1] > 4 * 150  # GT, bicubic and two generators
    with pytest.raises(Exception, match="does not fit"):
        paper_figures.crops_png(["Set5/baby"], [], EMBEDDED, 4, "mod12", {"Set5/baby": (500, 500, 96, 96)}, "t")
