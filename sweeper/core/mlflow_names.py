"""The names of the MLflow layout (docs/ARCHITECTURE.md, "MLflow layout") that both its writer (`sweeper.search.tracking`)
and its readers (`sweeper.analysis`) need: experiment kinds, the baselines experiment, the trials view's tag, and the
commit a run is recorded with. Creating an experiment lives here too: the search creates a study's, the report the
baselines one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow import MlflowClient

from trainer.errors import UserError

KIND_TAG, TRAINING = "mlflow.experimentKind", "custom_model_development"  # the MLflow UI's experiment kinds
NOTE_TAG = "mlflow.note.content"  # the experiment description the MLflow UI shows and edits
BASELINES = "baselines"  # the experiment of reference methods (bicubic), kept out of the studies' experiments

# The MLflow UI (3.x) opens a view stored as the experiment tag `mlflow.sharedViewState.<key>` when its URL
# carries `?viewStateShareKey=<key>`. Ours lists every trial flat (a search filter turns off the collapsing of
# nested runs) with its grid parameters and final metrics as columns, best first by the selection metric.
VIEW_KEY = "sweeper"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "Trials (sweeper)"


def git_commit() -> str:
    """The checkout's commit (with `+dirty` when code has local changes; generated results/ do not count), or "unknown"."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def experiment(client: MlflowClient, name: str, artifacts_dir: Path, description: str | None = None) -> str:
    """The experiment of a study, created (with artifacts under the workspace) before any trial runs, and marked
    as model training so that the MLflow UI opens it on its runs rather than on its GenAI overview; `description`
    (the study file's) becomes the experiment's description in the UI."""
    found = client.get_experiment_by_name(name)
    if (
        found is not None
        and found.tags.get(KIND_TAG) == TRAINING
        and (description is None or found.tags.get(NOTE_TAG) == description)
    ):
        return found.experiment_id
    exp_id = (
        found.experiment_id
        if found
        else client.create_experiment(name, artifact_location=(artifacts_dir / name).resolve().as_uri())
    )
    client.set_experiment_tag(exp_id, KIND_TAG, TRAINING)
    if description is not None:
        client.set_experiment_tag(exp_id, NOTE_TAG, description)
    return exp_id


def baselines_experiment(client: MlflowClient, beside: str) -> str:
    """The experiment `baselines` (bicubic and other reference methods), its artifacts beside those of experiment `beside`."""
    beside_experiment = client.get_experiment_by_name(beside)
    if beside_experiment is None:
        raise UserError(f"no MLflow experiment {beside!r}: run study={beside} first")
    artifacts = Path(urlparse(beside_experiment.artifact_location).path).parent
    return experiment(client, BASELINES, artifacts)


def metric_tags(metrics: dict[str, Any] | None) -> dict[str, str]:
    """Tags saying how a run's images were scored (result.json's `metrics`): the space of `psnr`/`ssim`, the LPIPS
    network and version, the HR crop; none for results older than that record."""
    if not metrics:
        return {}
    return {
        "sweeper.metrics_space": str(metrics.get("space")),
        "sweeper.lpips_net": f"{metrics.get('lpips_net')} v{metrics.get('lpips_version')}",
        "sweeper.val_hr": str(metrics.get("val_hr", "mod4")),
    }
