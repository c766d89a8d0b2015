"""A stage from start to end: its Optuna study and MLflow parent run opened (or found, with the same settings),
its trials worked by the state machine (`sweeper.search.machine.StageWork`), and its winner concluded and recorded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.analysis import racing
from sweeper.core.crashpoints import crash_point
from sweeper.core.identity import config_hash
from sweeper.core.overrides import stage_repeats
from sweeper.core.repeats import units
from sweeper.core.selection import HIGHER_IS_BETTER, rank
from sweeper.core.studies import AUTO, Stage
from sweeper.core.workspace import point_key
from sweeper.search import tracking
from sweeper.search.machine import StageWork, read_result
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
    """Open a stage, work it to its end and return its winner (None when `detach` and jobs were submitted):
    every point's `repeats`, or a race (`repeats=auto`)."""
    repeats, max_repeats = stage_repeats(run.opts, stage)
    work = open_stage(run, stage, name, config)
    groups = race(work, detach, max_repeats) if repeats == AUTO else work.run_to_end(detach, units(stage, int(repeats)))
    return None if groups is None else conclude(work, groups)


def race(work: StageWork, detach: bool, max_repeats: int) -> dict[Any, list[FrozenTrial]] | None:
    """`repeats=auto`: round k trains seed k of the points still racing (`sweeper.analysis.racing`). Each
    round's decision is recorded in the stage's `race` attr (rounds: the points racing in each round; `end`:
    why it stopped) before the next round's trials are enqueued, so a re-run resumes the race exactly."""
    storage, study_id = work.run.storage, work.study_id
    record = storage.get_study_user_attrs(study_id).get("race") or {"rounds": [list(range(len(work.stage.points())))]}
    while True:
        rounds = record["rounds"]
        wanted = {i: [k for k, alive in enumerate(rounds) if i in alive] for i in rounds[0]}
        groups = work.run_to_end(detach, units(work.stage, wanted))
        if groups is None or record.get("end"):
            survivors = {point_key(u.params) for u in units(work.stage, {i: wanted[i] for i in record.get("survivors", [])})}
            return groups if groups is None else {k: v for k, v in groups.items() if k in survivors}
        record = race_round(work, groups, record, max_repeats)
        with file_lock(work.run.ws.root / "setup.lock"):
            storage.set_study_user_attr(study_id, "race", record)
        crash_point("race_recorded")
        print(f"stage {work.name} race, round {len(record['rounds'])}: {record.get('end') or record['said']}")


def race_round(work: StageWork, groups: dict[Any, list[FrozenTrial]], record: dict[str, Any], max_repeats: int) -> dict[str, Any]:
    """The race record after deciding its last round (a pure function of the record and the trials)."""
    alive, seeds = record["rounds"][-1], len(record["rounds"])
    points = work.stage.points()
    results: dict[int, list[dict[str, Any]]] = {}
    for i in alive:
        done = [next((t for t in groups.get(point_key(u.params), []) if t.state == TrialState.COMPLETE), None) for u in units(work.stage, {i: range(seeds)})]
        found = [read_result(Path(t.user_attrs["trial_dir"])) for t in done if t is not None]
        if len(found) == seeds:
            results[i] = found
    labels = [" ".join(f"{k}={v}" for k, v in points[i].items()) for i in results]
    space = build_config(work.config).metrics.space
    failed = [points[i] for i in alive if i not in results]
    m = racing.metric_array([results[i] for i in results], work.run.select_by, space) if results else None
    if m is None:
        said = f"no {work.run.select_by} per image to race on: the race ends with every point in it" if results else "every racing point failed"
        return {**record, "end": said, "survivors": list(results)}
    sets = racing.image_sets(next(iter(results.values()))[0])
    d = racing.decide(m, HIGHER_IS_BETTER[work.run.select_by], labels, sets, max_repeats, work.run.opts.min_effect)
    kept = [list(results)[p] for p in d.alive]
    said = d.reason + (f"; failed: {failed}" if failed else "")
    if d.done:
        spent, fixed = racing.trainings(record["rounds"]), len(points) * max_repeats
        said += f" ({spent} trainings; repeats={max_repeats} would have taken {fixed}: {fixed - spent} saved)"
        return {**record, "end": said, "survivors": kept, "trainings": spent, "fixed_trainings": fixed}
    return {"rounds": [*record["rounds"], kept], "said": said}


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
