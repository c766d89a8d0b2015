"""MLflow logging of trials and stages, in the layout of docs/ARCHITECTURE.md ("MLflow layout").

The orchestrator is the only writer. A trial is logged in one go when it ends, from its folder
(config.yaml, metrics.jsonl, result.json, samples/), never from the training loop. Logging is idempotent:
a trial's run is found by its tags, and a run left half-logged by a crash is deleted and logged again.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sweeper.crashpoints import crash_point
from sweeper.studies import label

# MLflow announces creating and migrating its SQLite tables at INFO level on every new store; keep the
# console to what the user asked for.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

BATCH = 1000  # MLflow's limit of metrics per log_batch call
METRICS = ("psnr", "ssim", "lpips")
PARAM_KEYS = ("beta", "arch", "preset", "seed", "upscale")


def git_commit() -> str:
    """The checkout's commit (with `+dirty` when code has local changes; generated results/ do not count), or "unknown"."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def experiment(client: MlflowClient, name: str, artifacts_dir: Path) -> str:
    """The experiment of a study, created (with artifacts under the workspace) before any trial runs."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=(artifacts_dir / name).resolve().as_uri())


def _find(client: MlflowClient, experiment_id: str, tags: dict[str, str], max_results: int = 10) -> list[Any]:
    clause = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment_id], filter_string=clause, max_results=max_results)


def stage_run(client: MlflowClient, experiment_id: str, study: str, stage: str, tags: dict[str, str]) -> str:
    """The parent run of a stage: found by its tags (and set RUNNING again: the stage resumes), or created."""
    key = {"sweeper.kind": "stage", "sweeper.study": study, "sweeper.stage": stage}
    runs = _find(client, experiment_id, key)
    if runs:
        if runs[0].info.status != "RUNNING":
            client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    return client.create_run(experiment_id, run_name=stage, tags={**key, **tags}).info.run_id


def end_stage_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End a stage run that stops without a winner: FAILED (an error) or KILLED (Ctrl-C, `sweeper cancel`)."""
    client.set_terminated(run_id, status)


def kill_stage_runs(client: MlflowClient, study: str) -> None:
    """`sweeper cancel`: every RUNNING stage run of the study ends KILLED (a re-run sets it RUNNING again)."""
    found = client.get_experiment_by_name(study)
    for run in _find(client, found.experiment_id, {"sweeper.kind": "stage", "sweeper.study": study}, 1000) if found else []:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def trial_run_name(config: dict[str, Any]) -> str:
    return f"mu={label(config['mu'])},beta={config['beta']}"


def read_metrics(trial_dir: Path) -> dict[tuple[str, int], float]:
    """(metric key, step) -> value from metrics.jsonl: `train/<loss>` and `<Set>/<metric>`."""
    out: dict[tuple[str, int], float] = {}
    path = trial_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill: the rest of the file is still good
        step, kind = int(row.get("step", 0)), row.get("kind")
        if kind == "train":
            out.update({(f"train/{k}", step): float(v) for k, v in row.items() if k not in ("step", "kind") and isinstance(v, (int, float))})
        elif kind == "val":
            out.update({(f"{row['set']}/{m}", step): float(row[m]) for m in METRICS if isinstance(row.get(m), (int, float))})
    return out


def final_means(result: dict[str, Any]) -> dict[str, float]:
    """`mean/<metric>` over the validation sets of result.json (a metric missing on any set is left out)."""
    sets = list(result.get("final", {}).values())
    out = {}
    for m in METRICS:
        values = [s.get(m) for s in sets]
        if sets and all(isinstance(v, (int, float)) and not math.isnan(v) for v in values):
            out[f"mean/{m}"] = sum(values) / len(values)
    return out


