"""The training loop on the smoke preset with the embedded data and random-init extractors: the trial-folder
contract, the shared pre-training cache, exact resume, divergence handling and refusals."""

import csv
import json
import math
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer.checkpoint import load_checkpoint, load_generator
from trainer.config import build_config
from trainer.data import TrainBatches
from trainer.errors import UserError
from trainer.images import read_image
from trainer.train import (
    Diverged,
    check_finite,
    drop_records_after,
    pretrain_key,
    train,
)

SMOKE = {"preset": "smoke", "weights": "random", "train.from_scratch": False}  # these tests cover pre-training too


def smoke(**overrides):
    return build_config({**SMOKE, **overrides})


def pretrain_folders(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("pretrain-*") if p.is_dir())


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("runs") / "smoke"
    return run, train(smoke(), run, cache, progress=False)


def test_smoke_trial_fills_the_trial_folder(smoke_run):
    run, result = smoke_run
    cfg = smoke()
    assert result["status"] == "complete" and result["reason"] is None
    assert result["iters"] == cfg.train.iters == 12
    assert result["weights"] == {
        "extractors": "random",
        "lpips": "unavailable",
        "generator": "pre-trained: L1, 8 iterations",
    }  # no ImageNet files here
    assert set(result["final"]) == {"Set5"}
    final = result["final"]["Set5"]
    assert 15 < final["psnr"] < 60 and 0 < final["ssim"] <= 1 and final["lpips"] is None
    # Both spaces are kept; psnr/ssim are those of metrics.space (rgb by default), per image and as means.
    assert result["metrics"] == {
        "space": "rgb",
        "lpips_net": "alex",
        "lpips_version": "0.1",
        "val_hr": "mod12",
        "val_lr": {"Set5": "matlab_bicubic"},
    }
    assert (
        (final["psnr"], final["ssim"]) == (final["psnr_rgb"], final["ssim_rgb"]) != (final["psnr_y"], final["ssim_y"])
    )
    images = result["per_image"]["Set5"]
    assert list(images) == ["baby.png", "bird.png"]  # val_max_images=2, by file name
    for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert final[key] == pytest.approx(sum(v[key] for v in images.values()) / 2, rel=1e-12)
    assert all(v["lpips"] is None for v in images.values())
    with open(run / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["set"], r["image"]) for r in rows] == [("Set5", "baby.png"), ("Set5", "bird.png")]
    assert float(rows[1]["ssim_y"]) == images["bird.png"]["ssim_y"] and rows[1]["lpips"] == ""
    assert result["duration_s"] > 0
    assert json.loads((run / "result.json").read_text()) == result

    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    assert json.loads((run / "progress.json").read_text())["stage"] == "gan"
    assert json.loads((run / "progress.json").read_text())["step"] == 12

    records = jsonl(run / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(2, 13, 2))  # log_every=2
    assert {"l_g", "l_pix", "l_adv", "l_percep", "l_vgg", "l_res", "dp_weight", "l_d", "lr"} <= records[0].keys()
    assert all(math.isfinite(r["l_g"]) and r["dp_weight"] > 0 for r in records if r["kind"] == "train")
    vals = [r for r in records if r["kind"] == "val"]
    assert [(r["step"], r["set"]) for r in vals] == [(s, "Set5") for s in range(2, 13, 2)]  # val_every=2
    assert vals[-1]["psnr"] == final["psnr"]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[4] == cfg.train.lr and lrs[6] == lrs[12] == cfg.train.lr * cfg.train.lr_gamma  # milestone 6

    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert len(samples) == 12 and samples[0].startswith("0000002_Set5_")
    assert read_image(run / "samples" / samples[0]).shape == (3, 60, 60)  # val_crop=64, val_hr=mod12: the whole image


def test_cost_ledger_has_one_line_per_call(smoke_run, cache):
    run, result = smoke_run
    (line,) = jsonl(run / "ledger.jsonl")
    assert (line["from_step"], line["to_step"], line["iters"]) == (0, 12, 12)
    assert (line["device"], line["pretrain"], line["pretrain_iters"]) == ("cpu", "trained", 8)
    assert 0 < line["pretrain_s"] < line["wall_s"] <= result["duration_s"] + 60
    assert line["device_s"] == pytest.approx(line["wall_s"] * torch.get_num_threads(), rel=1e-3)
    train(smoke(), run, cache, progress=False)  # already complete: nothing trained, nothing recorded
    assert len(jsonl(run / "ledger.jsonl")) == 1


