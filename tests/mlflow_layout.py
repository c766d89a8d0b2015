"""Fill a real MLflow store with stage and trial runs in the documented layout (docs/ARCHITECTURE.md,
"MLflow layout"), for the tests of correlate, promote and report."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import yaml
from mlflow import MlflowClient
from PIL import Image

from trainer.config import build_config, format_mu


def store(root: Path) -> tuple[str, MlflowClient]:
    """A fresh SQLite tracking store in `root` (the workspace layout: root/mlflow.db, root/artifacts)."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def experiment(client: MlflowClient, name: str, root: Path) -> str:
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())


def log_trial(client: MlflowClient, exp: str, parent: str | None, study: str, stage: str, number: int, trial: dict, tags: dict | None = None) -> str:
    """One trial run. `trial`: arch, mu, beta, perceptual (default dp), final {set: {metric: value}},
    optional history {set: {metric: [(step, value)]}}, sample (an HxWx3 uint8 array), status."""
    mu = trial.get("mu", 0.5)
    cfg = build_config({"preset": "smoke", "arch": trial["arch"], "mu": mu, "beta": trial.get("beta", "beta1_3"),
                        "loss.perceptual": trial.get("perceptual", "dp"), "weights": "random"})
    mu_text = str(format_mu(cfg.mu))
    base_tags = {
        "sweeper.kind": "trial", "sweeper.study": study, "sweeper.stage": stage, "sweeper.trial_number": str(number),
        "sweeper.weights": "random", "sweeper.lpips": "imagenet", "sweeper.winner": "false",
    }
    if parent:
        base_tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, run_name=f"mu={mu_text},beta={cfg.beta}", tags={**base_tags, **(tags or {})})
    rid = run.info.run_id
    params = {"mu": mu_text, "beta": cfg.beta, "arch": cfg.arch, "preset": "smoke", "seed": "0", "upscale": "4",
              "perceptual": cfg.loss.perceptual, "variant": "paper"}
    for k, v in params.items():
        client.log_param(rid, k, v)
    for set_name, per_metric in trial.get("history", {}).items():
        for metric, points in per_metric.items():
            for step, value in points:
                client.log_metric(rid, f"{set_name}/{metric}", value, step=step)
    final = trial["final"]
    for set_name, per_metric in final.items():
        for metric, value in per_metric.items():
            client.log_metric(rid, f"{set_name}/{metric}", value, step=12)
    for metric in ("psnr", "ssim", "lpips"):
        client.log_metric(rid, f"mean/{metric}", float(np.mean([final[s][metric] for s in final])))
    client.log_text(rid, yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")
    if "sample" in trial:  # an older, darker crop too: the report must pick the latest step
        with tempfile.TemporaryDirectory() as tmp:
            for step, img in ((6, trial["sample"] // 2), (12, trial["sample"])):
                path = Path(tmp) / f"{step:07d}_Set5_baby.png"
                Image.fromarray(img).save(path)
                client.log_artifact(rid, str(path), "samples")
    client.set_terminated(rid, trial.get("status", "FINISHED"))
    return rid


def log_stage(client: MlflowClient, root: Path, study: str, stage: str, trials: list[dict], winner: int | None = None,
              select_by: str = "lpips", commit: str = "abc1234") -> tuple[str, list[str]]:
    """A stage parent run with its trial runs; `winner` = index of the winning trial (None: stage not finished)."""
    exp = experiment(client, study, root)
    tags = {"sweeper.kind": "stage", "sweeper.study": study, "sweeper.stage": stage, "sweeper.preset": "smoke",
            "sweeper.weights": "random", "sweeper.select_by": select_by, "sweeper.git_commit": commit}
    parent = client.create_run(exp, run_name=stage, tags=tags).info.run_id
    ids = [log_trial(client, exp, parent, study, stage, n, t) for n, t in enumerate(trials)]
    if winner is not None:
        client.set_tag(ids[winner], "sweeper.winner", "true")
        client.set_tag(parent, "sweeper.winner_run_id", ids[winner])
        client.log_param(parent, "winner.mu", str(format_mu(float(trials[winner].get("mu", 0.5)))))
        client.log_param(parent, "winner.beta", trials[winner].get("beta", "beta1_3"))
        client.set_terminated(parent)
    return parent, ids


def scores(psnr: float, ssim: float, lpips: float, sets=("Set5", "Set14")) -> dict:
    """Final metrics for each set, slightly offset per set so sets differ."""
    return {s: {"psnr": psnr - k, "ssim": ssim - 0.01 * k, "lpips": lpips + 0.01 * k} for k, s in enumerate(sets)}