def log_trial(
    client: MlflowClient, experiment_id: str, parent_id: str | None, trial_dir: Path, config: dict[str, Any], tags: dict[str, str]
) -> str:
    """Log a finished trial's folder as a nested run of `parent_id` (None: a top-level run); return its run id (existing one if logged)."""
    key = {"sweeper.kind": "trial", "sweeper.study": tags["sweeper.study"], "sweeper.stage": tags["sweeper.stage"], "sweeper.trial_number": tags["sweeper.trial_number"]}
    for run in _find(client, experiment_id, key):
        if run.info.status == "FINISHED":
            return run.info.run_id
        client.delete_run(run.info.run_id)  # half-logged before a crash: log it again from the folder
    result = json.loads((trial_dir / "result.json").read_text())
    weights = result.get("weights", {})
    all_tags = {
        **tags, **key, "sweeper.winner": "false", **({MLFLOW_PARENT_RUN_ID: parent_id} if parent_id else {}),
        "sweeper.weights": str(weights.get("extractors", "unknown")), "sweeper.lpips": str(weights.get("lpips", "unknown")),
    }  # fmt: skip
    run_id = client.create_run(experiment_id, run_name=trial_run_name(config), tags=all_tags).info.run_id
    crash_point("mlflow_run_created")
    params = {"mu": label(config["mu"])} | {k: config[k] for k in PARAM_KEYS}
    params |= {"perceptual": config["loss"]["perceptual"], "variant": config["loss"]["variant"]}
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for (k, step), v in read_metrics(trial_dir).items()]
    steps = int(result.get("iters", 0))
    for set_name, values in result.get("final", {}).items():  # the final values are the latest, whatever was logged
        metrics += [Metric(f"{set_name}/{m}", float(values[m]), now, steps) for m in METRICS if isinstance(values.get(m), (int, float))]
    metrics += [Metric(k, v, now, steps) for k, v in final_means(result).items()]
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for i in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH])
    client.log_artifact(run_id, str(trial_dir / "config.yaml"))
    client.log_artifact(run_id, str(trial_dir / "result.json"))
    if (trial_dir / "samples").is_dir():
        client.log_artifacts(run_id, str(trial_dir / "samples"), "samples")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def finish_stage(client: MlflowClient, study: str, stage: str, parent_id: str, winner_id: str, winner: dict[str, str]) -> None:
    """Record the winner (idempotent, and re-computable: a re-run may change it), then log the stage's result
    table and plot on the parent and end it FINISHED.

    The winner is kept in tags (`sweeper.winner_run_id`, `winner.mu`, `winner.beta` on the stage run), which,
    unlike params, may change; exactly one trial run of the stage has `sweeper.winner=true`.
    """
    from sweeper import figures, report, tables

    experiment_id = client.get_run(parent_id).info.experiment_id
    for run in _find(client, experiment_id, {"sweeper.kind": "trial", "sweeper.study": study, "sweeper.stage": stage}, 50000):
        if run.info.run_id != winner_id and run.data.tags.get("sweeper.winner") != "false":
            client.set_tag(run.info.run_id, "sweeper.winner", "false")
    client.set_tag(winner_id, "sweeper.winner", "true")
    client.set_tag(parent_id, "sweeper.winner_run_id", winner_id)
    for name in ("mu", "beta"):
        client.set_tag(parent_id, f"winner.{name}", winner[name])
    for table, rows in report.sweep_tables(report.load_study(client, study)):
        if {r.stage for r in rows} != {stage}:
            continue
        client.log_text(parent_id, tables.to_markdown(table), f"results/{table.key}.md")
        client.log_text(parent_id, tables.to_csv(table), f"results/{table.key}.csv")
        sets = report.ordered_sets(rows)
        plot = figures.metrics_vs_mu if table.key.startswith("table1") else figures.metrics_per_beta
        if not table.key.startswith("table6"):
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / f"{table.key}.png"
                png.write_bytes(plot(rows, sets, table.title))
                client.log_artifact(parent_id, str(png), "results")
    client.set_terminated(parent_id, "FINISHED")


def serve_ui(tokens: list[str], port: int) -> None:
    """`sweeper ui`: run `mlflow ui` on the workspace's tracking store (its artifacts are served from there too)."""
    import sys

    from sweeper.overrides import parse
    from sweeper.workspace import Workspace
    from trainer.errors import UserError

    opts = parse(tokens, allow_config=False)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    if opts.tracking_uri is None and not (ws.root / "mlflow.db").exists():
        raise UserError(f"no MLflow store in workspace {ws.root}; run a study first or pass workspace= / tracking_uri=")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", ws.tracking_uri, "--port", str(port)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