def test_a_stopped_run_keeps_everything_a_finished_one_its_generator(tmp_path, cache):
    cfg = smoke(**{"train.iters": 4, "train.ckpt_every": 2})
    assert train(cfg, tmp_path / "run", cache, progress=False, stop_after=2)["status"] == "stopped"
    full = load_checkpoint(tmp_path / "run" / "ckpt" / "last.pt")
    assert {"g", "d", "opt_g", "opt_d", "sched_g", "sched_d", "data", "rng", "config"} <= full.keys()
    size = (tmp_path / "run" / "ckpt" / "last.pt").stat().st_size
    result = train(cfg, tmp_path / "run", cache, progress=False)
    lean = load_checkpoint(Path(result["checkpoint"]))
    assert lean.keys() == {"config", "stage", "step", "g"} and lean["step"] == 4
    assert (tmp_path / "run" / "ckpt" / "last.pt").stat().st_size < size / 5
    (tmp_path / "run" / "result.json").unlink()  # e.g. renamed by the sweeper for a retry: no silent retraining
    with pytest.raises(UserError, match="kept only its generator weights"):
        train(cfg, tmp_path / "run", cache, progress=False)


def test_checkpoint_is_safe_to_load_and_holds_the_generator(smoke_run):
    run, result = smoke_run
    assert result["checkpoint"] == str(run / "ckpt" / "last.pt")
    ckpt = load_checkpoint(Path(result["checkpoint"]))  # weights_only=True
    assert ckpt["step"] == 12 and ckpt["stage"] == "finished"
    g = load_generator(result["checkpoint"])
    assert not g.training
    for name, tensor in g.state_dict().items():
        assert torch.equal(tensor, ckpt["g"][name])


def test_finished_run_is_returned_not_retrained(smoke_run, cache):
    run, result = smoke_run
    before = (run / "ckpt" / "last.pt").stat().st_mtime_ns
    assert train(smoke(), run, cache, progress=False) == result
    assert (run / "ckpt" / "last.pt").stat().st_mtime_ns == before


def test_pretraining_is_cached_by_what_it_depends_on(smoke_run, cache, tmp_path):
    (folder,) = pretrain_folders(cache)
    assert folder.is_dir() and load_checkpoint(folder / "last.pt")["step"] == smoke().train.pretrain_iters
    assert [r["step"] for r in jsonl(folder / "metrics.jsonl")] == [2, 4, 6, 8]
    data_id = TrainBatches(smoke(), cache).data_id  # the prepared pixels' content hash, not the data path
    key = pretrain_key(smoke(), data_id)
    assert folder.name.endswith(key)
    unrelated = {"train.iters": 99, "loss.variant": "published_code", "data.num_workers": 2}
    assert key == pretrain_key(smoke(mu=math.inf, beta="beta1_3", **unrelated), data_id)
    for other in ({"seed": 1}, {"arch": "esrgan"}, {"data.hr_patch": 64}, {"train.pretrain_iters": 9}, {"upscale": 2}):
        assert pretrain_key(smoke(**other), data_id) != key, other
    assert pretrain_key(smoke(), "other-pixels") != key

    mtime = (folder / "last.pt").stat().st_mtime_ns
    other = train(smoke(mu=math.inf, **{"train.iters": 2}), tmp_path / "vgg", cache, progress=False)
    assert other["status"] == "complete"
    assert pretrain_folders(cache) == [folder] and (folder / "last.pt").stat().st_mtime_ns == mtime
    (line,) = jsonl(tmp_path / "vgg" / "ledger.jsonl")
    assert (line["pretrain"], line["pretrain_iters"], line["pretrain_s"], line["iters"]) == ("reused", 0, 0, 2)
    logged = [r for r in jsonl(tmp_path / "vgg" / "metrics.jsonl") if r["kind"] == "train"]
    assert logged and all(r["dp_weight"] == 0 and r["l_res"] == 0 for r in logged)  # mu=inf: VGG loss only


def _train_in_process(run_dir: str, cache_dir: str) -> str:
    return train(smoke(**{"train.iters": 2}), Path(run_dir), Path(cache_dir), progress=False)["status"]


