"""`sweeper evaluate`: the MATLAB bicubic reference (acceptance), checkpoints, and user errors."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from sweeper.cli.app import app
from trainer.checkpoint import save_atomic
from trainer.config import build_config
from trainer.image_sets import EMBEDDED
from trainer.nets import build_generator

runner = CliRunner()


def evaluate_bicubic(root: Path, sets: str, out: Path, *keys: str) -> Any:
    """`sweeper evaluate bicubic` of `sets` under `root` into `out`, with config keys."""
    return runner.invoke(
        app, ["evaluate", "bicubic", "--data-root", str(root), "--sets", sets, "--out", str(out), *keys]
    )


def read_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        return {(r["set"], r["image"]): r for r in csv.DictReader(f)}


def test_bicubic_matches_the_matlab_reference(shared_data: Path, tmp_path: Path, torch_home: Path) -> None:
    out = tmp_path / "bicubic.csv"
    result = evaluate_bicubic(shared_data, "Set5,Set14,BSD100", out, "data.val_hr=mod4")  # the CSV's modcrop
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


def test_bicubic_reads_the_papers_table5_row_in_rgb_on_gtmod12(
    shared_data: Path, tmp_path: Path, torch_home: Path
) -> None:
    """Table 5's bicubic Set5 (26.69 / 0.7736) is the RGB protocol on GTmod12 HR; Y reads 1.7 dB higher."""
    out = tmp_path / "b.csv"
    result = evaluate_bicubic(shared_data, "Set5", out, "metrics.space=rgb", "data.val_hr=mod12")
    assert result.exit_code == 0, result.output
    rows = read_rows(out).values()
    psnr, ssim = (sum(float(r[k]) for r in rows) / 5 for k in ("psnr_rgb", "ssim_rgb"))
    assert (round(psnr, 2), round(ssim, 4)) == (26.66, 0.7736)
    assert round(sum(float(r["psnr_y"]) for r in rows) / 5, 2) == 28.38
    assert "26.6632" in result.output and result.output.index("PSNR-RGB") < result.output.index("PSNR-Y")


