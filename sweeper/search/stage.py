"""A stage from start to end: its Optuna study and MLflow parent run opened (or found, with the same settings),
its trials worked by the state machine (`sweeper.search.machine.StageWork`), and its winner concluded and recorded.
"""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.core.crashpoints import crash_point
from sweeper.core.identity import BOOKKEEPING, config_hash
from sweeper.core.selection import HIGHER_IS_BETTER, rank
from sweeper.core.studies import Stage
from sweeper.search import tracking
from sweeper.search.machine import StageWork
from sweeper.search.session import Run, stage_budgets
from trainer.config import build_config, flatten
from trainer.errors import UserError
from trainer.files import file_lock


def differences(was: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """`: train.iters 12 then, 2 now; ...` over the keys that differ (none known for a stage recorded before
    its settings were: ""). Bookkeeping keys, which may change between runs, are left out."""
    if not was:
        return ""
    keys = sorted(k for k in was.keys() | now.keys() if k not in BOOKKEEPING and was.get(k) != now.get(k))
    return ": " + "; ".join(f"{k} {json.dumps(was.get(k))} then, {json.dumps(now.get(k))} now" for k in keys)


def open_stage(run: Run, stage: Stage, name: str, config: dict[str, Any]) -> StageWork:
    """The stage's Optuna study and MLflow run, created or found; a stage already in the workspace must
    have been started with the same settings, selection metric and scheduler."""
    full = f"{run.study.name}.{name}"
    iters = build_config(config).train.iters
    budgets = stage_budgets(run.opts, iters, len(stage.points()))
    resolved = build_config(config).to_dict()
    recorded = {"config_hash": config_hash(resolved), "select_by": run.select_by,
                "scheduler": {"name": run.opts.scheduler, "budgets": budgets}}  # fmt: skip
    way_out = f"repeat them, or pass another workspace= (or copy studies/{run.study.name}.yaml under a new name) to start afresh"
    direction = optuna.study.StudyDirection.MAXIMIZE if HIGHER_IS_BETTER[run.select_by] else optuna.study.StudyDirection.MINIMIZE
    mismatch = {
        "select_by": lambda was: f"stage {full} was started with select_by={was}; pass that, or use another workspace=",
        "config_hash": lambda was: f"stage {full} in {run.ws.root} was started with other settings"
                                   f"{differences(attrs.get('settings'), flatten(resolved))}; {way_out}",
        "scheduler": lambda was: f"stage {full} was started with scheduler={was['name']} (rung budgets {was['budgets']}); "
                                 "pass those settings, or use another workspace=",
    }  # fmt: skip
    with file_lock(run.ws.root / "setup.lock"):  # one Optuna study and one MLflow parent run, however many sweepers
        try:
            study_id = run.storage.create_new_study([direction], full)
        except optuna.exceptions.DuplicatedStudyError:
            study_id = run.storage.get_study_id_from_name(full)
        attrs = run.storage.get_study_user_attrs(study_id)
        for key, value in {**recorded, "settings": flatten(resolved)}.items():  # a kill right after creating the study leaves them unset
            if key not in attrs:
                run.storage.set_study_user_attr(study_id, key, value)
            elif key in mismatch and attrs[key] != value:
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
    reused = [t for t in done if "reused_from" in t.user_attrs]
    if reused:
        nothing = "nothing to halve" if work.run.opts.scheduler != "none" else "nothing to train"
        sources = ", ".join(sorted({t.user_attrs["reused_from"] for t in reused}))
        print(f"stage {work.name}: all {len(reused)} points reused from earlier trials ({sources}); {nothing}" if len(reused) == len(groups)
              else f"stage {work.name}: {len(reused)} of {len(groups)} points reused from earlier trials ({sources})")  # fmt: skip
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
