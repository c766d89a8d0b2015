"""A stage from start to end: its Optuna study and MLflow parent run opened (or found, with the same settings),
its trials worked by the state machine (`sweeper.search.machine.StageWork`), and its winner concluded and recorded.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.core.crashpoints import crash_point
from sweeper.core.identity import config_hash
from sweeper.core.selection import HIGHER_IS_BETTER, rank
from sweeper.core.studies import Stage
from sweeper.search import tracking
from sweeper.search.machine import StageWork
from sweeper.search.session import Run, stage_budgets
from trainer.config import build_config
from trainer.errors import UserError
from trainer.files import file_lock


def open_stage(run: Run, stage: Stage, name: str, config: dict[str, Any]) -> StageWork:
    """The stage's Optuna study and MLflow run, created or found; a stage already in the workspace must
    have been started with the same settings, selection metric and scheduler."""
    full = f"{run.study.name}.{name}"
    iters = build_config(config).train.iters
    budgets = stage_budgets(run.opts, iters, len(stage.points()))
    recorded = {"config_hash": config_hash(build_config(config).to_dict()), "select_by": run.select_by,
                "scheduler": {"name": run.opts.scheduler, "budgets": budgets}}  # fmt: skip
    direction = optuna.study.StudyDirection.MAXIMIZE if HIGHER_IS_BETTER[run.select_by] else optuna.study.StudyDirection.MINIMIZE
    mismatch = {
        "select_by": lambda was: f"stage {full} was started with select_by={was}; pass that, or use another workspace=",
        "config_hash": lambda was: f"stage {full} in {run.ws.root} was started with other settings; repeat them, or use another workspace=",
        "scheduler": lambda was: f"stage {full} was started with scheduler={was['name']} (rung budgets {was['budgets']}); "
                                 "pass those settings, or use another workspace=",
    }  # fmt: skip
    with file_lock(run.ws.root / "setup.lock"):  # one Optuna study and one MLflow parent run, however many sweepers
        try:
            study_id = run.storage.create_new_study([direction], full)
        except optuna.exceptions.DuplicatedStudyError:
            study_id = run.storage.get_study_id_from_name(full)
        attrs = run.storage.get_study_user_attrs(study_id)
        for key, value in recorded.items():  # a kill right after creating the study leaves them unset
            if key not in attrs:
                run.storage.set_study_user_attr(study_id, key, value)
            elif attrs[key] != value:
                raise UserError(mismatch[key](attrs[key]))
        run.storage.set_study_user_attr(study_id, "cancelled", False)
        parent = tracking.stage_run(run.client, run.experiment_id, run.study.name, name, {**run.tags, "sweeper.stage": name})
    return StageWork(run, name, stage, config, study_id, parent, budgets)



def work_stage(run: Run, stage: Stage, name: str, config: dict[str, Any], detach: bool) -> dict[str, str] | None:
    """Open a stage, work it to its end and return its winner (None when `detach` and jobs were submitted)."""
    work = open_stage(run, stage, name, config)
    groups = work.run_to_end(detach)
    return None if groups is None else conclude(work, groups)


def conclude(work: StageWork, groups: dict[Any, list[FrozenTrial]]) -> dict[str, str]:
    """Pick the winner among the COMPLETE trials and record it in Optuna and MLflow (idempotent: a re-run
    recomputes it, and may change it); log the stage's table and plot."""
    done = [t for trials in groups.values() for t in trials if t.state == TrialState.COMPLETE]
    failed = [trials[-1] for trials in groups.values() if not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)]
    for t in failed:
        print(f"warning: {work.run.study.name}.{work.name} trial {t.number} {t.params} failed: {t.user_attrs.get('reason')}")
    if not done:
        tracking.end_stage_run(work.run.client, work.parent, "FAILED")
        raise UserError(f"stage {work.run.study.name}.{work.name}: every trial failed; see `sweeper status study={work.run.study.name}{work.run.opts.where}`")
    best = min(done, key=lambda t: (*rank(work.run.select_by, t.user_attrs["metrics"]), t.number))
    winner = best.user_attrs["settings"]
    with file_lock(work.run.ws.root / "setup.lock"):  # two sweepers concluding at once: MLflow's tag inserts race
        crash_point("before_winner")
        work.run.storage.set_study_user_attr(work.study_id, "winner", winner)
        work.run.storage.set_study_user_attr(work.study_id, "winner_trial", best.number)
        work.run.storage.set_study_user_attr(work.study_id, "finished_at", time.time())
        crash_point("after_winner")
        tracking.finish_stage(work.run.client, work.run.study.name, work.name, work.parent, best.user_attrs["mlflow_run_id"], winner)
    score = best.user_attrs["metrics"][f"mean/{work.run.select_by}"]
    print(f"stage {work.name}: winner trial {best.number} ({', '.join(f'{k}={v}' for k, v in winner.items())}), mean {work.run.select_by} {score:.4f}")
    return winner