def test_supplied_lr_images_are_scored(shared_data: Path, tmp_path: Path, torch_home: Path) -> None:
    from test_data import published_layout

    published_layout(tmp_path / "root", shared_data)  # bird's supplied LR is not bicubic: its score must move
    scored: dict[str, Any] = {}
    for root in (shared_data, tmp_path / "root"):
        out = tmp_path / f"{root.name}.csv"
        result = runner.invoke(
            app, ["evaluate", "bicubic", "--data-root", str(root), "--sets", "Set5", "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        scored[root.name] = (read_rows(out), result.output)
    flat, published = scored[shared_data.name], scored["root"]
    assert "matlab_bicubic" in flat[1] and "supplied" in published[1]
    assert flat[0][("Set5", "baby.png")] == published[0][("Set5", "baby.png")]
    assert flat[0][("Set5", "bird.png")]["psnr_rgb"] != published[0][("Set5", "bird.png")]["psnr_rgb"]


def test_checkpoint_is_evaluated_with_the_trainers_generator(tmp_path: Path, torch_home: Path) -> None:
    cfg = build_config({"preset": "smoke", "model.num_blocks": 1, "model.num_feat": 8})
    torch.manual_seed(0)
    ckpt = tmp_path / "last.pt"
    save_atomic({"g": build_generator(cfg).state_dict(), "config": cfg.to_dict()}, ckpt)
    out = tmp_path / "g.csv"
    result = runner.invoke(
        app, ["evaluate", str(ckpt), "--data-root", str(EMBEDDED), "--sets", "Set5", "--out", str(out), "--no-lpips"]
    )
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 5 and all(0 < float(r["psnr_y"]) < 40 and -1 < float(r["ssim_y"]) < 1 for r in rows.values())
    wrong = runner.invoke(
        app, ["evaluate", str(ckpt), "--data-root", str(EMBEDDED), "--sets", "Set5", "--upscale", "2"]
    )
    assert wrong.exit_code == 2 and "--upscale" in wrong.output


ROOT = ["--data-root", str(EMBEDDED)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nearest", *ROOT], "method='nearest': choose bicubic, a generator checkpoint file"),
        (["bicubic", *ROOT, "metrics.space=ycbcr"], "metrics.space='ycbcr' is not valid; choose one of y, rgb"),
        (["bicubic", *ROOT, "train.iters=5"], "train.iters= does not change how images are scored"),
        (["bicubic", *ROOT, "iter=5"], "iter= picks a kept generator of a checkpoint"),
        (["bicubic", "checkpoint=x.pt", *ROOT], "evaluate one source"),
        (["folder=.", *ROOT], "name the method whose images these are with method=NAME"),
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


def test_a_kept_snapshot_is_evaluated_by_iteration(tmp_path: Path, torch_home: Path) -> None:
    from trainer.checkpoint import SNAPSHOT, save_generator, snapshot_path

    cfg = build_config({"preset": "smoke", "model.num_blocks": 1, "model.num_feat": 8})
    run = tmp_path / "trial"
    for step, seed in ((5, 1), (10, 2)):
        torch.manual_seed(seed)
        save_generator(snapshot_path(run, step), cfg.to_dict(), SNAPSHOT, step, build_generator(cfg).state_dict())
    torch.manual_seed(2)
    save_atomic({"g": build_generator(cfg).state_dict(), "config": cfg.to_dict()}, run / "ckpt" / "last.pt")
    scored: dict[str, Any] = {}
    for args in (
        ["checkpoint=" + str(run), "iter=5"],
        ["checkpoint=" + str(run), "iter=10"],
        [str(run / "ckpt" / "last.pt")],
    ):
        out = tmp_path / f"{len(scored)}.csv"
        result = runner.invoke(app, ["evaluate", *args, *ROOT, "--sets", "Set5", "--out", str(out), "--no-lpips"])
        assert result.exit_code == 0, result.output
        scored[" ".join(args)] = read_rows(out)
    first, tenth, final = scored.values()
    assert tenth == final != first  # iteration 10 kept the final generator here; 5 another one
    wrong = runner.invoke(app, ["evaluate", f"checkpoint={run}", "iter=7", *ROOT, "--sets", "Set5"])
    assert (
        wrong.exit_code == 2
        and "iter=7: no generator kept at that iteration" in wrong.output
        and "kept: 5, 10" in wrong.output
    )


def test_a_folder_of_sr_images_is_scored_logged_and_refused_when_wrong(tmp_path: Path, torch_home: Path) -> None:
    from mlflow import MlflowClient

    from sweeper.analysis.runs import find_runs
    from trainer.data import val_pairs
    from trainer.images import write_image
    from trainer.imresize import imresize

    folder = tmp_path / "sr" / "Set5"
    for pair in val_pairs(EMBEDDED, "Set5", 4, "mod12"):  # bicubic's own output, saved losslessly: the same scores
        write_image(folder / pair.name, imresize(pair.lr, 4))
    ws = tmp_path / "ws"
    args = [
        "evaluate",
        f"folder={folder.parent}",
        "method=Copy",
        f"workspace={ws}",
        *ROOT,
        "--sets",
        "Set5",
        "--no-lpips",
    ]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "copy.csv")])
    assert result.exit_code == 0, result.output
    assert "baselines" in result.output
    bicubic = runner.invoke(
        app, ["evaluate", "bicubic", *ROOT, "--sets", "Set5", "--no-lpips", "--out", str(tmp_path / "bic.csv")]
    )
    assert bicubic.exit_code == 0 and read_rows(tmp_path / "copy.csv") == read_rows(tmp_path / "bic.csv")
    again = runner.invoke(app, args)  # a re-run replaces the method's run, never duplicates it
    assert again.exit_code == 0, again.output
    (run,) = find_runs(MlflowClient(f"sqlite:///{ws / 'mlflow.db'}"), "baseline", None, method="Copy")
    assert run.tags["sweeper.label"] == "Copy" and run.params["metrics.space"] == "rgb"
    assert run.value("Set5", "psnr") == run.value("Set5", "psnr_rgb") != run.value("Set5", "psnr_y")

    bird = (folder / "bird.png").read_bytes()
    (folder / "extra.png").write_bytes(bird)
    (folder / "bird.png").unlink()
    write_image(folder / "head.png", torch.zeros(3, 8, 8))
    for broken, message in (
        ("bird.png", "1 image(s) of Set5 missing (bird)"),
        ("extra.png", "match no HR image of Set5 (extra)"),
        (None, "head.png: (8, 8), but its HR is"),
    ):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output
        if broken == "bird.png":
            (folder / "bird.png").write_bytes(bird)
        elif broken == "extra.png":
            (folder / "extra.png").unlink()
