"""Fill a real MLflow store with stage and trial runs in the documented layout (docs/ARCHITECTURE.md,
"MLflow layout") through the sweeper's own writer, for the tests of correlate, promote and report."""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from PIL import Image

from sweeper.core.mlflow_names import experiment
from sweeper.search import tracking
from trainer.config import build_config, format_mu

# The four settings that the proxy and the target share in the correlation study (Table 4's rows)
SETTINGS: list[dict[str, Any]] = [
    {"mu": math.inf},
    {"mu": 1, "beta": "beta1_3"},
    {"mu": 10, "beta": "beta1_3"},
    {"mu": 0.5, "beta": "beta3_6"},
]
_TEMPLATE: list[Path] = []  # an empty, migrated store, made once per test process: migrations take seconds


def store(root: Path) -> tuple[str, MlflowClient]:
    """A fresh SQLite tracking store in `root` (the workspace layout: root/mlflow.db, root/artifacts)."""
    if not _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _TEMPLATE.append(folder / "mlflow.db")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[0], root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def log_stage(
    client: MlflowClient,
    root: Path,
    study: str,
    stage: str,
    trials: list[dict],
    winner: int | None = None,
    select_by: str = "lpips",
) -> tuple[str, list[str]]:
    """A stage as `sweeper run` logs it, through sweeper.tracking: trial folders written as the trainer writes
    them, logged under the stage's parent run; `winner` = index of the winning trial (None: stage unfinished).

    `trial`: arch, mu, beta, perceptual (default dp), final {set: {metric: value}}, optional
    history {set: {metric: [(step, value)]}}, sample (an HxWx3 uint8 array, saved at steps 6 and 12) and
    per_image {set: {image: {psnr_rgb, ssim_rgb, lpips, ...}}}, seed (a repeat: seed + r); or `trained`: the
    config dict of a real training already run in the trial's folder (`root/trials/<study>/<stage>/<n>`).
    """
    exp = experiment(client, study, root / "artifacts")
    tags = {
        "sweeper.study": study,
        "sweeper.preset": "smoke",
        "sweeper.select_by": select_by,
        "sweeper.weights": "random",
        "sweeper.git_commit": "abc1234",
        "sweeper.stage": stage,
    }
    parent = tracking.stage_run(client, exp, study, stage, tags)
    ids = []
    for n, trial in enumerate(trials):
        folder = root / "trials" / study / stage / str(n)
        config = trial["trained"] if "trained" in trial else write_trial(folder, trial)
        ids.append(tracking.log_trial(client, exp, parent, folder, config, {**tags, "sweeper.trial_number": str(n)}))
    if winner is not None:
        summary = {
            "mu": str(format_mu(float(trials[winner].get("mu", 0.5)))),
            "beta": trials[winner].get("beta", "beta1_3"),
        }
        tracking.finish_stage(client, study, stage, parent, ids[winner], summary)
    return parent, ids


def write_trial(folder: Path, trial: dict) -> dict:
    """A finished trial folder (docs/ARCHITECTURE.md, "Trial folder"); returns its config dict."""
    cfg = build_config(
        {
            "preset": "smoke",
            "arch": trial["arch"],
            "mu": trial.get("mu", 0.5),
            "beta": trial.get("beta", "beta1_3"),
            "loss.perceptual": trial.get("perceptual", "dp"),
            "weights": "random",
            "seed": trial.get("seed", 0),
        }
    )
    config = cfg.to_dict()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = [
        {"step": step, "kind": "val", "set": s, metric: v}
        for s, per in trial.get("history", {}).items()
        for metric, points in per.items()
        for step, v in points
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = {
        "status": "complete",
        "reason": None,
        "final": trial["final"],
        "weights": {"extractors": "random", "lpips": "imagenet"},
        "iters": 12,
        "duration_s": 1.0,
        "checkpoint": None,
    }
    if "per_image" in trial:  # {set: {image: {metric: value}}} as the trainer keeps them
        result["per_image"] = trial["per_image"]
    (folder / "result.json").write_text(json.dumps(result))
    if "sample" in trial:  # an older, darker crop too: the report must pick the latest step
        (folder / "samples").mkdir(exist_ok=True)
        for step, img in ((6, trial["sample"] // 2), (12, trial["sample"])):
            Image.fromarray(img).save(folder / "samples" / f"{step:07d}_Set5_baby.png")
    return config


def scores(psnr: float, ssim: float, lpips: float, sets=("Set5", "Set14")) -> dict:
    """Final metrics for each set, slightly offset per set so sets differ."""
    return {s: {"psnr": psnr - k, "ssim": ssim - 0.01 * k, "lpips": lpips + 0.01 * k} for k, s in enumerate(sets)}
