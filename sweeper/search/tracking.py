"""MLflow logging of trials and stages, in the layout of docs/ARCHITECTURE.md ("MLflow layout").

The orchestrator is the only writer, from the trial folder, never from the training loop. A trial's run is
found by its key (study, stage, trial folder: every attempt at a point is one run) or created: while the
trial trains, its training-log lines (metrics.jsonl, every `train.log_every` steps) are forwarded to it as
step metrics (`forward`: live curves); when it ends, `log_trial` forwards the rest and completes the same run
from the folder (config.yaml, metrics.jsonl, result.json, samples/). Logging is idempotent: `forward` commits
whole steps per batch and starts after the last step the run holds, and the end's metrics carry the result
file's time, so a second logging after a crash writes rows MLflow already has (it keeps one of each).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sweeper.analysis.tables import DECIMALS
from sweeper.core.crashpoints import crash_point
from sweeper.core.mlflow_names import VIEW_NAME, VIEW_TAG, metric_tags
from sweeper.core.selection import METRICS
from sweeper.core.studies import label
from trainer.config import flatten
from trainer.scores import SCORES

# MLflow announces creating and migrating its SQLite tables at INFO level on every new store; keep the
# console to what the user asked for.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

BATCH = 1000  # MLflow's limit of metrics per log_batch call
ROUNDED = "rounded/"  # `rounded/mean/psnr`: the mean at the tables' decimals, for the UI's columns (full values stay in `mean/*`)
PARAM_KEYS = ("beta", "arch", "preset", "seed", "upscale")
RECIPE_PARAMS = (
    "loss.gan",
    "loss.ragan_detach",
    "model.skip",
    "model.init",
    "model.init_from",
    "metrics.space",
    "metrics.lpips_net",
    "metrics.lpips_version",
    "data.val_hr",
    "train.from_scratch",
)  # docs/RECIPE.md
FINAL_METRICS = (*METRICS, *SCORES)  # psnr/ssim (metrics.space's), lpips, and PSNR/SSIM in both spaces
SPEED_PARAMS = ("train.amp", "train.channels_last")  # how a GPU computed it (benchmarks/gpu.py measures the choices)


def _find(client: MlflowClient, experiment_id: str, tags: dict[str, str], max_results: int = 10) -> list[Any]:
    clause = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment_id], filter_string=clause, max_results=max_results)


def stage_run(client: MlflowClient, experiment_id: str, study: str, stage: str, tags: dict[str, str]) -> str:
    """The parent run of a stage (named `<study> · <stage>`): found by its tags (and set RUNNING again: the stage
    resumes), or created. Also (re)writes the experiment's ready-made UI view of the trials (`ui_view`), ranked
    by the stage's selection metric."""
    key = {"sweeper.kind": "stage", "sweeper.study": study, "sweeper.stage": stage}
    client.set_experiment_tag(experiment_id, VIEW_TAG, ui_view(tags.get("sweeper.select_by", "psnr")))
    runs = _find(client, experiment_id, key)
    if runs:
        if runs[0].info.status != "RUNNING":
            client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    return client.create_run(experiment_id, run_name=f"{study} · {stage}", tags={**key, **tags}).info.run_id


