"""`sweeper evaluate`: the MATLAB bicubic reference (acceptance), checkpoints, and user errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sweeper.cli.app import app
from trainer.checkpoint import save_atomic
from trainer.config import build_config
from trainer.data import EMBEDDED
from trainer.nets import build_generator

runner = CliRunner()


def read_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        return {(r["set"], r["image"]): r for r in csv.DictReader(f)}


def test_bicubic_matches_the_matlab_reference(shared_data: Path, tmp_path: Path, torch_home: Path) -> None:
    out = tmp_path / "bicubic.csv"
    result = runner.invoke(app, ["evaluate", "bicubic", "--data-root", str(shared_data),
                                 "--sets", "Set5,Set14,BSD100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Set14" in result.output and "BSD100" in result.output  # the per-set mean table
    ours, reference = read_rows(out), read_rows(shared_data / "bicubic_x4_matlab_reference.csv")
    assert ours.keys() == reference.keys() and len(ours) == 119
    assert all(r["lpips"] == "" for r in ours.values())  # no AlexNet weights in this TORCH_HOME
    d_psnr = [abs(float(ours[k]["psnr_y"]) - float(reference[k]["psnr_y"])) for k in reference]
    d_ssim = [abs(float(ours[k]["ssim_y"]) - float(reference[k]["ssim_y"])) for k in reference]
    # The acceptance bounds of issue 2 ...
    assert max(d_psnr) <= 0.035 and max(d_ssim) <= 2e-4 and sum(d_psnr) / len(d_psnr) <= 0.002
    # ... and what this port reaches: within the CSV's rounding (4 decimals PSNR, 5 decimals SSIM). A
    # mirrored border, as in BasicSR, would put Set14/foreman.png 0.03 dB off.
    assert max(d_psnr) <= 2e-4 and max(d_ssim) <= 1e-5


def test_checkpoint_is_evaluated_with_the_trainers_generator(tmp_path: Path, torch_home: Path) -> None:
    cfg = build_config({"preset": "smoke", "model.num_blocks": 1, "model.num_feat": 8})
    torch.manual_seed(0)
    ckpt = tmp_path / "last.pt"
    save_atomic({"g": build_generator(cfg).state_dict(), "config": cfg.to_dict()}, ckpt)
    out = tmp_path / "g.csv"
    result = runner.invoke(app, ["evaluate", str(ckpt), "--data-root", str(EMBEDDED), "--sets", "Set5",
                                 "--out", str(out), "--no-lpips"])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 5 and all(0 < float(r["psnr_y"]) < 40 and -1 < float(r["ssim_y"]) < 1 for r in rows.values())
    wrong = runner.invoke(app, ["evaluate", str(ckpt), "--data-root", str(EMBEDDED), "--sets", "Set5", "--upscale", "2"])
    assert wrong.exit_code == 2 and "--upscale" in wrong.output


ROOT = ["--data-root", str(EMBEDDED)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nearest", *ROOT], "method='nearest': choose bicubic or a generator checkpoint"),
        (["bicubic", *ROOT, "--sets", "Set6"], "unknown image set 'Set6'"),
        (["bicubic", *ROOT, "--sets", " , "], "--sets"),
        (["bicubic", *ROOT, "--upscale", "8"], "--upscale=8"),
        (["bicubic", "--data-root", "/nonexistent"], "is not a folder"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str, torch_home: Path) -> None:
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
