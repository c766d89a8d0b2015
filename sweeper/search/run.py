"""`sweeper run`: a study's stages in order (and rounds, for an alternating study), each worked to its winner
(`sweeper.search.stage`); the winner of a stage fixes its keys for the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from sweeper.core.mlflow_names import experiment, git_commit
from sweeper.core.overrides import Options, check_max_trainings, parse, require_study, stage_repeats
from sweeper.core.studies import load
from sweeper.core.workspace import Workspace
from sweeper.search.executors import make_executor
from sweeper.search.leases import owner_id
from sweeper.search.progress import trial_states
from sweeper.search.session import (
    Run,
    base_config,
    check_data,
    check_weights,
    default_select_by,
    stage_budgets,
)
from sweeper.search.stage import work_stage
from trainer.config import build_config, parse_value
from trainer.errors import UserError
from trainer.files import file_lock

STUDY_THREADS = 1  # a study's trials train on this many intra-op threads unless train.threads= says otherwise


@dataclass(frozen=True)
class Outcome:
    """What a `sweeper run` ended with: the last stage's winner (None: `detach` submitted jobs and returned)."""

    study: str
    workspace: Path
    select_by: str
    winner: dict[str, str] | None


def main(tokens: list[str], detach: bool = False) -> None:
    run(parse(tokens), detach)


def run(opts: Options, detach: bool = False) -> Outcome:
    """`sweeper run`: run or resume the study of `opts` to its winner, printing progress and where to look next.
    Every trial of a study trains on `train.threads` intra-op threads (default STUDY_THREADS, whatever the
    executor or machine share would be), so the same point gives the same numbers locally and on SLURM; the
    thread count is recorded in each result.json (`environment`) and MLflow run (`env.threads`)."""
    study = load(require_study(opts))
    rounds = opts.rounds or 1
    if rounds > 1 and not study.alternate:
        raise UserError(
            f"rounds={rounds}: study {study.name} does not alternate; rounds= applies to studies like paper"
        )
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    executor = make_executor(
        opts.executor, opts.executor_options, ws.root, opts.preset
    )  # settings first, then weights and data
    if detach and executor.name == "local":
        raise UserError("--detach needs executor=slurm: local trials are watched by this process")
    executor.check(ws.sqlite_file())  # SLURM: sbatch --test-only of the options; a warning for SQLite storage
    select_by = default_select_by(opts)
    config = check_data(
        {"train.threads": STUDY_THREADS} | check_weights(base_config(study, opts, ws), opts.preset, select_by)
    )
    check_max_trainings(opts, study.stages)
    for stage in study.stages:  # every trial config, repeats setting and rung budget valid before anything is created
        stage_repeats(opts, stage)
        for point in stage.points():
            stage_budgets(opts, build_config({**config, **stage.overrides(point)}).train.iters, len(stage.points()))

    ws.create()
    tags = {"sweeper.study": study.name, "sweeper.preset": opts.preset, "sweeper.select_by": select_by,
            "sweeper.weights": str(config.get("weights", "imagenet")), "sweeper.git_commit": git_commit()}  # fmt: skip
    with file_lock(ws.root / "setup.lock"):  # sweepers started together: one creates the stores and the experiment
        ws.create_stores()
        client = MlflowClient(ws.tracking_uri)
        run = Run(study, opts, ws, select_by, executor, ws.open_storage(), client,
                  experiment(client, study.name, ws.artifacts_dir, study.description), tags, owner_id())  # fmt: skip
    fixed: dict[str, Any] = {}
    previous = None
    winner: dict[str, str] = {}
    before = trial_states(run.storage, study.name)
    for r in range(1, rounds + 1):
        for stage in study.stages:
            found = work_stage(run, stage, stage.name if r == 1 else f"{stage.name}_r{r}", {**config, **fixed}, detach)
            if found is None:
                print(
                    f"submitted; follow with `sweeper status study={study.name}{opts.where}`, re-run the same command to collect results"
                )
                return Outcome(study.name, ws.root, select_by, None)
            winner = found
            if study.alternate:
                fixed |= {k: parse_value(winner[k]) for k in stage.searched_keys()}
        if winner == previous:
            print(f"round {r} kept the winner of round {r - 1}: stopping")
            break
        previous = winner
    where = opts.where
    if trial_states(run.storage, study.name) == before:
        print(
            f"\n{study.name}: nothing to do, every trial had finished in {ws.root} (another workspace= starts afresh)"
        )
    print(f"\n{study.name}: winner {', '.join(f'{k}={v}' for k, v in winner.items())} (by mean {select_by})")
    for stage_study in run.storage.get_all_studies():  # a tie or an untested choice is said again, at the end
        verdict = stage_study.user_attrs.get("verdict") if stage_study.study_name.startswith(f"{study.name}.") else None
        if verdict and verdict["kind"] != "winner":
            print(f"  !!! {stage_study.study_name}: {verdict['summary']}")
    print(f"  trials:  sweeper status study={study.name}{where}")
    print(f"  MLflow:  sweeper ui{where}")
    print(f"  tables:  sweeper report study={study.name}{where}")
    return Outcome(study.name, ws.root, select_by, winner)