def test_concurrent_trials_pretrain_once(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        jobs = [(str(tmp_path / f"run{i}"), str(tmp_path / "cache")) for i in range(2)]
        statuses = pool.starmap(_train_in_process, jobs)
    assert statuses == ["complete", "complete"]
    (folder,) = pretrain_folders(tmp_path / "cache")
    assert [r["step"] for r in jsonl(folder / "metrics.jsonl")] == [2, 4, 6, 8]  # one process trained it


def test_resume_is_exact(tmp_path, cache):
    cfg = smoke(
        **{
            "train.iters": 20,
            "train.milestones": [5, 15],
            "train.ema": 0.9,
            "train.val_every": 7,
            "train.ckpt_every": 10,
            "train.keep_every": 5,
        }
    )
    straight = train(cfg, tmp_path / "straight", cache, progress=False)
    first = train(cfg, tmp_path / "resumed", cache, progress=False, stop_after=10)
    assert first["status"] == "stopped" and first["iters"] == 10 and not (tmp_path / "resumed" / "result.json").exists()
    resumed = train(cfg, tmp_path / "resumed", cache, progress=False)
    assert resumed["status"] == straight["status"] == "complete" and resumed["iters"] == 20
    a, b = (load_checkpoint(tmp_path / name / "ckpt" / "last.pt") for name in ("straight", "resumed"))
    for name, tensor in a["g"].items():  # the kept (EMA) generator; the losses of D and G are compared below
        assert torch.equal(tensor, b["g"][name]), name
    assert resumed["final"] == straight["final"]
    assert straight["snapshots"] == resumed["snapshots"] == [5, 10, 15, 20] and first["snapshots"] == [
        5,
        10,
    ]  # train.keep_every=5
    for step in (5, 15, 20):  # generator-only, the EMA weights, the same on both paths; the last is the final generator
        kept = [load_checkpoint(tmp_path / name / "ckpt" / f"g_{step:07d}.pt") for name in ("straight", "resumed")]
        assert kept[0]["step"] == step and kept[0].keys() == {"config", "stage", "step", "g"}
        assert all(torch.equal(v, kept[1]["g"][k]) for k, v in kept[0]["g"].items())
        assert all(torch.equal(v, a["g"][k]) for k, v in kept[0]["g"].items()) == (step == 20)
    rung = [r for r in jsonl(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "val" and r["step"] == 10]
    rung_file = json.loads(
        (tmp_path / "resumed" / "rungs" / "10.json").read_text()
    )  # stop_after = a rung: validated there
    assert rung_file == first and rung  # shaped like result.json, status "stopped"
    assert rung_file["final"] == {
        r["set"]: {m: v for m, v in r.items() if m not in ("step", "kind", "set")} for r in rung
    }
    assert rung_file["per_image"].keys() == {"Set5"} and len(rung_file["per_image"]["Set5"]) == 2
    assert resumed["per_image"] == straight["per_image"] != rung_file["per_image"]
    others = [r for r in jsonl(tmp_path / "resumed" / "metrics.jsonl") if r not in rung]
    clockless = [[{k: v for k, v in r.items() if k not in ("step_s", "time")} for r in rs]
                 for rs in (others, jsonl(tmp_path / "straight" / "metrics.jsonl"))]  # fmt: skip
    assert clockless[0] == clockless[1]  # every iteration trained and logged once, the same values (not the clock)
    segments = [(r["from_step"], r["to_step"], r["pretrain"]) for r in jsonl(tmp_path / "resumed" / "ledger.jsonl")]
    assert segments == [(0, 10, "reused"), (10, 20, "none")]  # the resume neither repeats nor pre-trains


def test_resume_with_other_settings_is_refused(tmp_path, cache):
    cfg = smoke(**{"train.iters": 4, "train.from_scratch": True})
    assert train(cfg, tmp_path / "run", cache, progress=False, stop_after=2)["status"] == "stopped"
    with pytest.raises(UserError, match=r"mu: 0\.5 -> 2\.0"):
        train(smoke(mu=2.0, **{"train.iters": 4, "train.from_scratch": True}), tmp_path / "run", cache, progress=False)


def test_divergence_fails_the_run_before_training_on_nan(tmp_path, cache):
    cfg = smoke(**{"train.from_scratch": True, "train.lr": 1e30, "train.ckpt_every": 1})
    result = train(cfg, tmp_path / "run", cache, progress=False)
    assert result["status"] == "failed"
    assert "GAN training diverged at iteration" in result["reason"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"
    ckpt = load_checkpoint(tmp_path / "run" / "ckpt" / "last.pt")
    assert ckpt["step"] == result["iters"] < cfg.train.iters
    assert all(torch.isfinite(t).all() for t in ckpt["g"].values())  # the last weights written are pre-NaN


def test_diverging_pretraining_fails_the_run(tmp_path):
    result = train(smoke(**{"train.pretrain_lr": 1e30}), tmp_path / "run", tmp_path / "cache", progress=False)
    assert result["status"] == "failed" and "pre-training diverged" in result["reason"]


def test_check_finite_names_the_bad_loss():
    assert check_finite({"a": torch.tensor(1.5)}, "x", 1) == {"a": 1.5}
    with pytest.raises(Diverged, match=r"at iteration 7: b=nan"):
        check_finite({"a": torch.tensor(1.0), "b": torch.tensor(float("nan"))}, "GAN training", 7)


def test_drop_records_after_resume_point(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [json.dumps({"step": s, "kind": "train"}) for s in (2, 4, 6)]
    log.write_text("\n".join(records) + '\n{"step": 8, "ki')  # the last line was cut short by a crash
    drop_records_after(log, 4)
    assert [r["step"] for r in jsonl(log)] == [2, 4]


def test_missing_extractor_weights_refuse_to_start(tmp_path, cache):
    cfg = build_config({"preset": "smoke", "weights": str(tmp_path)})  # an empty folder: no ImageNet files
    with pytest.raises(UserError, match="not found"):
        train(cfg, tmp_path / "run", cache, progress=False)
    assert not (tmp_path / "run" / "result.json").exists() and not (tmp_path / "run" / "ckpt").exists()


def test_esrgan_published_code_variant_trains(tmp_path, cache):
    cfg = smoke(
        arch="esrgan",
        **{
            "model.num_blocks": 1,
            "loss.variant": "published_code",
            "train.from_scratch": True,
            "train.iters": 2,
            "train.val_every": 2,
        },
    )
    result = train(cfg, tmp_path / "run", cache, progress=False)
    assert result["status"] == "complete" and math.isfinite(result["final"]["Set5"]["psnr"])
    assert not list(cache.glob("pretrain-esrgan*"))  # from_scratch skips pre-training


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_user_error(tmp_path, cache):
    with pytest.raises(UserError, match="train.device=cuda"):
        train(smoke(**{"train.device": "cuda"}), tmp_path / "run", cache, progress=False)


def test_sigterm_checkpoints_and_the_run_resumes(tmp_path, cache):
    """After `stop_on_sigterm` (the worker's), SIGTERM ends training at the next iteration with a checkpoint
    and result.json "interrupted" (the sweeper resumes it without spending a retry); every iteration once."""
    import signal

    from trainer import train as train_mod

    cfg = smoke(**{"train.iters": 4, "train.from_scratch": True, "train.ckpt_every": 10, "train.log_every": 1})
    previous = signal.getsignal(signal.SIGTERM)
    try:
        train_mod.stop_on_sigterm()
        signal.raise_signal(signal.SIGTERM)
        first = train(cfg, tmp_path / "run", cache, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
        train_mod._sigterm["received"] = False
    assert first["status"] == "interrupted" and first["iters"] == 1
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "run" / "ckpt" / "last.pt")["step"] == 1
    again = train(cfg, tmp_path / "run", cache, progress=False)
    assert again["status"] == "complete" and again["iters"] == 4
    assert [r["step"] for r in jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3, 4]


def test_every_log_every_steps_a_line_on_stdout_has_the_step_the_losses_and_the_step_time(tmp_path, cache, capsys):
    """What `sweeper logs` shows of a trial (its stdout.log): one line per `train.log_every` steps."""
    cfg = smoke(**{"train.iters": 4, "train.from_scratch": True, "train.ckpt_every": 10, "train.log_every": 2})
    train(cfg, tmp_path / "run", cache, progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gan ")]
    assert [line.split(":")[0] for line in lines] == ["gan 2/4", "gan 4/4"]
    assert all(" l_g " in line and " l_d " in line and line.endswith(" s/step") for line in lines), lines
    records = [r for r in jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]  # MLflow's live curves
    assert [f"{r['step_s']:.3g} s/step" for r in records] == [line.rsplit(", ", 1)[1] for line in lines]
    assert all(0 < time.time() - r["time"] < 600 for r in records)  # when each line was written