def ui_view(select_by: str) -> str:
    """The experiment view of the trials as the MLflow UI stores a saved view: an envelope (name, times) around
    the JSON of its search facets and UI state. Saved so, it is also listed in the UI's "Views" menu."""
    metrics = [select_by] + [m for m in METRICS if m != select_by]
    columns = [f"params.`{p}`" for p in ("mu", "beta", "perceptual")] + [
        f"metrics.`{ROUNDED}mean/{m}`" for m in metrics
    ]
    columns += [f"metrics.`{ROUNDED}point/mean/{select_by}`", f"metrics.`point/half_width/{select_by}`",
                "metrics.`point/repeats`"]  # fmt: skip
    columns += [f"tags.`{t}`" for t in ("sweeper.point_verdict", "sweeper.stage", "sweeper.winner")]
    state = {
        "searchFilter": "tags.`sweeper.kind` = 'trial'", "orderByKey": f"metrics.`mean/{select_by}`",
        "orderByAsc": select_by == "lpips", "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL",
    }  # fmt: skip
    return json.dumps({"name": VIEW_NAME, "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)})


def end_stage_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End a stage run that stops without a winner: FAILED (an error) or KILLED (Ctrl-C, `sweeper cancel`)."""
    client.set_terminated(run_id, status)


def kill_stage_runs(client: MlflowClient, study: str) -> None:
    """`sweeper cancel`: every RUNNING stage run of the study, and every live trial run, ends KILLED (a re-run sets
    them RUNNING again)."""
    found = client.get_experiment_by_name(study)
    for run in _find(client, found.experiment_id, {"sweeper.study": study}, 50000) if found else []:
        if run.info.status == "RUNNING" and run.data.tags.get("sweeper.kind") in ("stage", "trial"):
            client.set_terminated(run.info.run_id, "KILLED")


def trial_run_name(config: dict[str, Any]) -> str:
    """A trial's setting as a reader compares them: `mu=0.5 beta1_3`, with the loss and arch when not the defaults."""
    parts = [f"mu={label(config['mu'])}", str(config["beta"])]
    if config["loss"]["perceptual"] != "dp":
        parts.append(f"loss={config['loss']['perceptual']}")
    if config["arch"] != "srgan":
        parts.append(str(config["arch"]))
    return " ".join(parts)


def run_times(result_path: Path, result: dict[str, Any]) -> tuple[int, int]:
    """(start, end) of a finished trial in ms since the epoch: its result file's mtime, less the training time."""
    end = result_path.stat().st_mtime
    return int((end - float(result.get("duration_s") or 0.0)) * 1000), int(end * 1000)


def log_records(trial_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records, in the order written (a line cut short by a kill is skipped: the rest is still good)."""
    path = trial_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                out.append(row)
    return out


def train_metrics(records: list[dict[str, Any]], after: int, stamp_ms: int) -> list[Metric]:
    """`train/<name>` (losses, lr, step_s) of the training-log lines after step `after`, by step, each at the
    wall time it was written (`stamp_ms` for a line without one)."""
    out = []
    for row in sorted((r for r in records if r.get("kind") == "train" and r["step"] > after), key=lambda r: r["step"]):
        stamp = int(row["time"] * 1000) if isinstance(row.get("time"), (int, float)) else stamp_ms
        out += [Metric(f"train/{k}", float(v), stamp, row["step"]) for k, v in row.items()
                if k not in ("step", "kind", "time") and isinstance(v, (int, float))]  # fmt: skip
    return out


def val_metrics(records: list[dict[str, Any]], stamp_ms: int) -> list[Metric]:
    """`<Set>/<metric>` of every validation line (the latest line of a set and step wins)."""
    out = {
        (f"{row['set']}/{m}", row["step"]): float(row[m])
        for row in records
        if row.get("kind") == "val"
        for m in FINAL_METRICS
        if isinstance(row.get(m), (int, float))
    }
    return [Metric(k, v, stamp_ms, step) for (k, step), v in out.items()]


def logged_step(client: MlflowClient, run_id: str, records: list[dict[str, Any]]) -> int:
    """The last step whose training-log line the run holds (0: none). `forward` commits whole steps per batch,
    so the history of one name that every line has (the first line's first) tells it."""
    first = next((r for r in records if r.get("kind") == "train"), None)
    names = [k for k, v in (first or {}).items() if k not in ("step", "kind", "time") and isinstance(v, (int, float))]
    if not names:
        return 0
    return max((m.step for m in client.get_metric_history(run_id, f"train/{names[0]}")), default=0)


def forward(client: MlflowClient, run_id: str, records: list[dict[str, Any]], after: int, stamp_ms: int) -> int:
    """Log the training-log lines after step `after` to the run as step metrics, whole steps per `log_batch`
    (one commit each); returns the last step the run now holds."""
    batch: list[Metric] = []
    for _, group in itertools.groupby(train_metrics(records, after, stamp_ms), key=lambda m: m.step):
        metrics = list(group)
        if len(batch) + len(metrics) > BATCH:
            after, batch = _commit(client, run_id, batch, after), []
        batch += metrics
    return _commit(client, run_id, batch, after)


def _commit(client: MlflowClient, run_id: str, batch: list[Metric], after: int) -> int:
    if not batch:
        return after
    client.log_batch(run_id, metrics=batch)
    crash_point("live_forwarded")
    return batch[-1].step


def final_means(result: dict[str, Any]) -> dict[str, float]:
    """`mean/<metric>` over the validation sets of result.json (a metric missing on any set is left out)."""
    sets = list(result.get("final", {}).values())
    out = {}
    for m in METRICS:
        values = [s.get(m) for s in sets]
        if sets and all(isinstance(v, (int, float)) and not math.isnan(v) for v in values):
            out[f"mean/{m}"] = sum(values) / len(values)
    return out


def trial_key(trial_dir: Path, tags: dict[str, str]) -> dict[str, str]:
    """The tags that find a trial's run: its study, stage and folder (all attempts at a point train one folder)."""
    return {"sweeper.kind": "trial", "sweeper.study": tags["sweeper.study"], "sweeper.stage": tags["sweeper.stage"],
            "sweeper.folder": trial_dir.name}  # fmt: skip


def trial_run(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str | None,
    trial_dir: Path,
    config: dict[str, Any],
    tags: dict[str, str],
    start_ms: int,
) -> Run:
    """A trial's run, found by its key or created RUNNING (a nested run of `parent_id`; None: a top-level run)
    named by its setting and stage."""
    key = trial_key(trial_dir, tags)
    found = _find(client, experiment_id, key)
    if found:
        return found[0]
    parent = {MLFLOW_PARENT_RUN_ID: parent_id} if parent_id else {}
    name = f"{trial_run_name(config)} · {tags['sweeper.stage']}"
    run = client.create_run(experiment_id, start_time=start_ms, run_name=name,
                            tags={**tags, **key, "sweeper.winner": "false", **parent})  # fmt: skip
    crash_point("mlflow_run_created")
    return run


def live_run(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str | None,
    trial_dir: Path,
    config: dict[str, Any],
    tags: dict[str, str],
) -> tuple[str, int] | None:
    """The run of a trial that trains (created at its launch time, config.yaml's), RUNNING, and the last
    training-log step it holds; None when the run is already complete."""
    run = trial_run(client, experiment_id, parent_id, trial_dir, config, tags,
                    int((trial_dir / "config.yaml").stat().st_mtime * 1000))  # fmt: skip
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        return None
    if run.info.status != "RUNNING":  # a new attempt at a point whose last one failed or was stopped
        client.update_run(run_id, status="RUNNING")
    if run.data.tags.get("sweeper.trial_number") != tags["sweeper.trial_number"]:
        client.set_tag(run_id, "sweeper.trial_number", tags["sweeper.trial_number"])
    return run_id, logged_step(client, run_id, log_records(trial_dir))


def log_trial(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str | None,
    trial_dir: Path,
    config: dict[str, Any],
    tags: dict[str, str],
    stopped_at: int | None = None,
) -> str:
    """Log a finished trial's folder into its run (the live one, or a new one of parent_id) and end it FINISHED;
    return its run id (at once if it is complete). `stopped_at=N`: successive halving stopped the trial at its
    rung N, whose `rungs/<N>.json` stands for result.json; the run is tagged `sweeper.stopped_at=N` and its
    name says so."""
    result_path = trial_dir / ("result.json" if stopped_at is None else f"rungs/{stopped_at}.json")
    result = json.loads(result_path.read_text())
    start, end = run_times(result_path, result)
    run = trial_run(client, experiment_id, parent_id, trial_dir, config, tags, start)
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        return run_id
    records = log_records(trial_dir)
    forward(client, run_id, records, logged_step(client, run_id, records), end)  # what was not forwarded live
    weights = result.get("weights", {})
    all_tags = {
        **tags, "sweeper.weights": str(weights.get("extractors", "unknown")),
        "sweeper.lpips": str(weights.get("lpips", "unknown")), **metric_tags(result.get("metrics")),
        **({"sweeper.stopped_at": str(stopped_at)} if stopped_at is not None else {}),
    }  # fmt: skip
    name = f"{trial_run_name(config)} · {tags['sweeper.stage']}" + (
        "" if stopped_at is None else f" (stopped at {stopped_at} it)"
    )
    if run.info.run_name != name:
        client.update_run(run_id, name=name)
    params = {"mu": label(config["mu"])} | {k: config[k] for k in PARAM_KEYS}
    params |= {"perceptual": config["loss"]["perceptual"], "variant": config["loss"]["variant"]}
    params |= {
        k: v for k, v in flatten(config).items() if k in RECIPE_PARAMS + SPEED_PARAMS
    }  # a config older than a key lacks it
    params |= {
        f"env.{k}": v for k, v in result.get("environment", {}).items()
    }  # threads, device, versions: where it trained
    params |= {"world_size": result.get("world_size", 1)}  # the ranks that trained it (train.devices)
    metrics = val_metrics(records, end)
    steps = int(result.get("iters", 0))
    for set_name, values in result.get("final", {}).items():  # the final values are the latest, whatever was logged
        metrics += [
            Metric(f"{set_name}/{m}", float(values[m]), end, steps)
            for m in FINAL_METRICS
            if isinstance(values.get(m), (int, float))
        ]
    means = final_means(result)
    metrics += [Metric(k, v, end, steps) for k, v in means.items()]
    metrics += [Metric(f"{ROUNDED}{k}", round(v, DECIMALS[k.split("/")[1]]), end, steps) for k, v in means.items()]
    client.log_batch(
        run_id, params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag(k, v) for k, v in all_tags.items()]
    )
    for i in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH])
    client.log_artifact(run_id, str(trial_dir / "config.yaml"))
    client.log_artifact(run_id, str(result_path))
    if (trial_dir / "per_image.csv").is_file():  # the last validation image by image: statistics without retraining
        client.log_artifact(run_id, str(trial_dir / "per_image.csv"))
    if (trial_dir / "samples").is_dir():
        client.log_artifacts(run_id, str(trial_dir / "samples"), "samples")
    client.set_terminated(run_id, "FINISHED", end_time=end)
    return run_id


def finish_stage(
    client: MlflowClient, study: str, stage: str, parent_id: str, winner_id: str, winner: dict[str, str]
) -> None:
    """Record the winner (idempotent, and re-computable: a re-run may change it), then log the stage's paper-style
    table (an MLflow table for the UI's artifact view, plus Markdown and CSV) and plot on the parent and end it FINISHED.

    The winner is kept in tags (`sweeper.winner_run_id`, `winner.mu`, `winner.beta` on the stage run), which,
    unlike params, may change; exactly one trial run of the stage has `sweeper.winner=true`.
    """
    from sweeper.analysis import figures, report, tables

    experiment_id = client.get_run(parent_id).info.experiment_id
    for run in _find(
        client, experiment_id, {"sweeper.kind": "trial", "sweeper.study": study, "sweeper.stage": stage}, 50000
    ):
        if run.info.run_id != winner_id and run.data.tags.get("sweeper.winner") != "false":
            client.set_tag(run.info.run_id, "sweeper.winner", "false")
    client.set_tag(winner_id, "sweeper.winner", "true")
    client.set_tag(parent_id, "sweeper.winner_run_id", winner_id)
    for name in ("mu", "beta"):
        client.set_tag(parent_id, f"winner.{name}", winner[name])
    for table, rows in report.sweep_tables(report.load_study(client, study)):
        if {r.stage for r in rows} != {stage}:
            continue
        client.log_table(parent_id, tables.to_columns(table), f"results/{table.key}.json")
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


def log_points(client: MlflowClient, points: dict[str, tuple[dict[str, float], str]]) -> None:
    """Each trial run's point aggregates (run id -> (metrics, standing)), shared by the repeats of a point and
    logged on each of them so the trials view shows them on every row: `point/mean/<metric>` (the mean over the
    point's repeats; `rounded/point/mean/<metric>` at the tables' decimals), `point/repeats`, and from the
    stage's comparison `point/behind_best/<metric>`, `point/half_width/<metric>`; tag `sweeper.point_verdict`
    (best | tied | behind | untested). Re-logged when a stage concludes again (the latest value is shown)."""
    now = int(time.time() * 1000)
    for run_id, (numbers, standing) in points.items():
        rounded = {
            f"{ROUNDED}{k}": round(v, DECIMALS[k.split("/")[-1]])
            for k, v in numbers.items()
            if k.startswith("point/mean/")
        }
        metrics = [Metric(k, float(v), now, 0) for k, v in (numbers | rounded).items()]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag("sweeper.point_verdict", standing)])


def log_verdict(client: MlflowClient, parent_id: str, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The stage's verdict as tags (`sweeper.verdict` winner | tie | untested, `sweeper.tied`, `sweeper.verdict_summary`)
    and its comparison (differences to the best, intervals, p-values) as the MLflow table `results/comparison.json`
    with a CSV beside it."""
    from sweeper.analysis import tables

    client.set_tag(parent_id, "sweeper.verdict", record["kind"])
    client.set_tag(parent_id, "sweeper.tied", ", ".join(record["tied"]))
    client.set_tag(parent_id, "sweeper.verdict_summary", record["summary"][:5000])
    if rows:
        path = "results/comparison.json"
        if any(
            a.path == path for a in client.list_artifacts(parent_id, "results")
        ):  # concluded again: replace, not append
            client.log_dict(parent_id, {"columns": list(rows[0]), "data": [list(r.values()) for r in rows]}, path)
        else:  # log_table also registers it as a table for the MLflow UI
            client.log_table(parent_id, {k: [r[k] for r in rows] for k in rows[0]}, path)
        client.log_text(parent_id, tables.rows_to_csv(rows), "results/comparison.csv")
